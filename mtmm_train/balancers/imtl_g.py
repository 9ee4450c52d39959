"""IMTL-G (Liu et al., 2021): an update with equal projections on every task's unit gradient."""

from __future__ import annotations

from torch import Tensor

from mtmm_train.balancers import torchjd_api
from mtmm_train.balancers.aggregation import GradientAggregation


class IMTLG(GradientAggregation):
    """Impartial MTL, gradient part: weights summing to one such that the update ``d`` has the
    same inner product with every normalised task gradient, ``w ∝ G^+ sqrt(diag G)``.

    Computed by torchjd's ``IMTLGWeighting`` (the pseudo-inverse form of
    `Towards Impartial Multi-task Learning <https://openreview.net/forum?id=IMPnRXEWpvr>`_,
    which also accepts linearly dependent gradients).

    Args:
        tasks: task names (passed in by the recipe).
        mode: ``representation`` or ``parameters`` (see :class:`GradientAggregation`).
    """

    def __init__(self, tasks: list[str], mode: str = "representation") -> None:
        super().__init__(tasks, mode)
        self.weighting = torchjd_api.gramian_weighting("imtl_g")

    def weights(self, gramian: Tensor) -> Tensor:
        return self.weighting(gramian)
