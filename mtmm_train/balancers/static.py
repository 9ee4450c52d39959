"""Static loss weights: ``L = sum_t w_t L_t``."""

from __future__ import annotations

import torch
from torch import Tensor

from mtmm_train.balancers.base import BalanceContext, Balancer
from mtmm_train.errors import UserError


class StaticWeights(Balancer):
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
                raise UserError(f"balancer.weights has unknown task '{t}'; tasks: {', '.join(self.tasks)}")
            if not isinstance(w, (int, float)) or w < 0:
                raise UserError(f"balancer.weights.{t} should be a non-negative number. Found {t} = {w!r}")
        self.factors = [float(weights.get(t, 1.0)) for t in self.tasks]
        self.register_buffer("weights", torch.tensor(self.factors), persistent=False)

    def backward(self, losses: dict[str, Tensor], ctx: BalanceContext) -> dict[str, Tensor]:
        # Python-float factors, and none at all for weight 1: no extra kernels in the hot path.
        total = sum(losses[t] if w == 1.0 else w * losses[t] for w, t in zip(self.factors, self.tasks, strict=True))
        ctx.scaler.scale(total).backward()
        return dict(zip(self.tasks, self.weights.unbind(), strict=True))

    def extra_repr(self) -> str:
        return f"weights={dict(zip(self.tasks, self.weights.tolist(), strict=True))}"
