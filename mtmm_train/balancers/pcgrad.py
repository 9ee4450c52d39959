"""PCGrad (Yu et al., 2020): project away the conflicting part of each task's gradient."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from mtmm_train.balancers.aggregation import GradientAggregation
from mtmm_train.balancers.base import SeededGenerator


class PCGrad(SeededGenerator, GradientAggregation):
    """Gradient surgery: for each task, in a random order of the others, remove the component
    along any other task's gradient it conflicts with (negative inner product); sum the results.

    Algorithm 1 of `Gradient Surgery for Multi-Task Learning <https://arxiv.org/abs/2001.06782>`_,
    in terms of the Gramian, as torchjd's ``PCGradWeighting`` computes it (one random order of the
    tasks per task and step; the same weights for the same orders), but drawing the orders from a
    generator of its own: torchjd's draw from torch's global generator, so choosing PCGrad moved
    the random streams of dropout and the rest of the run. The generator is seeded by ``seed`` and
    its state is part of the balancer's ``state_dict``, so a resumed run draws the orders an
    uninterrupted one would (:class:`~mtmm_train.balancers.base.SeededGenerator`).

    Args:
        tasks: task names (passed in by the recipe).
        mode: ``representation`` or ``parameters`` (see :class:`GradientAggregation`).
        seed: the seed of the generator of task orders (the config passes the run's ``seed``);
            None: ``torch.initial_seed()`` at construction.
    """

    def __init__(self, tasks: list[str], mode: str = "representation", seed: int | None = None) -> None:
        super().__init__(tasks, mode)
        self.seed_generator(seed)

    def weights(self, gramian: Tensor) -> Tensor:
        m = gramian.shape[0]
        return self.project(gramian, [torch.randperm(m, generator=self.generator).tolist() for _ in range(m)])

    @staticmethod
    def project(gramian: Tensor, orders: Sequence[Sequence[int]]) -> Tensor:
        """The weights of PCGrad's update for given orders: ``g_i``, projected off each ``g_j`` it
        conflicts with in the order ``orders[i]`` (``i`` itself skipped), summed over ``i``.

        Task ``i``'s gradient is ``J^T v`` with ``v = e_i`` at first; a projection off ``g_j``
        subtracts ``(g_j . J^T v) / |g_j|^2`` from ``v_j``.
        """
        G = gramian.numpy()
        total = np.zeros(len(G))
        for i, order in enumerate(orders):
            v = np.zeros(len(G))
            v[i] = 1.0
            for j in order:
                if j != i:
                    dot = G[j] @ v
                    if dot < 0.0:
                        v[j] -= dot / G[j, j]
            total += v
        return torch.from_numpy(total)
