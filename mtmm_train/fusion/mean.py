"""Mean fusion."""

from __future__ import annotations

from torch import Tensor

from mtmm_train.fusion.base import ProjectedFusion


class MeanFusion(ProjectedFusion):
    """``z = sum_m p_m W_m e_m / sum_m p_m``: the mean over the present modalities.

    Args:
        in_dims: modality -> embedding size (passed in by the recipe).
        dim: common size (``None``: see :class:`ProjectedFusion`).
    """

    def forward(self, embs: dict[str, Tensor], present: dict[str, Tensor]) -> Tensor:
        z, mask = self.stacked(embs, present)
        return (z * mask).sum(1) / mask.sum(1).clamp_min(1)  # (B, D)
