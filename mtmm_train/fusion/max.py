"""Max fusion."""

from __future__ import annotations

from torch import Tensor

from mtmm_train.fusion.base import ProjectedFusion


class MaxFusion(ProjectedFusion):
    """``z = max_m W_m e_m``, element-wise over the present modalities (zeros if none).

    Args:
        in_dims: modality -> embedding size (passed in by the recipe).
        dim: common size (``None``: see :class:`ProjectedFusion`).
    """

    def forward(self, embs: dict[str, Tensor], present: dict[str, Tensor]) -> Tensor:
        z, mask = self.stacked(embs, present)
        z = z.masked_fill(mask == 0, float("-inf")).amax(1)
        return z.masked_fill(mask.sum(1) == 0, 0.0)  # (B, D)
