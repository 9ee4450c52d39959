"""Checkpoints: atomic writes, safe loads (``weights_only=True``), and RNG state."""

from __future__ import annotations

import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from mtmm_train.errors import UserError


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """Every RNG state the training loop draws from: Python's, the CPU's and the training GPU's.

    Only the training device's CUDA generator is kept: under torchrun every rank sees every GPU,
    and rank 0's other GPUs hold generators no rank draws from.
    """
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Restore what :func:`rng_state` returned; its CUDA state goes to ``device`` (this rank's GPU)."""
    random.setstate(_as_tuple(state["python"]))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is None or device is None or device.type != "cuda":
        return
    if isinstance(cuda, list):  # checkpoints before session 2 kept every GPU's state
        cuda = cuda[device.index or 0] if (device.index or 0) < len(cuda) else None
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def save(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` atomically: a temporary file, flushed and fsynced, then renamed.

    A crash at any moment leaves either the old file or the new one, never a torn file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def remove_temporaries(folder: Path) -> None:
    """Delete the temporary files :func:`save` leaves when killed mid-write."""
    for p in folder.glob(".*.tmp") if folder.is_dir() else []:
        p.unlink(missing_ok=True)


def load(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no code runs); clear errors for bad files."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint '{path}' does not exist; pass an existing file to trainer.resume "
                        "(or trainer.resume=auto to continue the run in hydra.run.dir)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated, foreign or unsafe files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        first = re.sub(r"\x1b\[[0-9;]*m", "", first)  # torch highlights part of its message for terminals
        raise UserError(f"checkpoint '{path}' cannot be loaded safely ({first[:200]}); "
                        "it is truncated, not an mtmm-train checkpoint, or holds code") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise UserError(f"checkpoint '{path}' is not an mtmm-train checkpoint (no 'model' and 'config' entries); "
                        "pass a checkpoints/last.pt or best.pt that mtmm-train wrote")
    return state


# Callables a stored config may name without an explicit opt-in: the project's own components
# and torch's optimizers and schedulers.
TRUSTED_TARGETS = ("mtmm_train.", "torch.optim.")


def check_targets(config: Any, source: str, allow_foreign: bool = False, key: str = "") -> None:
    """Refuse a stored config whose ``_target_`` names a callable outside :data:`TRUSTED_TARGETS`.

    A checkpoint loads without running code (``weights_only=True``), but rebuilding a model from
    the config inside it instantiates every ``_target_``: a crafted file could name any callable.

    Raises:
        UserError: naming the key, the target found and the flag that allows it.
    """
    if allow_foreign:
        return
    if isinstance(config, dict):
        target = config.get("_target_")
        if target is not None and not str(target).startswith(TRUSTED_TARGETS):
            raise UserError(f"{source}: the stored config's {key or '(root)'}._target_ is '{target}', outside "
                            f"{', '.join(TRUSTED_TARGETS)}; if you trust this file, pass allow_foreign_targets=true")
        for k, v in config.items():
            check_targets(v, source, allow_foreign, f"{key}.{k}" if key else str(k))
    elif isinstance(config, list):
        for i, v in enumerate(config):
            check_targets(v, source, allow_foreign, f"{key}[{i}]")
