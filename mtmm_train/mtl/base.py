"""The multi-task architecture contract."""

from __future__ import annotations

from torch import Tensor, nn


class MTLArchitecture(nn.Module):
    """Base of the architectures between fusion and heads.

    ``forward(z)`` returns ``(features, shared)``: ``features[t]`` ``(B, out_dim)`` for each
    task, and ``shared``, the last tensor that every task depends on (gradient-aggregation
    balancers differentiate with respect to it), or ``z`` when tasks share nothing after it.

    Args:
        in_dim: size of the fused representation (passed in by the recipe).
        tasks: task names (passed in by the recipe).
    """

    out_dim: int

    def __init__(self, in_dim: int, tasks: list[str]) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.tasks = list(tasks)

    def forward(self, z: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        raise NotImplementedError

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters that every task's loss depends on (all of them, by default)."""
        return list(self.parameters())
