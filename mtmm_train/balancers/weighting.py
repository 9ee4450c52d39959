"""Loss weighting: the weights of a weighted sum of the task losses, and its one backward."""

from __future__ import annotations

from torch import Tensor

from mtmm_train.balancers.base import BalanceContext, Balancer


class LossWeighting(Balancer):
    """Base of the methods that minimise ``sum_t w_t L_t``, with weights of their own.

    A method implements :meth:`loss_weights`; :meth:`backward` differentiates
    :meth:`objective` once, through the GradScaler, and reports the weights. Weights made from
    state or from detached losses carry no gradient; learned weights that the model's
    optimizer trains (uncertainty's) do, and such a method adds its own terms to the sum by
    overriding :meth:`objective`. State updates (DWA's windows, GradNorm's and FAMO's steps)
    happen in :meth:`loss_weights`, from detached losses, so they do not depend on the backward.

    Args:
        tasks: task names (passed in by the recipe).
    """

    family = "weighting"

    def loss_weights(self, losses: Tensor, ctx: BalanceContext) -> Tensor:
        """The method: ``(T,)`` weights of the ``(T,)`` losses (task order), on their device."""
        raise NotImplementedError

    def objective(self, losses: Tensor, weights: Tensor, ctx: BalanceContext) -> Tensor:
        """The scalar that :meth:`backward` differentiates: ``sum_t w_t L_t``."""
        return (weights * losses).sum()

    def backward(self, losses: Tensor, ctx: BalanceContext) -> Tensor:
        weights = self.loss_weights(losses, ctx)
        ctx.scaler.scale(self.objective(losses, weights, ctx)).backward()
        return weights.detach()
