"""Aligned-MTL (Senushkin et al., 2023): align the gradients' principal components."""

from __future__ import annotations

from torch import Tensor

from mtmm_train.balancers import torchjd_api
from mtmm_train.balancers.aggregation import GradientAggregation
from mtmm_train.balancers.base import check_choice

SCALE_MODES = ("min", "median", "rmse")


class AlignedMTL(GradientAggregation):
    """Replace the Jacobian ``J = U S V^T`` by ``sigma U V^T`` (all singular values equal, so
    no task dominates and the system is well conditioned) and take the mean of its rows.

    Computed by torchjd's ``AlignedMTLWeighting`` (Algorithm 1 of
    `Independent Component Alignment for Multi-Task Learning <https://arxiv.org/abs/2305.19000>`_).

    Args:
        tasks: task names (passed in by the recipe).
        mode: ``representation`` or ``parameters`` (see :class:`GradientAggregation`).
        scale_mode: ``sigma``: the smallest singular value (``min``, the paper's), the
            ``median`` one, or the root mean square (``rmse``, the paper's code).
    """

    def __init__(self, tasks: list[str], mode: str = "representation", scale_mode: str = "min") -> None:
        super().__init__(tasks, mode)
        check_choice("scale_mode", scale_mode, SCALE_MODES)
        self.scale_mode = scale_mode
        self.weighting = torchjd_api.gramian_weighting("aligned_mtl", scale_mode=scale_mode)

    def weights(self, gramian: Tensor) -> Tensor:
        return self.weighting(gramian)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, scale_mode={self.scale_mode!r}"
