"""Schemas of the settings our own code reads by attribute, and checks across config groups.

Components (encoders, fusion, ...) are validated by their constructors; the settings below
are read by the recipe, so a typo or a wrong type must fail before training, in one line.
:func:`validate` runs every check that needs no data; the Hydra callbacks at the end run it for
each job of a sweep before the first one starts, and undo the run folder of a refused command.

The schemas (:data:`SCHEMAS`) are checked by :func:`typed` after composition, by every command
(``mtmm-train`` through :func:`validate`, ``mtmm-eval`` on a checkpoint's config completed by
:func:`fill_settings`), not registered in Hydra's ConfigStore as defaults of ``configs/trainer/``:
Hydra would then refuse ``trainer.max_epochs=many`` as "Error merging override
trainer.max_epochs=many" (no type, no fix), still accept ``+trainer.max_epoch=3``, and the config
files would need a ``defaults`` entry that only Hydra can read (``mtmm-eval`` merges them as YAML).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.resources
import itertools
import logging
import math
import os
import re
import shutil
import typing
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException, ValidationError

from mtmm_train.errors import UserError
from mtmm_train.instantiate import check_arguments, describe_type, override_text

PRECISIONS = ("32", "bf16", "fp16")
NONFINITE_POLICIES = ("warn", "skip", "stop")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# numpy's limit (Optuna's sampler takes hparams_search's seed from ${seed}); torch takes more, but the
# training loader derives each epoch's seed as seed * 100003 + epoch, which must stay below 2**64.
SEED_MAX = 2**32 - 1
TYPE_EXAMPLES = {"int": "8", "int | None": "8 (or null)", "bool": "true", "float | None": "1.0 (or null)",
                 "str": "'...'", "str | None": "'...' (or null)"}


@dataclass
class TrainerConfig:
    """Schema of ``trainer`` (the values live in ``configs/trainer/*.yaml``)."""

    max_epochs: int | None = MISSING
    min_steps: int | None = MISSING
    batch_size: int = MISSING
    drop_last: bool = MISSING
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
    test: bool = MISSING
    num_threads: int | None = MISSING


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


# The settings read by attribute, each with its schema (the values live in configs/<key>/*.yaml).
SCHEMAS: dict[str, type] = {"trainer": TrainerConfig, "logger": LoggerConfig}


def typed(cfg: DictConfig, key: str, schema: type | None = None) -> Any:
    """Merge ``cfg[key]`` onto its schema (``SCHEMAS[key]`` unless given): unknown keys and wrong types
    become one-line errors.

    Returns:
        The dataclass (:class:`TrainerConfig`, :class:`LoggerConfig`).

    Raises:
        UserError: ``trainer.max_epoch is not a setting of trainer; did you mean trainer.max_epochs? ...``,
            ``trainer.max_epochs must be of type int, found 'many'; e.g. trainer.max_epochs=8``, or a
            setting without a value.
    """
    schema = schema or SCHEMAS[key]
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


def fill_settings(cfg: DictConfig, options: dict[str, str] | None = None) -> DictConfig:
    """Give an older config (a checkpoint's) today's defaults for the typed settings it lacks; it keeps its own.

    For ``mtmm-eval``: settings added to ``trainer`` since the checkpoint was written get the value
    of today's ``configs/trainer/default.yaml``. Check the result with :func:`typed`.

    Args:
        cfg: the config, changed in place.
        options: group -> the config file whose values fill it (default: ``{"trainer": "default"}``;
            e.g. ``{"trainer": "default", "logger": "none"}``); the groups are keys of :data:`SCHEMAS`.

    Returns:
        ``cfg``.
    """
    files = importlib.resources.files("mtmm_train.configs")
    for key, option in (options or {"trainer": "default"}).items():
        if key not in SCHEMAS:
            raise ValueError(f"{key} has no schema; the typed settings are {', '.join(SCHEMAS)}")
        defaults = OmegaConf.create((files / key / f"{option}.yaml").read_text())
        cfg[key] = OmegaConf.merge(defaults, cfg.get(key) or {})
    return cfg


def check_trainer(t: TrainerConfig) -> None:
    """Range checks of ``trainer`` that a type alone cannot express."""
    problems = []
    for name in ("batch_size", "eval_batch_size", "accumulate_grad_batches"):
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
    for name in ("max_epochs", "min_steps", "num_threads", "early_stopping_patience", "checkpoint_every_n_steps",
                 "limit_train_batches"):
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


def check_seed(value: Any) -> int:
    """``seed``: an integer in ``[0, SEED_MAX]`` (a larger one overflowed inside torch, with a traceback)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise UserError(f"seed must be an integer, found {value!r}; e.g. seed=0")
    if not 0 <= value <= SEED_MAX:
        raise UserError(f"seed must be an integer in [0, {SEED_MAX}] (2**32-1), found {value}; e.g. seed=0")
    return value


def check_resume(resume: str | None) -> None:
    """``trainer.resume``: ``auto``, null or a checkpoint file, not a folder (the loader would say 'not found')."""
    if resume is None or resume == "auto":
        return
    path = Path(resume).expanduser()
    if path.is_dir():
        found = next((p for p in (path / "checkpoints" / "last.pt", path / "last.pt") if p.is_file()), None)
        raise UserError(f"trainer.resume '{resume}' is a directory; give a checkpoint file, e.g. trainer.resume="
                        f"{found or path / 'checkpoints' / 'last.pt'} (or trainer.resume=auto in the run folder)")


def components(node: Any, key: str = "") -> Iterator[tuple[str, DictConfig]]:
    """Every config node with a ``_target_`` under ``node`` (Hydra's own settings left out), with its key."""
    if not isinstance(node, DictConfig):
        return
    if "_target_" in node and key:
        yield key, node
    for k in node.keys():
        if not key and k == "hydra":
            continue
        try:
            child = node.get(k)
        except OmegaConfBaseException:  # an interpolation that does not resolve: the component reports it
            continue
        yield from components(child, f"{key}.{k}" if key else str(k))


def validate(cfg: DictConfig) -> tuple[TrainerConfig, LoggerConfig]:
    """Every check of a training config that needs no data, in the order a user would fix them.

    The trainer and logger schemas and ranges, ``seed``, ``trainer.resume``, and each component's
    settings against its constructor's annotations (``mtl.hidden_dims=64``, ``optimizer.lr=inf``).
    ``TrainRecipe.setup`` runs it first; a sweep runs it for each job before the first one starts.

    Returns:
        The typed ``trainer`` and ``logger`` settings.

    Raises:
        UserError: the first problem, in one line.
    """
    trainer: TrainerConfig = typed(cfg, "trainer")
    logger: LoggerConfig = typed(cfg, "logger")
    check_trainer(trainer)
    check_seed(cfg.get("seed"))
    check_resume(trainer.resume)
    for key, node in components(cfg):
        check_arguments(node, key)
    from mtmm_train import finetune  # local: it imports torch, which this module does not need

    finetune.check_config(cfg)  # model.encoders.<m>.freeze, adapter, lr_scale... (mtmm_train/finetune.py)
    return trainer, logger


def override_error_line(e: Exception, schema: type) -> str | None:
    """One line for a command-line override that a dataclass-typed config refused (``mtmm-eval``'s), or None.

    An unknown setting (``splt=val``: ``unknown setting 'splt'; did you mean 'split'? the settings are
    ...``, not Hydra's advice to add it with ``+``), or a value of the wrong type (``noise=[abc]``).
    """
    key = str(getattr(e.__cause__, "full_key", None) or "")
    if not key or key.startswith("hydra."):
        return None
    top = re.split(r"[.\[]", key)[0]
    names = [f.name for f in dataclasses.fields(schema)]
    if top not in names:
        close = difflib.get_close_matches(top, names, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return f"unknown setting '{top}'; {hint}the settings are {', '.join(names)}"
    if not isinstance(e.__cause__, ValidationError):
        return None
    field = next(f for f in dataclasses.fields(schema) if f.name == top)
    default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
    what = describe_type(typing.get_type_hints(schema)[top]) or f"of type {field.type}"
    given = str(e).split("override ", 1)[-1].strip()
    found = given.split("=", 1)[1] if "=" in given else "?"
    unset = default is None or default is dataclasses.MISSING or default == MISSING
    example = TYPE_EXAMPLES.get(str(field.type)) if unset else override_text(default)
    return f"{top} must be {what}, found {found}; e.g. {top}={example or '...'}"


# ---------------------------------------------------------------------- Hydra callbacks (configs/train.yaml)
class Refused(BaseException):
    """A command refused by a Hydra callback before anything ran; the CLI prints it as one line (exit 2).

    A BaseException, because Hydra turns an Exception raised in a callback into a warning and goes on.
    """


class SweepCheck(Callback):
    """``-m`` (or ``hparams_search``): :func:`validate` every job's config before the first job starts.

    Runs in the process that launches the sweep, whatever the launcher (basic, joblib, submitit).
    The basic sweeper's jobs are all checked, up to :attr:`MAX_JOBS` (each costs a composition);
    beyond, and for other sweepers such as Optuna, each swept value once, the others at their first
    value (an interval: both ends). The checks are of single settings, so that finds every bad value.
    """

    MAX_JOBS = 32

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not GlobalHydra.instance().is_initialized():
            return
        loader = GlobalHydra.instance().hydra.config_loader  # type: ignore[union-attr]
        for label, overrides in sweep_jobs(config, loader, self.MAX_JOBS):
            try:
                validate(loader.load_sweep_config(config, overrides))
            except UserError as e:
                raise Refused(f"sweep {label}: {e}; no job was started") from None
            except HydraException as e:
                from mtmm_train.cli import hydra_error_line

                raise Refused(f"sweep {label}: {hydra_error_line(e)}; no job was started") from None
            except Exception:  # anything else is the job's to report when it runs
                continue


def sweep_jobs(config: DictConfig, loader: Any, max_jobs: int) -> Iterator[tuple[str, list[str]]]:
    """The jobs to check: ``(label for messages, overrides)``; the label names the job's swept values.

    Sweeps come from ``hydra.sweeper.params`` and the command line (which wins), as the sweepers read them.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    lines = [f"{k}={v}" for k, v in params.items()] + list(OmegaConf.select(config, "hydra.overrides.task") or [])
    choices: dict[str, list[str]] = {}
    for o in OverridesParser.create(config_loader=loader).parse_overrides(lines):
        key = o.get_key_element()
        if not o.is_sweep_override():
            choices[key] = [f"{key}={o.get_value_element_as_str()}"]
        elif o.is_discrete_sweep():
            choices[key] = [f"{key}={v}" for v in o.sweep_string_iterator()]
        else:  # an interval (Optuna samples inside it): check both ends
            sweep = o.value()
            choices[key] = [f"{key}={sweep.start}", f"{key}={sweep.end}"]
    swept = {k for k, v in choices.items() if len(v) > 1}

    def shown(job: tuple[str, ...]) -> str:
        return ", ".join(o for k, o in zip(choices, job, strict=True) if k in swept) or ", ".join(job) or "no overrides"

    sizes = [len(v) for v in choices.values()]
    basic = str(OmegaConf.select(config, "hydra.sweeper._target_") or "").endswith("BasicSweeper")
    if basic and math.prod(sizes) <= max_jobs:
        picks = itertools.product(*(range(n) for n in sizes))
    else:  # each value once, the others at their first
        picks = [(0,) * len(sizes)] + [tuple(j if k == i else 0 for k in range(len(sizes)))
                                       for i, n in enumerate(sizes) for j in range(1, n)]
    for pick in picks:
        job = tuple(v[j] for v, j in zip(choices.values(), pick, strict=True))
        if basic:  # Hydra's job number: the position in the product, the last setting varying fastest
            num = sum(j * math.prod(sizes[i + 1:]) for i, j in enumerate(pick))
            yield f"job {num} ({shown(job)})", list(job)
        else:  # name the value that differs from the first job's
            varied = [o for o, j in zip(job, pick, strict=True) if j]
            yield f"job with {', '.join(varied) or shown(job)}", list(job)


_CREATED: dict[str, list[Path]] = {}  # run folder -> the folders Hydra was about to create for it, deepest first


class NewFolders(Callback):
    """Notes, before the run folder (``hydra.run.dir``) is created, which folders do not exist yet, so
    that :func:`remove_created_run_folder` can take them away again when the command is refused.

    Must come before ``mtmm_train.runlock.RunFolderCallback`` in ``hydra.callbacks``: that one creates
    the folder to lock it.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _CREATED.clear()
        try:
            run_dir = Path(os.path.abspath(str(OmegaConf.select(config, "hydra.run.dir"))))
        except Exception:  # e.g. ${hydra:...}, not resolvable yet: nothing will be removed
            return
        new, folder = [], run_dir
        while not _exists(folder) and folder != folder.parent:
            new.append(folder)
            folder = folder.parent
        _CREATED[str(run_dir)] = new


def _exists(path: Path) -> bool:
    """``path.exists()``, False where the name cannot exist (ENAMETOOLONG, which ``exists`` raises)."""
    try:
        return path.exists()
    except OSError:
        return False


HYDRA_FILES = {"config.yaml", "hydra.yaml", "overrides.yaml"}


def remove_created_run_folder(output_dir: str | Path) -> None:
    """Remove the run folder of a refused command, if this command created it and it holds nothing but
    what Hydra wrote before our code ran (``.hydra*/``, the job's ``.log``) and the run lock; then its
    parents that this command created, while empty. A folder that existed before the command is never
    touched. Releases this process's run locks (it is about to exit)."""
    created = _CREATED.pop(os.path.abspath(str(output_dir)), None)
    if not created:
        return
    from mtmm_train import runlock

    runlock.release_all()  # deletes the lock file
    run_dir = created[0]
    root = logging.getLogger()
    for handler in list(root.handlers):  # Hydra's log file handler keeps the log open
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == run_dir:
            handler.close()
            root.removeHandler(handler)
    try:
        entries = list(run_dir.iterdir())
        hydra_dirs = [p for p in entries if p.is_dir() and p.name.startswith(".hydra")
                      and {q.name for q in p.iterdir()} <= HYDRA_FILES]
        logs = [p for p in entries if p.is_file() and p.suffix == ".log"]
        if len(hydra_dirs) + len(logs) != len(entries):
            return  # something else was written there: keep everything
        for p in hydra_dirs:
            shutil.rmtree(p)
        for p in logs:
            p.unlink()
        for folder in created:
            folder.rmdir()
    except OSError:  # another process writes there too: leave the rest
        return
