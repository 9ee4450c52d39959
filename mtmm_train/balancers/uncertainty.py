"""Uncertainty weighting (Kendall et al., 2018): learned homoscedastic task uncertainties."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mtmm_train.balancers.base import BalanceContext
from mtmm_train.balancers.weighting import LossWeighting


class UncertaintyWeighting(LossWeighting):
    """``L = sum_t exp(-s_t) L_t + s_t`` with learned log-variances ``s_t`` (trained by the
    model's optimizer), from `Multi-Task Learning Using Uncertainty to Weigh Losses
    <https://arxiv.org/abs/1705.07115>`_ in the common form without the 1/2 factors (so every
    weight starts at 1, as with static weights).

    A task without a labelled sample in the batch drops out of the sum, its ``s_t`` term
    included: otherwise the regulariser alone would drive ``s_t`` down (no host read needed).

    Args:
        tasks: task names (passed in by the recipe).
        init_log_var: initial ``s_t`` for every task.
    """

    def __init__(self, tasks: list[str], init_log_var: float = 0.0) -> None:
        super().__init__(tasks)
        self.init_log_var = float(init_log_var)
        self.log_vars = nn.Parameter(torch.full((len(self.tasks),), self.init_log_var))

    def loss_weights(self, losses: Tensor, ctx: BalanceContext) -> Tensor:
        return torch.exp(-self.log_vars)  # the precisions, learned: differentiated in the objective

    def objective(self, losses: Tensor, weights: Tensor, ctx: BalanceContext) -> Tensor:
        return (self.active_mask(ctx) * (weights * losses + self.log_vars)).sum()

    def extra_repr(self) -> str:
        return f"init_log_var={self.init_log_var}"
