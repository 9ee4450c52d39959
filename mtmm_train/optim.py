"""Optimizer parameter groups and learning-rate schedules (stepped once per optimizer step)."""

from __future__ import annotations

import math
from collections.abc import Container, Iterable

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR

# Layers whose parameters scale or shift activations: no weight decay (a class whose name contains "Norm" counts
# too: timm's LayerNorm2d, Hugging Face's T5LayerNorm or LlamaRMSNorm).
NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.LocalResponseNorm)


def no_decay_names(module: nn.Module) -> set[str]:
    """Names of the parameters of ``module`` that take no weight decay.

    Biases, every parameter of 0 or 1 dimension, every parameter of a normalisation layer, and the
    parameters a submodule lists in its ``no_weight_decay()`` (timm's convention: ``pos_embed``,
    ``cls_token``). Embedding tables (``nn.Embedding``, learned position tables) keep their decay.
    """
    out: set[str] = set()
    for prefix, mod in module.named_modules():
        own = dict(mod.named_parameters())
        listed = mod.no_weight_decay() if callable(getattr(mod, "no_weight_decay", None)) else ()
        for name in listed:
            if name in own:
                out.add(f"{prefix}.{name}" if prefix else name)
        norm = isinstance(mod, NORM_LAYERS) or "norm" in type(mod).__name__.lower()
        for name, p in mod.named_parameters(recurse=False):
            if norm or name == "bias" or p.dim() <= 1:
                out.add(f"{prefix}.{name}" if prefix else name)
    return out


def param_groups(params: Iterable[tuple[str, nn.Parameter, float]], no_decay: Container[str], weight_decay: float,
                 lr: float | None = None) -> list[dict]:
    """Optimizer parameter groups: one per learning-rate scale and per weight decay (on, or 0).

    Groups come in the order their scale first appears, each scale's decayed group first; scale 1
    always has both groups (a run without fine-tuning settings has exactly ``[decay, no decay]``).
    Each group has a ``name`` (``lr x0.5 decay``), which the optimizer keeps.

    Args:
        params: ``(name, parameter, lr scale)`` in model order (names as in the model's state dict).
        no_decay: names that take no weight decay (:func:`no_decay_names`).
        weight_decay: the optimizer's weight decay, for the other parameters.
        lr: the optimizer's learning rate; each group with a scale other than 1 gets ``lr * scale``
            (needed when one does).

    Raises:
        ValueError: a scale other than 1 without ``lr``.
    """
    groups: dict[tuple[float, bool], dict] = {(1.0, True): _group(1.0, True, weight_decay, None),
                                              (1.0, False): _group(1.0, False, weight_decay, None)}
    for name, p, scale in params:
        decay = name not in no_decay
        key = (float(scale), decay)
        if key not in groups:
            if lr is None:
                raise ValueError(f"a learning-rate scale of {scale:g} needs the optimizer's lr")
            for d in (True, False):  # the scale's decayed group first
                groups.setdefault((key[0], d), _group(key[0], d, weight_decay, lr))
        groups[key]["params"].append(p)
    return [g for (scale, _), g in groups.items() if g["params"] or scale == 1.0]


def _group(scale: float, decay: bool, weight_decay: float, lr: float | None) -> dict:
    group = {"params": [], "weight_decay": weight_decay if decay else 0.0,
             "name": f"lr x{scale:.6g} {'decay' if decay else 'no decay'}"}
    if scale != 1.0:
        group["lr"] = lr * scale
    return group

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
