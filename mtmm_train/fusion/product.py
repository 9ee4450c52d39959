"""Element-wise product fusion."""

from __future__ import annotations

from torch import Tensor

from mtmm_train.fusion.base import ProjectedFusion


class ProductFusion(ProjectedFusion):
    """``z = prod_m (1 + W_m e_m)`` over the present modalities (absent ones count as 1).

    The ``1 +`` keeps a single modality's signal alive, as in tensor fusion's ``[1; z]``.

    Args:
        in_dims: modality -> embedding size (passed in by the recipe).
        dim: common size (``None``: see :class:`ProjectedFusion`).
    """

    always_project = True

    def forward(self, embs: dict[str, Tensor], present: dict[str, Tensor]) -> Tensor:
        z, mask = self.stacked(embs, present)
        return (1 + z * mask).prod(1)  # (B, D)
