"""Random loss weighting (Lin et al., 2022): fresh random weights every step."""

from __future__ import annotations

import torch
from torch import Tensor

from mtmm_train.balancers.base import BalanceContext
from mtmm_train.balancers.weighting import LossWeighting


class RandomWeighting(LossWeighting):
    """Weights drawn each step as ``softmax(z)``, ``z ~ N(0, I)``, over the tasks that have
    labels in the batch (`Reasonable Effectiveness of Random Weighting
    <https://arxiv.org/abs/2111.10603>`_); scaled by the number of those tasks, so that the
    expected weight is 1 as with static weights (the paper's weights sum to 1).

    Draws from torch's global generator on the batch's device (seeded by ``seed``).

    Args:
        tasks: task names (passed in by the recipe).
    """

    def loss_weights(self, losses: Tensor, ctx: BalanceContext) -> Tensor:
        active = self.active_mask(ctx)
        logits = torch.randn(len(self.tasks), device=losses.device)
        # Unlabelled tasks get no share; with no labelled task at all every weight is 0.
        return torch.softmax(logits.masked_fill(active == 0, -torch.inf), 0).nan_to_num(0.0) * active.sum()
