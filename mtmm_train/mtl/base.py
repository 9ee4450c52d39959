"""The multi-task architecture contract."""

from __future__ import annotations

from torch import Tensor, nn


class MTLArchitecture(nn.Module):
    """Base of the architectures between fusion and heads.

    ``forward(z)`` returns ``(features, shared)``: ``features[t]`` ``(B, out_dim)`` for each
    task, and ``shared``, the last tensor that every task depends on (gradient-aggregation
    balancers differentiate with respect to it), or ``z`` when tasks share nothing after it.

    ``shared`` must cut every path from the shared parameters to the losses: what comes after it
    must be task-specific (a layer after it that several tasks use would be treated as
    task-specific, and escape the aggregation; an operation several tasks share would be
    backpropagated twice). Architectures whose tasks read several shared tensors (experts and
    the gates' input) return their concatenation, and read slices of it.

    Settings are checked in the constructor; a refusal is a
    :class:`~mtmm_train.errors.SettingError` (the builder names the config key).

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

    def gate_weights(self) -> dict[str, Tensor]:
        """Mixing weights of the last forward pass, for logging: ``"<task>/<expert>"`` -> scalar.

        Detached batch means, still on the device (reading them is the caller's choice).
        Architectures without gates return an empty dict.
        """
        return {}
