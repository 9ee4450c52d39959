"""Cross-modal transformer: one joint transformer over the tokens of every modality."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mtmm_train.encoders.base import check_sizes
from mtmm_train.errors import KEY, SettingError
from mtmm_train.fusion.base import Fusion


class TransformerFusion(Fusion):
    """Joint self-attention over all modalities' tokens plus a fusion token (as in ViLT, VATT).

    Each modality's tokens ``(B, L_m, D_m)`` are projected to ``dim`` and tagged with a learned
    modality-type embedding and learned positions; a ``[FUSE]`` token is prepended, and its
    final state is the output. Tokens of absent modalities are masked out of attention, so
    they cannot influence the result; the ``[FUSE]`` token keeps every row attendable.
    Encoders that only pool contribute one token.

    Args:
        in_dims: modality -> token size (passed in by the recipe).
        dim: model width, the output size.
        num_layers: transformer layers.
        num_heads: attention heads (must divide ``dim``).
        ffn_mult: feed-forward width as a multiple of ``dim``.
        dropout: dropout inside the layers.
        max_tokens: most tokens one modality may have (size of its position table).

    Raises:
        SettingError: ``num_heads`` does not divide ``dim``; in ``forward``, a modality has more than
            ``max_tokens`` tokens.
    """

    wants_tokens = True

    def __init__(self, in_dims: dict[str, int], dim: int, num_layers: int, num_heads: int, ffn_mult: int,
                 dropout: float, max_tokens: int) -> None:
        super().__init__(in_dims)
        check_sizes(dim=dim, num_layers=num_layers, num_heads=num_heads, ffn_mult=ffn_mult, max_tokens=max_tokens)
        if dim % num_heads:
            raise SettingError("num_heads", f"must divide {KEY}.dim, found num_heads={num_heads} and dim={dim}; "
                               f"choose e.g. {KEY}.num_heads=4 with {KEY}.dim=64")
        self.out_dim = dim
        self.max_tokens = max_tokens
        self.proj = nn.ModuleDict({m: nn.Linear(d, dim) for m, d in in_dims.items()})
        self.modality_type = nn.Parameter(torch.randn(len(in_dims), dim) * 0.02)
        self.positions = nn.ParameterDict({m: nn.Parameter(torch.randn(max_tokens, dim) * 0.02) for m in in_dims})
        self.fuse_token = nn.Parameter(torch.randn(dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, num_heads, ffn_mult * dim, dropout=dropout, batch_first=True,
                                           norm_first=True)
        self.layers = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, embs: dict[str, Tensor], present: dict[str, Tensor]) -> Tensor:
        first = embs[self.modalities[0]]
        batch = first.shape[0]
        seq = [self.fuse_token.expand(batch, 1, -1).to(first.dtype)]
        padding = [torch.zeros(batch, 1, dtype=torch.bool, device=first.device)]
        for i, m in enumerate(self.modalities):
            x = embs[m] if embs[m].dim() == 3 else embs[m].unsqueeze(1)  # (B, L_m, D_m)
            length = x.shape[1]
            if length > self.max_tokens:  # a shape, known on the host: no synchronisation
                raise SettingError("max_tokens", f"is {self.max_tokens}, but modality '{m}' has {length} tokens; "
                                   f"raise it, e.g. {KEY}.max_tokens={length}", source=self)
            seq.append(self.proj[m](x) + self.modality_type[i] + self.positions[m][:length])
            padding.append((~present[m]).unsqueeze(1).expand(batch, length))
        h = self.layers(torch.cat(seq, 1), src_key_padding_mask=torch.cat(padding, 1))  # (B, 1 + sum L_m, D)
        return self.norm(h[:, 0])  # (B, D)
