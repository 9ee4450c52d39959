"""Gated fusion: learned per-modality, per-feature gates (a multi-modal Gated Multimodal Unit)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mtmm_train.fusion.base import ProjectedFusion, masked_softmax


class GatedFusion(ProjectedFusion):
    """``h_m = tanh(W_m e_m)``, ``g = softmax_m(G [p_1 e_1; ...; p_M e_M])``, ``z = sum_m g_m * h_m``.

    The gates see every present modality, so each modality's weight depends on the others,
    per feature; the softmax runs over the present modalities only. With two modalities this
    is the Gated Multimodal Unit of Arevalo et al. (2017), ``z = g h_1 + (1 - g) h_2``.

    Args:
        in_dims: modality -> embedding size (passed in by the recipe).
        dim: size of ``h_m`` and of the output (``None``: the largest embedding size).
    """

    always_project = True

    def __init__(self, in_dims: dict[str, int], dim: int | None) -> None:
        super().__init__(in_dims, dim)
        self.gate = nn.Linear(sum(in_dims.values()), len(self.modalities) * self.out_dim)

    def forward(self, embs: dict[str, Tensor], present: dict[str, Tensor]) -> Tensor:
        h, mask = self.stacked(embs, present)  # (B, M, D), (B, M, 1)
        context = torch.cat([embs[m] * mask[:, i] for i, m in enumerate(self.modalities)], -1)  # (B, sum D_m)
        logits = self.gate(context).view(h.shape)  # (B, M, D)
        gates = masked_softmax(logits, mask.bool(), dim=1)
        return (gates * torch.tanh(h)).sum(1)  # (B, D)
