"""GradNorm (Chen et al., 2018): weights that equalise the tasks' gradient norms and rates."""

from __future__ import annotations

import torch
from torch import Tensor

from mtmm_train.balancers.base import BalanceContext, check_number, task_gramian
from mtmm_train.balancers.weighting import LossWeighting


class GradNorm(LossWeighting):
    """Learned weights ``w_t`` (sum ``T``) pushed so that each weighted gradient norm
    ``|w_t grad L_t|`` tends to the mean norm times ``r_t^alpha``, where ``r_t`` is the task's
    loss relative to its first loss, over the mean ratio (`GradNorm
    <https://arxiv.org/abs/1711.02257>`_).

    The gradient norms are taken with respect to the shared representation rather than the last
    shared layer's weights: one small backward through the heads per task, whatever the
    architecture. The weights take their own gradient step (``lr``), then are clamped and
    renormalised, as in the paper; they are buffers, not parameters of the model's optimizer.

    Tasks without labels in the batch neither move nor enter the mean; a task's first loss is
    recorded at its first labelled batch. All of it stays on the device.

    Args:
        tasks: task names (passed in by the recipe).
        alpha: strength of the pull towards equal training rates.
        lr: learning rate of the weights.
    """

    uses_shared_gradient = True  # the task gradients' norms at the shared representation

    def __init__(self, tasks: list[str], alpha: float = 1.5, lr: float = 0.025) -> None:
        super().__init__(tasks)
        check_number("alpha", alpha)
        check_number("lr", lr)
        self.alpha, self.lr = float(alpha), float(lr)
        n = len(self.tasks)
        self.register_buffer("weights", torch.ones(n))
        self.register_buffer("initial_losses", torch.zeros(n))
        self.register_buffer("seen", torch.zeros(n))

    def loss_weights(self, losses: Tensor, ctx: BalanceContext) -> Tensor:
        active = self.active_mask(ctx)
        weights = self.weights.clone()  # this step's; the update below is for the next step
        # Norms of the (unweighted) per-task gradients w.r.t. the shared representation.
        norms = task_gramian(losses, ctx).diagonal().clamp_min(0).sqrt()  # (T,)
        self._update(ctx.reduce(losses.detach()), norms, active)
        return weights

    @torch.no_grad()
    def _update(self, loss: Tensor, norms: Tensor, active: Tensor) -> None:
        first = active * (1 - self.seen)
        self.initial_losses.copy_(torch.where(first > 0, loss, self.initial_losses))
        self.seen.copy_(torch.maximum(self.seen, active))
        n_active = active.sum().clamp_min(1)
        weighted = self.weights * norms  # G_t
        mean_norm = (active * weighted).sum() / n_active
        rate = loss / self.initial_losses.clamp_min(1e-12)
        rel_rate = rate / ((active * rate).sum() / n_active).clamp_min(1e-12)
        target = mean_norm * rel_rate.pow(self.alpha)
        # d/dw_t of sum_t |w_t n_t - target_t|, with the target held constant (the paper).
        grad = active * torch.sign(weighted - target) * norms
        new = (self.weights - self.lr * grad).clamp_min(1e-3)
        new = new * len(self.tasks) / new.sum()
        # A non-finite step (fp16 overflow) leaves the weights as they were.
        self.weights.copy_(torch.where(torch.isfinite(new).all(), new, self.weights))

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, lr={self.lr}"
