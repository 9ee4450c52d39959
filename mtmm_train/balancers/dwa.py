"""Dynamic weight average (Liu et al., 2019): weights from the tasks' recent rates of descent."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtmm_train.balancers.base import BalanceContext, check_number
from mtmm_train.balancers.weighting import LossWeighting


class DynamicWeightAverage(LossWeighting):
    """``w = T softmax(r / temperature)`` with ``r_t = L_t(k-1) / L_t(k-2)``, the ratio of a
    task's mean loss over the last two windows (`End-to-End Multi-Task Learning with Attention
    <https://arxiv.org/abs/1803.10704>`_; the paper's windows are epochs). A task that slows
    down gets more weight; every weight is 1 until two windows have passed.

    A window's mean counts only the steps where the task had labels, so a sparse task's ratio
    is not pulled down by the zero losses of its unlabelled batches (all on the device).

    Args:
        tasks: task names (passed in by the recipe).
        temperature: softmax temperature (larger: closer to equal weights).
        window: optimizer steps per averaging window.
    """

    def __init__(self, tasks: list[str], temperature: float = 2.0, window: int = 30) -> None:
        super().__init__(tasks)
        check_number("temperature", temperature, positive=True)
        check_number("window", window, positive=True, integer=True)
        self.temperature, self.window = float(temperature), window
        n = len(self.tasks)
        self.register_buffer("window_sum", torch.zeros(n))
        self.register_buffer("window_count", torch.zeros(n))
        self.register_buffer("previous", torch.full((n,), float("nan")))  # mean loss of window k-1
        self.register_buffer("before_previous", torch.full((n,), float("nan")))  # of window k-2
        self.current_window = -1

    def loss_weights(self, losses: Tensor, ctx: BalanceContext) -> Tensor:
        window = ctx.step // self.window
        if window != self.current_window:
            if self.current_window >= 0:
                mean = self.window_sum / self.window_count  # NaN for a task unlabelled all window
                self.before_previous.copy_(self.previous)
                self.previous.copy_(mean)
            self.window_sum.zero_()
            self.window_count.zero_()
            self.current_window = window
        ratio = (self.previous / self.before_previous).nan_to_num(1.0, posinf=1.0, neginf=1.0)
        weights = len(self.tasks) * torch.softmax(ratio / self.temperature, 0)
        active = self.active_mask(ctx)
        self.window_sum += active * ctx.reduce(losses.detach())
        self.window_count += active
        return weights

    def get_extra_state(self) -> Any:
        return {"current_window": self.current_window}

    def set_extra_state(self, state: Any) -> None:
        self.current_window = int(state["current_window"])

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, window={self.window}"
