"""MLP encoder for vectors (any fixed-shape float input is flattened)."""

from __future__ import annotations

import math

from torch import Tensor

from mtmm_train.batch import ModalitySpec
from mtmm_train.encoders.base import Encoder, check_sizes, mlp


class MLPEncoder(Encoder):
    """Flatten, then a GELU MLP.

    Args:
        modality: the modality spec (passed in by the recipe).
        out_dim: output size D.
        hidden_dims: sizes of the hidden layers.
        dropout: dropout after each hidden layer.
    """

    def __init__(self, modality: ModalitySpec, out_dim: int = 64, hidden_dims: tuple[int, ...] = (64,),
                 dropout: float = 0.0) -> None:
        super().__init__(modality, kinds=("vector", "image", "sequence"))
        check_sizes(out_dim=out_dim, hidden_dims=hidden_dims)
        self.out_dim = out_dim
        self.net = mlp([math.prod(modality.shape), *hidden_dims, out_dim], dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1))  # (B, D)

    def tokens(self, x: Tensor) -> Tensor:
        return self.forward(x).unsqueeze(1)  # (B, 1, D)
