"""Tensor fusion: the outer product of ``[1; z_m]`` over the modalities."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mtmm_train.encoders.base import check_sizes
from mtmm_train.errors import KEY, ComponentError
from mtmm_train.fusion.base import Fusion


class TensorFusion(Fusion):
    """``z = vec([1; h_1] ⊗ [1; h_2] ⊗ ... ⊗ [1; h_M])`` (Zadeh et al. 2017, Tensor Fusion Network).

    The constant 1 keeps every lower-order term: single modalities, pairs, and so on up to
    the full M-way interaction. An absent modality has ``h_m = 0``, so only the terms
    without it survive. ``h_m = W_m e_m`` when ``dim`` is set, else ``e_m`` itself. The
    output has ``prod_m (d_m + 1)`` features, which grows exponentially with the number of
    modalities: the size is checked before anything is allocated.

    Args:
        in_dims: modality -> embedding size (passed in by the recipe).
        dim: project each modality to this size first (``None``: no projection).
        max_features: refuse an output larger than this.

    Raises:
        ComponentError: the output would have more than ``max_features`` features.
    """

    def __init__(self, in_dims: dict[str, int], dim: int | None, max_features: int) -> None:
        super().__init__(in_dims)
        check_sizes(dim=dim, max_features=max_features)
        sizes = [dim if dim is not None else d for d in in_dims.values()]
        self.out_dim = math.prod(s + 1 for s in sizes)
        if self.out_dim > max_features:
            m, fit = len(sizes), largest_dim(max_features, len(sizes))
            fix = (f"set {KEY}.dim={fit} to project each modality first ({fit + 1}^{m} = {(fit + 1) ** m:,} "
                   "features)") if fit else "use fewer modalities"
            raise ComponentError(
                f"{KEY}=tensor would have {self.out_dim:,} features ({' x '.join(str(s + 1) for s in sizes)} for "
                f"{', '.join(in_dims)}), above {KEY}.max_features={max_features:,}; {fix}, or raise "
                f"{KEY}.max_features")
        self.proj = nn.ModuleDict({m: nn.Linear(d, dim) if dim is not None else nn.Identity()
                                   for m, d in in_dims.items()})

    def forward(self, embs: dict[str, Tensor], present: dict[str, Tensor]) -> Tensor:
        z: Tensor | None = None
        for m in self.modalities:
            h = self.proj[m](embs[m])
            h = h * present[m].unsqueeze(-1).to(h.dtype)  # absent: [1; 0], only terms without m survive
            h1 = torch.cat([torch.ones_like(h[:, :1]), h], -1)  # (B, d_m + 1)
            z = h1 if z is None else (z.unsqueeze(-1) * h1.unsqueeze(1)).flatten(1)  # (B, prod so far)
        return z  # (B, prod_m (d_m + 1))


def largest_dim(max_features: int, modalities: int) -> int:
    """The largest ``d`` with ``(d + 1) ** modalities <= max_features`` (0 if none)."""
    d = int(max_features ** (1 / modalities))  # a float estimate, corrected below
    while (d + 2) ** modalities <= max_features:
        d += 1
    while d > 0 and (d + 1) ** modalities > max_features:
        d -= 1
    return d
