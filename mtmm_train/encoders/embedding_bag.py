"""Bag-of-tokens encoder: mean of token embeddings (padding id ignored), then a projection."""

from __future__ import annotations

from torch import Tensor, nn

from mtmm_train.batch import ModalitySpec
from mtmm_train.encoders.base import Encoder, check_sizes


class EmbeddingBagEncoder(Encoder):
    """Mean of the embeddings of the non-padding tokens, then Linear + GELU.

    Args:
        modality: the modality spec (passed in by the recipe; needs ``vocab_size``).
        out_dim: output size D.
        embed_dim: embedding size.
        padding_idx: the token id that means "no token".
    """

    def __init__(self, modality: ModalitySpec, out_dim: int = 64, embed_dim: int = 64, padding_idx: int = 0) -> None:
        super().__init__(modality, kinds=("tokens",))
        check_sizes(out_dim=out_dim, embed_dim=embed_dim)
        self.out_dim = out_dim
        self.embed = nn.Embedding(modality.vocab_size, embed_dim, padding_idx=padding_idx)
        self.padding_idx = padding_idx
        self.proj = nn.Sequential(nn.Linear(embed_dim, out_dim), nn.GELU())

    def forward(self, x: Tensor) -> Tensor:
        keep = (x != self.padding_idx).unsqueeze(-1)  # (B, L, 1)
        summed = self.embed(x).sum(1)  # padding rows of the table are zero
        return self.proj(summed / keep.sum(1).clamp_min(1))  # (B, D)

    def tokens(self, x: Tensor) -> Tensor:
        return self.proj(self.embed(x))  # (B, L, D)
