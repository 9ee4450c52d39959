"""MMoE (Ma et al., 2018): shared experts mixed by one softmax gate per task."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mtmm_train.encoders.base import check_sizes, mlp
from mtmm_train.errors import KEY, SettingError
from mtmm_train.mtl.base import MTLArchitecture


class MMoE(MTLArchitecture):
    """Multi-gate mixture of experts: ``h_t = sum_e softmax(W_t z)_e expert_e(z)``
    (`Modeling Task Relationships in Multi-task Learning with Multi-gate Mixture-of-Experts
    <https://dl.acm.org/doi/10.1145/3219819.3220007>`_).

    The experts are shared; each task's gate is its own. ``shared`` is the concatenation of
    ``z`` (the gates' input) and the experts' outputs: every path from a shared parameter to a
    loss crosses it, so gradient aggregation sees the experts as shared.

    Args:
        in_dim: size of the fused representation (passed in by the recipe).
        tasks: task names (passed in by the recipe).
        num_experts: number of shared experts.
        expert_dims: each expert's MLP layer sizes; the last is ``out_dim``.
        dropout: dropout inside the experts.
    """

    def __init__(self, in_dim: int, tasks: list[str], num_experts: int = 4, expert_dims: tuple[int, ...] = (128,),
                 dropout: float = 0.0) -> None:
        super().__init__(in_dim, tasks)
        if not isinstance(num_experts, int) or num_experts < 1:
            raise SettingError("num_experts", f"must be a positive integer, found {num_experts!r}")
        if not expert_dims:
            raise SettingError("expert_dims", f"is empty; give the experts at least one layer, e.g. "
                               f"{KEY}.expert_dims=[128]")
        check_sizes(expert_dims=list(expert_dims))
        self.num_experts = num_experts
        self.out_dim = expert_dims[-1]
        self.experts = nn.ModuleList(mlp([in_dim, *expert_dims], dropout) for _ in range(num_experts))
        self.gates = nn.ModuleDict({t: nn.Linear(in_dim, num_experts) for t in self.tasks})
        self.last_gates: dict[str, Tensor] = {}

    def forward(self, z: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        B = z.shape[0]
        experts = torch.stack([e(z) for e in self.experts], 1)  # (B, E, D)
        shared = torch.cat([z, experts.flatten(1).to(z.dtype)], 1)  # (B, in + E*D)
        z_, experts = shared[:, :self.in_dim], shared[:, self.in_dim:].view(B, self.num_experts, self.out_dim)
        features = {}
        for t in self.tasks:
            gate = torch.softmax(self.gates[t](z_).float(), -1)  # (B, E); softmax in float32 under autocast
            features[t] = torch.einsum("be,bed->bd", gate.to(experts.dtype), experts)
            self.last_gates[t] = gate.detach().mean(0)
        return features, shared

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.experts.parameters())

    def gate_weights(self) -> dict[str, Tensor]:
        return {f"{t}/expert{e}": g[e] for t, g in self.last_gates.items() for e in range(self.num_experts)}
