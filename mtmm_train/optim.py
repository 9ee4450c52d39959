"""Optimizer parameter groups and learning-rate schedules (stepped once per optimizer step)."""

from __future__ import annotations

import math
from collections.abc import Iterable

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR


def param_groups(modules: Iterable[nn.Module], weight_decay: float) -> list[dict]:
    """Weight decay on matrices and kernels only; none on biases, norms and embeddings' 1-D params."""
    decay, no_decay = [], []
    for module in modules:
        for p in module.parameters():
            if p.requires_grad:
                (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

def _warmup_steps(warmup: float, total_steps: int) -> int:
    # A value below 1 is a fraction of the run, otherwise a number of steps.
    return int(warmup * total_steps) if warmup < 1 else int(warmup)

class _Cosine:
    """Linear warm-up then cosine decay to ``min_lr_ratio`` (a picklable LambdaLR function)."""

    def __init__(self, total_steps: int, warmup: int, min_lr_ratio: float) -> None:
        self.total, self.warmup, self.min_ratio = total_steps, warmup, min_lr_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def cosine(optimizer: Optimizer, total_steps: int, warmup: float = 0.05, min_lr_ratio: float = 0.0) -> LRScheduler:
    """Cosine decay with linear warm-up.

    Args:
        optimizer: the optimizer (passed in by the recipe).
        total_steps: optimizer steps of the whole run (passed in by the recipe).
        warmup: warm-up length: a fraction of ``total_steps`` if below 1, else steps.
        min_lr_ratio: final learning rate as a fraction of the initial one.
    """
    return LambdaLR(optimizer, _Cosine(total_steps, _warmup_steps(warmup, total_steps), min_lr_ratio))

def one_cycle(optimizer: Optimizer, total_steps: int, pct_start: float = 0.3) -> LRScheduler:
    """``torch.optim.lr_scheduler.OneCycleLR`` peaking at each group's configured learning rate."""
    max_lr = [g["lr"] for g in optimizer.param_groups]
    return OneCycleLR(optimizer, max_lr=max_lr, total_steps=max(1, total_steps), pct_start=pct_start)

def constant(optimizer: Optimizer, total_steps: int) -> LRScheduler:
    """No schedule: the learning rate stays as configured."""
    return LambdaLR(optimizer, _one)


def _one(step: int) -> float:
    return 1.0
