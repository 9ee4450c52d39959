"""FAMO (Liu et al., 2023): fast adaptive multitask optimisation, balancing log-loss decrease."""

from __future__ import annotations

import torch
from torch import Tensor

from mtmm_train.balancers.base import BalanceContext, check_number, parameter_error
from mtmm_train.balancers.weighting import LossWeighting


class FAMO(LossWeighting):
    """Gradient of ``sum_t z_t log L_t`` (normalised), with task logits ``xi``, ``z = softmax(xi)``,
    learned so that every task's log-loss falls at the same rate, at the cost of static weights
    (`FAMO: Fast Adaptive Multitask Optimization <https://arxiv.org/abs/2306.03792>`_).

    The logits step uses ``delta_t = log L_t(previous step) - log L_t(this step)``: the paper's
    code evaluates the new loss on the same batch with an extra forward pass; here it is the next
    batch's loss, which costs nothing and averages out over steps. The logits follow plain
    gradient descent with weight decay (Algorithm 1 of the paper).

    The weights ``z_t / (c L_t)`` are scaled to sum ``sum_t w_t L_t = K``, the number of tasks
    with labels in the batch (so they compare with static weights). Unlabelled tasks get weight
    0, and a task's ``delta`` counts only when it had labels at both steps (all on the device).

    Args:
        tasks: task names (passed in by the recipe).
        lr: learning rate of the logits (the paper's beta).
        weight_decay: the logits' decay (the paper's gamma).
        min_loss: a lower bound of every loss (``L_t - min_loss`` must stay positive).
    """

    def __init__(self, tasks: list[str], lr: float = 0.025, weight_decay: float = 1e-3, min_loss: float = 0.0) -> None:
        super().__init__(tasks)
        check_number("lr", lr)
        check_number("weight_decay", weight_decay)
        if not isinstance(min_loss, (int, float)):
            raise parameter_error("min_loss", min_loss, "a float")
        self.lr, self.weight_decay, self.min_loss = float(lr), float(weight_decay), float(min_loss)
        n = len(self.tasks)
        self.register_buffer("logits", torch.zeros(n))
        self.register_buffer("previous_log_loss", torch.zeros(n))
        self.register_buffer("previous_active", torch.zeros(n))

    def loss_weights(self, losses: Tensor, ctx: BalanceContext) -> Tensor:
        active = self.active_mask(ctx)
        gap = (ctx.reduce(losses.detach()) - self.min_loss).clamp_min(1e-8)
        self._update_logits(gap.log(), active)
        z = torch.softmax(self.logits, 0)
        share = active * z / gap
        return share * active.sum() / share.sum().clamp_min(1e-30)

    @torch.no_grad()
    def _update_logits(self, log_loss: Tensor, active: Tensor) -> None:
        # An overflowed loss (fp16; the GradScaler skips that step) must not enter the state.
        active = active * torch.isfinite(log_loss)
        log_loss = log_loss.nan_to_num(0.0, posinf=0.0, neginf=0.0)
        both = active * self.previous_active
        delta = both * (self.previous_log_loss - log_loss)
        z = torch.softmax(self.logits, 0)
        grad = z * (delta - (z * delta).sum())  # (diag(z) - z z^T) delta: d(z . delta)/d(xi)
        self.logits -= self.lr * (grad + self.weight_decay * self.logits)
        self.previous_log_loss.copy_(torch.where(active > 0, log_loss, self.previous_log_loss))
        self.previous_active.copy_(active)

    def extra_repr(self) -> str:
        return f"lr={self.lr}, weight_decay={self.weight_decay}, min_loss={self.min_loss}"
