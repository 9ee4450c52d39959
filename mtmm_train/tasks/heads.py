"""Task heads: from a task's features to its outputs."""

from __future__ import annotations

from torch import Tensor, nn

from mtmm_train.encoders.base import mlp


class MLPHead(nn.Module):
    """A linear layer, or an MLP when ``hidden_dims`` is not empty.

    Args:
        in_dim: feature size (passed in by the recipe).
        out_dim: outputs of the task (passed in by the recipe).
        hidden_dims: hidden layer sizes.
        dropout: dropout after each hidden layer.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dims: tuple[int, ...] = (), dropout: float = 0.0) -> None:
        super().__init__()
        self.net = mlp([in_dim, *hidden_dims, out_dim], dropout, last_activation=False)

    def forward(self, h: Tensor) -> Tensor:
        return self.net(h)  # (B, out_dim)
