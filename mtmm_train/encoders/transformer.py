"""Small pre-norm transformer for sequences (C, L) or token ids (L,)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mtmm_train.batch import ModalitySpec
from mtmm_train.encoders.base import Encoder, as_unit_float, check_sizes


class TransformerEncoder(Encoder):
    """Input projection (sequences) or embedding (tokens), learned positions, transformer layers.

    For token ids, ``padding_idx`` tokens are masked out of attention and of the mean pooling
    (a sample with only padding, e.g. a missing text, attends to its first position);
    ``padding_idx=None`` masks nothing (fixed-length inputs; lets attention use its fastest
    kernels).

    Args:
        modality: the modality spec (passed in by the recipe).
        out_dim: model width D.
        num_layers: transformer layers.
        num_heads: attention heads (must divide ``out_dim``).
        ffn_mult: feed-forward width as a multiple of D.
        dropout: dropout inside the layers.
        max_length: longest sequence the position table holds.
        padding_idx: padding token id (token input only), or None.
        final_norm: LayerNorm on the output (pre-norm layers leave it unnormalised).
    """

    def __init__(self, modality: ModalitySpec, out_dim: int = 64, num_layers: int = 2, num_heads: int = 4,
                 ffn_mult: int = 4, dropout: float = 0.0, max_length: int = 512, padding_idx: int | None = 0,
                 final_norm: bool = True) -> None:
        super().__init__(modality, kinds=("tokens", "sequence"))
        check_sizes(out_dim=out_dim, num_layers=num_layers, num_heads=num_heads, ffn_mult=ffn_mult,
                    max_length=max_length)
        self.out_dim = out_dim
        self.is_tokens = modality.kind == "tokens"
        self.padding_idx = padding_idx
        if self.is_tokens:
            self.embed: nn.Module = nn.Embedding(modality.vocab_size, out_dim, padding_idx=padding_idx)
        else:
            self.embed = nn.Linear(modality.shape[0], out_dim)
        self.pos = nn.Parameter(torch.randn(1, max_length, out_dim) * 0.02)
        layer = nn.TransformerEncoderLayer(out_dim, num_heads, ffn_mult * out_dim, dropout=dropout,
                                           batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(out_dim) if final_norm else nn.Identity()

    def _encode(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        pad = None
        if self.is_tokens:
            if self.padding_idx is not None:
                pad = x == self.padding_idx  # (B, L)
                pad[:, 0] &= ~pad.all(1)  # an all-padding row would make attention NaN
            h = self.embed(x)
        else:
            h = self.embed(as_unit_float(x).transpose(1, 2))  # (B, C, L) -> (B, L, D)
        h = h + self.pos[:, : h.shape[1]]
        return self.norm(self.layers(h, src_key_padding_mask=pad)), pad

    def tokens(self, x: Tensor) -> Tensor:
        return self._encode(x)[0]  # (B, L, D)

    def forward(self, x: Tensor) -> Tensor:
        h, pad = self._encode(x)
        if pad is None:
            return h.mean(1)
        keep = (~pad).unsqueeze(-1).to(h.dtype)
        return (h * keep).sum(1) / keep.sum(1).clamp_min(1)  # (B, D)
