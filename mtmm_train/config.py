"""Schemas of the settings our own code reads by attribute, and checks across config groups.

Components (encoders, fusion, ...) are validated by their constructors; the settings below
are read by the recipe, so a typo or a wrong type must fail before training, in one line.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, fields
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mtmm_train.errors import UserError

PRECISIONS = ("32", "bf16", "fp16")
NONFINITE_POLICIES = ("warn", "skip", "stop")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
TYPE_EXAMPLES = {"int": "8", "int | None": "8 (or null)", "bool": "true", "float | None": "1.0 (or null)",
                 "str": "'...'", "str | None": "'...' (or null)"}


@dataclass
class TrainerConfig:
    """Schema of ``trainer`` (the values live in ``configs/trainer/*.yaml``)."""

    max_epochs: int = MISSING
    batch_size: int = MISSING
    eval_batch_size: int = MISSING
    device: str = MISSING
    precision: str = MISSING
    float32_matmul_precision: str = MISSING
    accumulate_grad_batches: int = MISSING
    gradient_clip_norm: float | None = MISSING
    compile: bool = MISSING
    compile_mode: str = MISSING
    deterministic: bool = MISSING
    cudnn_benchmark: bool = MISSING
    sync_batchnorm: bool = MISSING
    nonfinite: str = MISSING
    monitor: str = MISSING
    monitor_mode: str = MISSING
    early_stopping_patience: int | None = MISSING
    checkpoint_every_n_steps: int | None = MISSING
    limit_train_batches: int | None = MISSING
    resume: str | None = MISSING


@dataclass
class LoggerConfig:
    """Schema of ``logger``."""

    tensorboard: bool = MISSING
    log_every_n_steps: int = MISSING
    progress_bar: bool = MISSING
    grad_cosine_every_n_steps: int | None = MISSING

    def __post_init__(self) -> None:
        # Runs when typed() builds the object, so a bad interval fails in setup, not at the first log.
        if self.log_every_n_steps < 1:
            raise UserError(f"logger.log_every_n_steps must be >= 1, found {self.log_every_n_steps}; "
                            "e.g. logger.log_every_n_steps=10")
        every = self.grad_cosine_every_n_steps
        if every is not None and every < 1:
            raise UserError(f"logger.grad_cosine_every_n_steps must be >= 1 or null, found {every}; "
                            "use null to turn it off")


def typed(cfg: DictConfig, key: str, schema: type) -> Any:
    """Merge ``cfg[key]`` onto ``schema``: unknown keys and wrong types become one-line errors."""
    names = [f.name for f in fields(schema)]
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), cfg[key])
        missing = [n for n in names if OmegaConf.is_missing(merged, n)]
        if missing:
            raise UserError(f"{key}.{missing[0]} has no value; set it, e.g. {key}.{missing[0]}=...")
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        bad = str(getattr(e, "full_key", None) or getattr(e, "key", None) or "?")
        if bad not in names:  # an unknown key (a typo, or a setting this version does not have)
            close = difflib.get_close_matches(bad, names, n=1)
            hint = f"did you mean {key}.{close[0]}? " if close else ""
            raise UserError(f"{key}.{bad} is not a setting of {key}; {hint}allowed keys: {', '.join(names)}") \
                from None
        kind = next(str(f.type) for f in fields(schema) if f.name == bad)
        found = OmegaConf.select(cfg[key], bad) if OmegaConf.is_config(cfg[key]) else "?"
        raise UserError(f"{key}.{bad} must be of type {kind}, found {found!r}; e.g. "
                        f"{key}.{bad}={TYPE_EXAMPLES.get(kind, '...')}") from None


def check_trainer(t: TrainerConfig) -> None:
    """Range checks of ``trainer`` that a type alone cannot express."""
    problems = []
    for name in ("max_epochs", "batch_size", "eval_batch_size", "accumulate_grad_batches"):
        if getattr(t, name) < 1:
            problems.append(f"trainer.{name} must be >= 1, found {getattr(t, name)}")
    if t.precision not in PRECISIONS:
        problems.append(f"trainer.precision must be one of {', '.join(PRECISIONS)}, found '{t.precision}'")
    if t.float32_matmul_precision not in ("highest", "high", "medium"):
        problems.append("trainer.float32_matmul_precision must be highest, high or medium, found "
                        f"'{t.float32_matmul_precision}'")
    if t.compile_mode not in COMPILE_MODES:
        problems.append(f"trainer.compile_mode must be one of {', '.join(COMPILE_MODES)}, found '{t.compile_mode}'")
    if t.nonfinite not in NONFINITE_POLICIES:
        problems.append(f"trainer.nonfinite must be one of {', '.join(NONFINITE_POLICIES)}, found '{t.nonfinite}'")
    if t.monitor_mode not in ("min", "max"):
        problems.append(f"trainer.monitor_mode must be min or max, found '{t.monitor_mode}'")
    if t.gradient_clip_norm is not None and t.gradient_clip_norm <= 0:
        problems.append(f"trainer.gradient_clip_norm must be > 0 or null, found {t.gradient_clip_norm}")
    for name in ("early_stopping_patience", "checkpoint_every_n_steps", "limit_train_batches"):
        value = getattr(t, name)
        if value is not None and value < 1:
            problems.append(f"trainer.{name} must be >= 1 or null, found {value}")
    if problems:
        raise UserError("; ".join(problems))


def check_names(kind: str, key: str, configured: list[str], available: list[str], selected: list[str] | None,
                select_key: str) -> list[str]:
    """Match the components configured under ``key`` against the dataset's ``kind`` names.

    Returns:
        The names to use, in the dataset's order.
    """
    if selected is not None:
        unknown = [n for n in selected if n not in available]
        if unknown:
            raise UserError(f"{select_key} names unknown {kind} '{unknown[0]}'; "
                            f"the dataset has: {', '.join(available)}")
        if not selected:
            raise UserError(f"{select_key} is empty; name at least one of: {', '.join(available)}")
    use = [n for n in available if selected is None or n in selected]
    extra = [n for n in configured if n not in available]
    if extra:
        raise UserError(f"{key}.{extra[0]} is configured, but the dataset has no {kind} '{extra[0]}' "
                        f"(it has: {', '.join(available)}); remove it with ~{key}.{extra[0]}")
    missing = [n for n in use if n not in configured]
    if missing:
        group = "encoder" if kind == "modality" else "head"
        raise UserError(f"{kind} '{missing[0]}' of the dataset has no {key.split('.')[-1][:-1]}; add one, e.g. "
                        f"+{group}@{key}.{missing[0]}={'mlp' if group == 'encoder' else 'linear'}, "
                        f"or leave it out with {select_key}=[...]")
    return use
