"""PLE (Tang et al., 2020): levels of task-specific and shared experts, progressively separated."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mtmm_train.encoders.base import check_sizes, mlp
from mtmm_train.errors import KEY, ComponentError, SettingError
from mtmm_train.mtl.base import MTLArchitecture


class ExpertLevel(nn.Module):
    """One extraction network: experts per task and shared, a gate per task (and a shared gate).

    Args:
        in_dim: input size of every expert and gate.
        tasks: task names.
        num_task_experts: experts of each task.
        num_shared_experts: shared experts.
        expert_dims: MLP layer sizes of every expert.
        dropout: dropout inside the experts.
        shared_gate: also mix every expert into a shared output (all levels but the last).
    """

    def __init__(self, in_dim: int, tasks: list[str], num_task_experts: int, num_shared_experts: int,
                 expert_dims: tuple[int, ...], dropout: float, shared_gate: bool) -> None:
        super().__init__()
        self.tasks = tasks
        self.out_dim = expert_dims[-1]

        def experts(n: int) -> nn.ModuleList:
            return nn.ModuleList(mlp([in_dim, *expert_dims], dropout) for _ in range(n))
        self.task_experts = nn.ModuleDict({t: experts(num_task_experts) for t in tasks})
        self.shared_experts = experts(num_shared_experts)
        self.task_gates = nn.ModuleDict({t: nn.Linear(in_dim, num_task_experts + num_shared_experts) for t in tasks})
        n_all = len(tasks) * num_task_experts + num_shared_experts
        self.shared_gate = nn.Linear(in_dim, n_all) if shared_gate else None
        self.names = [f"task{i}" for i in range(num_task_experts)] + [f"shared{i}" for i in range(num_shared_experts)]

    def shared_outputs(self, x: Tensor) -> Tensor:
        """The shared experts on ``x`` ``(B, in)``: ``(B, S, D)``."""
        return self._run(self.shared_experts, x)

    def task_outputs(self, t: str, x: Tensor) -> Tensor:
        """Task ``t``'s experts on ``x`` ``(B, in)``: ``(B, K, D)``."""
        return self._run(self.task_experts[t], x)

    def mix(self, gate: nn.Linear, x: Tensor, experts: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Softmax gate on ``x`` over the concatenated ``experts``: ``((B, D), mean gate (E,))``."""
        stacked = torch.cat([e.to(experts[0].dtype) for e in experts], 1)  # (B, E, D)
        g = torch.softmax(gate(x).float(), -1)  # float32 softmax under autocast
        return torch.einsum("be,bed->bd", g.to(stacked.dtype), stacked), g.detach().mean(0)

    def _run(self, experts: nn.ModuleList, x: Tensor) -> Tensor:
        if len(experts) == 0:
            return x.new_zeros(x.shape[0], 0, self.out_dim)
        return torch.stack([e(x) for e in experts], 1)


class PLE(MTLArchitecture):
    """Progressive layered extraction (`Progressive Layered Extraction (PLE): A Novel Multi-Task
    Learning Model for Personalized Recommendations <https://dl.acm.org/doi/10.1145/3383313.3412236>`_).

    Each level has experts per task and shared experts; task ``t``'s gate mixes its own and the
    shared experts, and a shared gate mixes all of them into the next level's shared input. One
    level is CGC. ``shared`` is the concatenation of the last level's task inputs and shared
    experts' outputs, the cut after which everything is task-specific.

    Args:
        in_dim: size of the fused representation (passed in by the recipe).
        tasks: task names (passed in by the recipe).
        num_levels: extraction levels (1: CGC).
        num_task_experts: experts of each task per level.
        num_shared_experts: shared experts per level.
        expert_dims: each expert's MLP layer sizes; the last is ``out_dim``.
        dropout: dropout inside the experts.
    """

    def __init__(self, in_dim: int, tasks: list[str], num_levels: int = 2, num_task_experts: int = 1,
                 num_shared_experts: int = 2, expert_dims: tuple[int, ...] = (128,), dropout: float = 0.0) -> None:
        super().__init__(in_dim, tasks)
        for name, value, low in (("num_levels", num_levels, 1), ("num_task_experts", num_task_experts, 0),
                                 ("num_shared_experts", num_shared_experts, 0)):
            if not isinstance(value, int) or value < low:
                raise SettingError(name, f"must be an integer >= {low}, found {value!r}")
        if num_task_experts + num_shared_experts == 0:
            raise ComponentError(f"{KEY}.num_task_experts and {KEY}.num_shared_experts are both 0; give at least "
                                 "one expert")
        if not expert_dims:
            raise SettingError("expert_dims", f"is empty; give the experts at least one layer, e.g. "
                               f"{KEY}.expert_dims=[128]")
        check_sizes(expert_dims=list(expert_dims))
        self.out_dim = expert_dims[-1]
        dims = [in_dim] + [self.out_dim] * (num_levels - 1)
        self.levels = nn.ModuleList(
            ExpertLevel(d, self.tasks, num_task_experts, num_shared_experts, tuple(expert_dims), dropout,
                        shared_gate=i < num_levels - 1) for i, d in enumerate(dims))
        self.last_gates: dict[str, Tensor] = {}

    def forward(self, z: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        inputs, shared_in = {t: z for t in self.tasks}, z
        for i, level in enumerate(self.levels[:-1]):
            shared = level.shared_outputs(shared_in)  # (B, S, D)
            own = {t: level.task_outputs(t, inputs[t]) for t in self.tasks}  # (B, K, D) each
            outputs = {}
            for t in self.tasks:
                outputs[t], self.last_gates[f"{t}/level{i}"] = level.mix(level.task_gates[t], inputs[t],
                                                                         [own[t], shared])
            shared_in, _ = level.mix(level.shared_gate, shared_in, [*own.values(), shared])
            inputs = outputs
        return self._last_level(inputs, shared_in)

    def _last_level(self, inputs: dict[str, Tensor], shared_in: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        level, i = self.levels[-1], len(self.levels) - 1
        experts = level.shared_outputs(shared_in)  # (B, S, D)
        B, S, D = experts.shape
        # The cut: the task inputs (one copy when they are all z) and the shared experts' outputs.
        parts = [shared_in] if len(self.levels) == 1 else [inputs[t] for t in self.tasks]
        cut = torch.cat([*parts, experts.flatten(1).to(parts[0].dtype)], 1)
        width = parts[0].shape[1]
        shared = cut[:, len(parts) * width:].view(B, S, D)
        features = {}
        for j, t in enumerate(self.tasks):
            x = cut[:, :width] if len(parts) == 1 else cut[:, j * width:(j + 1) * width]
            features[t], self.last_gates[f"{t}/level{i}"] = level.mix(level.task_gates[t], x,
                                                                      [level.task_outputs(t, x), shared])
        return features, cut

    def shared_parameters(self) -> list[nn.Parameter]:
        last = self.levels[-1]
        return [p for level in self.levels[:-1] for p in level.parameters()] + list(last.shared_experts.parameters())

    def gate_weights(self) -> dict[str, Tensor]:
        names = self.levels[0].names
        return {f"{key}/{n}": g[k] for key, g in self.last_gates.items() for k, n in enumerate(names)}
