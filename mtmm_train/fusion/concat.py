"""Concatenation fusion."""

from __future__ import annotations

import torch
from torch import Tensor

from mtmm_train.fusion.base import Fusion


class ConcatFusion(Fusion):
    """``z = [e_1 * p_1; ...; e_M * p_M]``: absent modalities contribute zeros.

    Args:
        in_dims: modality -> embedding size (passed in by the recipe).
    """

    def __init__(self, in_dims: dict[str, int]) -> None:
        super().__init__(in_dims)
        self.out_dim = sum(in_dims.values())

    def forward(self, embs: dict[str, Tensor], present: dict[str, Tensor]) -> Tensor:
        parts = [embs[m] * present[m].unsqueeze(-1).to(embs[m].dtype) for m in self.modalities]
        return torch.cat(parts, dim=-1)  # (B, sum D_m)
