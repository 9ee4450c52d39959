"""Low-rank multimodal fusion (LMF): tensor fusion with the weight tensor factorised in rank R."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mtmm_train.encoders.base import check_sizes
from mtmm_train.fusion.base import Fusion


class LowRankFusion(Fusion):
    """``z = sum_r w_r * prod_m (W_m^(r) [1; e_m]) + b`` (Liu et al. 2018).

    Equal to a linear layer on the tensor-fusion product whose weight has rank ``rank``,
    without ever forming the product: cost grows linearly with the number of modalities. An
    absent modality's factor is replaced by 1, the identity of the product, so it is
    ignored. Every factor is a registered parameter (MultiBench once kept them in a plain
    list, so they never trained; the contract test checks this).

    Args:
        in_dims: modality -> embedding size (passed in by the recipe).
        dim: output size.
        rank: rank R of the factorisation.

    Raises:
        SettingError: ``dim`` or ``rank`` is below 1.
    """

    def __init__(self, in_dims: dict[str, int], dim: int, rank: int) -> None:
        super().__init__(in_dims)
        check_sizes(dim=dim, rank=rank)
        self.out_dim = dim
        self.rank = rank
        # (d_m + 1, R, D) per modality; std 1/sqrt(d_m + 1) keeps each factor's output O(1), so
        # the product over modalities neither vanishes nor explodes at the start.
        self.factors = nn.ParameterDict({
            m: nn.Parameter(torch.randn(d + 1, rank, dim) / (d + 1) ** 0.5) for m, d in in_dims.items()
        })
        self.rank_weights = nn.Parameter(torch.full((rank,), 1.0 / rank))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, embs: dict[str, Tensor], present: dict[str, Tensor]) -> Tensor:
        product: Tensor | None = None
        for m in self.modalities:
            e = embs[m]
            e1 = torch.cat([torch.ones_like(e[:, :1]), e], -1)  # (B, d_m + 1)
            factor = self.factors[m]
            f = (e1 @ factor.flatten(1)).view(-1, self.rank, self.out_dim)  # (B, R, D)
            f = torch.where(present[m].view(-1, 1, 1), f, torch.ones((), dtype=f.dtype, device=f.device))
            product = f if product is None else product * f
        return torch.matmul(self.rank_weights, product) + self.bias  # (B, D)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}"
