"""Static loss weights: ``L = sum_t w_t L_t``."""

from __future__ import annotations

import torch
from torch import Tensor

from mtmm_train.balancers.base import BalanceContext, parameter_error
from mtmm_train.balancers.weighting import LossWeighting


class StaticWeights(LossWeighting):
    """Fixed per-task weights; a task not listed gets 1.

    Args:
        tasks: task names (passed in by the recipe).
        weights: task -> non-negative weight.
    """

    def __init__(self, tasks: list[str], weights: dict[str, float] | None = None) -> None:
        super().__init__(tasks)
        weights = dict(weights or {})
        for t, w in weights.items():
            if t not in self.tasks:
                raise parameter_error("weights", weights, f"a map from the tasks ({', '.join(self.tasks)}) to "
                                                          f"weights, and '{t}' is no task")
            if not isinstance(w, (int, float)) or w < 0:
                raise parameter_error(f"weights.{t}", w, "a non-negative float")
        self.register_buffer("weights", torch.tensor([float(weights.get(t, 1.0)) for t in self.tasks]),
                             persistent=False)

    def loss_weights(self, losses: Tensor, ctx: BalanceContext) -> Tensor:
        return self.weights

    def extra_repr(self) -> str:
        return f"weights={dict(zip(self.tasks, self.weights.tolist(), strict=True))}"
