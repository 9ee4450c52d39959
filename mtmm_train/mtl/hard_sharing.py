"""Hard parameter sharing: one shared trunk, every task reads its output."""

from __future__ import annotations

from torch import Tensor

from mtmm_train.encoders.base import check_sizes, mlp
from mtmm_train.mtl.base import MTLArchitecture


class HardSharing(MTLArchitecture):
    """A shared MLP trunk on ``z``; every task's head reads the same trunk output.

    Args:
        in_dim: size of the fused representation (passed in by the recipe).
        tasks: task names (passed in by the recipe).
        hidden_dims: trunk layer sizes; the last one is ``out_dim`` (empty: identity).
        dropout: dropout after each trunk layer.
    """

    def __init__(self, in_dim: int, tasks: list[str], hidden_dims: tuple[int, ...] = (128,),
                 dropout: float = 0.0) -> None:
        super().__init__(in_dim, tasks)
        check_sizes(hidden_dims=list(hidden_dims))
        self.trunk = mlp([in_dim, *hidden_dims], dropout)
        self.out_dim = hidden_dims[-1] if hidden_dims else in_dim

    def forward(self, z: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        h = self.trunk(z)  # (B, out_dim)
        return {t: h for t in self.tasks}, h
