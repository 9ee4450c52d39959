"""Sum fusion."""

from __future__ import annotations

from torch import Tensor

from mtmm_train.fusion.base import ProjectedFusion


class SumFusion(ProjectedFusion):
    """``z = sum_m p_m W_m e_m`` over the present modalities.

    Args:
        in_dims: modality -> embedding size (passed in by the recipe).
        dim: common size (``None``: see :class:`ProjectedFusion`).
    """

    def forward(self, embs: dict[str, Tensor], present: dict[str, Tensor]) -> Tensor:
        z, mask = self.stacked(embs, present)
        return (z * mask).sum(1)  # (B, D)
