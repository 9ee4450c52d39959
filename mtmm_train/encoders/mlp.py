"""MLP encoder for vectors (any fixed-shape float input is flattened)."""

from __future__ import annotations

import math

from torch import Tensor

from mtmm_train.batch import ModalitySpec
from mtmm_train.encoders.base import Encoder, as_unit_float, check_sizes, mlp


class MLPEncoder(Encoder):
    """Flatten, then a GELU MLP (GELU after its last layer too, unless ``last_activation`` is false).

    Args:
        modality: the modality spec (passed in by the recipe).
        out_dim: output size D.
        hidden_dims: sizes of the hidden layers.
        dropout: dropout after each hidden layer.
        last_activation: end with GELU (and dropout); false: end with the linear layer, so the
            encoding may be negative and unbounded (``hidden_dims=[]`` then gives a linear projection).
    """

    def __init__(self, modality: ModalitySpec, out_dim: int = 64, hidden_dims: tuple[int, ...] = (64,),
                 dropout: float = 0.0, last_activation: bool = True) -> None:
        super().__init__(modality, kinds=("vector", "image", "sequence"))
        check_sizes(out_dim=out_dim, hidden_dims=hidden_dims)
        self.out_dim = out_dim
        self.net = mlp([math.prod(modality.shape), *hidden_dims, out_dim], dropout, last_activation=last_activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(as_unit_float(x).flatten(1))  # (B, D); uint8 pixels -> [0, 1]

    def tokens(self, x: Tensor) -> Tensor:
        return self.forward(x).unsqueeze(1)  # (B, 1, D)
