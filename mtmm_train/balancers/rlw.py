"""Random loss weighting (Lin et al., 2022): fresh random weights every step."""

from __future__ import annotations

import torch
from torch import Tensor

from mtmm_train.balancers.base import BalanceContext, SeededGenerator
from mtmm_train.balancers.weighting import LossWeighting


class RandomWeighting(SeededGenerator, LossWeighting):
    """Weights drawn each step as ``softmax(z)``, ``z ~ N(0, I)``, over the tasks that have
    labels in the batch (`Reasonable Effectiveness of Random Weighting
    <https://arxiv.org/abs/2111.10603>`_); scaled by the number of those tasks, so that the
    expected weight is 1 as with static weights (the paper's weights sum to 1).

    ``z`` comes from a CPU generator of its own, not torch's global one, so choosing RLW leaves
    the run's other random streams (dropout, modality dropout, augmentation) as they are, and every
    data-parallel process draws the same weights. It is seeded by ``seed`` and saved in checkpoints,
    so a resumed run draws what an uninterrupted one would
    (:class:`~mtmm_train.balancers.base.SeededGenerator`). Each call draws ``T`` numbers whatever
    the labels, so the sequence does not depend on them; they go to the device without a host
    synchronisation.

    Args:
        tasks: task names (passed in by the recipe).
        seed: the seed of the generator of ``z`` (the config passes the run's ``seed``);
            None: ``torch.initial_seed()`` at construction.
    """

    def __init__(self, tasks: list[str], seed: int | None = None) -> None:
        super().__init__(tasks)
        self.seed_generator(seed)

    def loss_weights(self, losses: Tensor, ctx: BalanceContext) -> Tensor:
        active = self.active_mask(ctx)
        z = torch.randn(len(self.tasks), generator=self.generator)
        logits = z.to(losses.device, non_blocking=True)
        # Unlabelled tasks get no share; with no labelled task at all every weight is 0.
        return torch.softmax(logits.masked_fill(active == 0, -torch.inf), 0).nan_to_num(0.0) * active.sum()
