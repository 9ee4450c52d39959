"""Checkpoints: atomic writes, safe loads (``weights_only=True``), RNG state, and what may be trusted in them.

A loaded checkpoint's stored config is checked before anything is built from it
(:func:`check_targets`, with :mod:`mtmm_train.registry`), and the fingerprint of the data it was
trained on (:func:`data_fingerprint`) must match the data of a resumed or evaluated run. The data's
schema (:func:`data_schema`: specs and the readers' state) lets ``mtmm-predict`` rebuild the model and
read new rows from the checkpoint alone (:func:`schema_data`).
"""

from __future__ import annotations

import logging
import math
import os  # noqa: F401  (tests/crash_driver.py patches checkpoint.os.replace: the os.replace fileio calls)
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import torch

from mtmm_train import fileio, registry
from mtmm_train.errors import UserError

if TYPE_CHECKING:
    from mtmm_train.data.base import MultiModalData

log = logging.getLogger("mtmm_train")


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
    if isinstance(cuda, list):  # older checkpoints kept every GPU's state, a list
        cuda = cuda[device.index or 0] if (device.index or 0) < len(cuda) else None
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def save(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` atomically: a temporary file, flushed and fsynced, then renamed.

    A crash at any moment leaves either the old file or the new one, never a torn file; a full
    disk raises :class:`mtmm_train.fileio.WriteError` naming ``path`` (the old file intact).
    """
    fileio.save_torch(state, path)


def remove_temporaries(folder: Path) -> None:
    """Delete the temporary files :func:`save` leaves when killed mid-write."""
    for p in folder.glob(".*.tmp") if folder.is_dir() else []:
        p.unlink(missing_ok=True)


def load(path: str | Path, allow_foreign_targets: bool = False,
         trusted_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no code runs) and check the config stored in it.

    Every command that reads a checkpoint goes through here, so none can build what a crafted
    file names: the stored config is checked by :func:`check_targets` before it is returned.

    Args:
        path: the checkpoint.
        allow_foreign_targets: skip the check of the stored config (``mtmm-eval`` on trusted files).
        trusted_config: the current run's config, when resuming (see :func:`check_targets`).

    Raises:
        UserError: the file is missing, cannot be loaded safely, is not an mtmm-train checkpoint,
            or its stored config names something mtmm-train would not build.
    """
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
    check_targets(state["config"], f"checkpoint '{path}'", allow_foreign_targets, trusted_config)
    return state


# ---------------------------------------------------------------------- stored configs: what may be built
# Hydra's keys that change what instantiate calls, or how.
RESERVED = ("_target_", "_args_", "_partial_", "_recursive_", "_convert_")
CONVERT_MODES = ("none", "partial", "object", "all")
FOREIGN_FIX = "if you trust this file, pass allow_foreign_targets=true"
RESUME_FIX = "resume only a checkpoint that mtmm-train wrote for this config, or start a new run"


def check_targets(config: Any, source: str, allow_foreign: bool = False, trusted: dict[str, Any] | None = None,
                  fix: str | None = None) -> None:
    """Refuse a stored config that would build anything but the project's own components.

    A checkpoint loads without running code (``weights_only=True``), but rebuilding a run from the
    config inside it instantiates every ``_target_``, so a crafted file could otherwise name any
    callable. Checked here, before anything is built:

    * every ``_target_`` sits in a place where the recipe builds a component
      (:data:`mtmm_train.registry.SLOTS`: ``dataset``, ``dataset.modalities.*``, ``model.encoders.*``,
      ``fusion``, ``optimizer``...), never inside a list or deeper, and the object it resolves to is
      one of that place's components (:func:`mtmm_train.registry.check_component`);
    * no ``_args_`` anywhere; ``_partial_`` only as a bool, and only on the optimizer and the
      schedule; ``_recursive_`` a bool; ``_convert_`` one of Hydra's modes; no reserved key
      without a ``_target_``;
    * the config is plain data (mappings with text keys, lists, text, numbers, booleans, null) and
      holds no ``${...}`` interpolation (mtmm-train stores its config resolved; OmegaConf would
      evaluate one when the config is read, e.g. ``${oc.create:...}`` building a new node).

    Args:
        config: the stored config (plain data).
        source: what holds it, for messages (``checkpoint 'path'``).
        allow_foreign: skip every check (``mtmm-eval allow_foreign_targets=true``, trusted files).
        trusted: the config of the current run (resume): a stored node whose ``_target_``,
            ``_args_`` and ``_partial_`` equal the current config's at the same key is accepted, as
            nothing from the file chooses it (the user's own components resume).
        fix: the remedy ending each message; default: :data:`FOREIGN_FIX`, or :data:`RESUME_FIX`
            when ``trusted`` is given.

    Raises:
        UserError: one line naming the key, the value found and the remedy.
    """
    if allow_foreign:
        return
    fix = fix or (RESUME_FIX if trusted is not None else FOREIGN_FIX)
    if not isinstance(config, dict):
        raise UserError(f"{source}: the stored config is a {type(config).__name__}, not a mapping; {fix}")
    _check_node(config, (), source, trusted, fix)


def _check_node(node: Any, path: tuple[Any, ...], source: str, trusted: Any, fix: str) -> None:
    def refuse(what: str) -> NoReturn:
        raise UserError(f"{source}: the stored config's {what}; {fix}")

    where = _key(path) or "(root)"
    if isinstance(node, dict):
        for k in node:
            if not isinstance(k, str):
                refuse(f"{where} has the key {_show(k)}, which is not text")
        if any(k in node for k in RESERVED):
            _check_component(node, path, trusted, refuse)
        for k, v in node.items():
            _check_node(v, (*path, k), source, _child(trusted, k), fix)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _check_node(v, (*path, i), source, _child(trusted, i), fix)
    elif isinstance(node, str):
        if "${" in node:
            refuse(f"{where} is {_show(node)}, an interpolation (mtmm-train stores its config resolved)")
    elif node is not None and not isinstance(node, (bool, int, float)):
        refuse(f"{where} holds a {type(node).__name__}, where a config holds text, numbers, lists and mappings")


def _check_component(node: dict[str, Any], path: tuple[Any, ...], trusted: Any,
                     refuse: Callable[[str], NoReturn]) -> None:
    where = _key(path) or "(root)"
    if isinstance(trusted, dict) and "_target_" in node and all(
            node.get(k, None) == trusted.get(k, None) for k in ("_target_", "_args_", "_partial_")):
        return  # the current run's own config names the same: nothing here comes from the file alone
    if "_target_" not in node:
        refuse(f"{where}.{next(k for k in RESERVED if k in node)} is set without a _target_")
    target = node["_target_"]
    if "_args_" in node:
        refuse(f"{where}._args_ is {_show(node['_args_'])}; mtmm-train passes arguments by name only")
    slot = registry.slot_of(path)
    if slot is None:
        refuse(f"{where}._target_ is {_show(target)}, in a place where mtmm-train builds no component")
    reason = registry.check_component(slot, target)
    if reason is not None:
        refuse(f"{where}._target_ is {_show(target)}, which is not {slot.what} of mtmm-train ({reason})")
    if "_partial_" in node and not (slot.partial and isinstance(node["_partial_"], bool)):
        allowed = "true or false" if slot.partial else "not allowed here (only on optimizer and scheduler)"
        refuse(f"{where}._partial_ is {_show(node['_partial_'])}: {allowed}")
    if "_recursive_" in node and not isinstance(node["_recursive_"], bool):
        refuse(f"{where}._recursive_ is {_show(node['_recursive_'])}, not true or false")
    convert = node.get("_convert_", "none")
    if not (isinstance(convert, str) and convert.lower() in CONVERT_MODES):
        refuse(f"{where}._convert_ is {_show(convert)}, not one of {', '.join(CONVERT_MODES)}")


def _child(node: Any, key: Any) -> Any:
    if isinstance(node, dict):
        return node.get(key)
    if isinstance(node, list) and isinstance(key, int) and key < len(node):
        return node[key]
    return None


def _key(path: tuple[Any, ...]) -> str:
    out = ""
    for k in path:
        if isinstance(k, int):
            out += f"[{k}]"
        elif re.fullmatch(r"[\w\-]+", k):
            out += f".{k}" if out else k
        else:
            out += f"[{_show(k)}]"
    return out


def _show(value: Any, limit: int = 120) -> str:
    """``value`` on one line as the config spells it (``true``, ``null``, ``'text'``), cut to ``limit`` characters."""
    if value is None or isinstance(value, bool):
        text = "null" if value is None else str(value).lower()
    else:
        text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


# ---------------------------------------------------------------------- the data a run trained on
RESUME_DATA_FIX = "resume it with the data it was trained on, or start a new run (without trainer.resume)"


def data_fingerprint(data: MultiModalData) -> dict[str, Any]:
    """The schema of the data a run trains on, as plain data (checkpoints store it as ``data_fingerprint``).

    Per modality: kind, shape, vocabulary size; per task: kind and size; and what the readers
    learned from the training split (:attr:`MultiModalData.learned`: class names, the statistics
    inputs and regression targets are standardised with, a digest of a vocabulary). The same
    weights mean something else on data whose classes are renamed or whose targets are scaled,
    although they load without complaint: :func:`check_fingerprint` compares.
    """
    learned = getattr(data, "learned", None) or {}
    # What was learned comes before the sizes: renamed classes are named, not only counted.
    return {
        "modalities": {m: {"kind": s.kind, **learned.get(f"modalities.{m}", {}), "shape": [int(d) for d in s.shape],
                           "vocab_size": s.vocab_size} for m, s in data.modalities.items()},
        "tasks": {t: {"kind": s.kind, **learned.get(f"tasks.{t}", {}), "dim": int(s.dim)}
                  for t, s in data.tasks.items()},
    }


SCHEMA_VERSION = 1  # of data_schema: bump when what it holds changes meaning


def data_schema(data: MultiModalData) -> dict[str, Any]:
    """What rebuilding the model and reading new rows need of the data, without the data (checkpoints store it
    as ``data_schema``; ``mtmm-predict`` reads it).

    Plain data only (the checkpoint loads with ``weights_only=True``): ``version``; ``modalities``: name ->
    the :class:`~mtmm_train.batch.ModalitySpec` fields (``shape``, ``kind``, ``vocab_size``, ``info``);
    ``tasks``: name -> the :class:`~mtmm_train.batch.TaskSpec` fields (``kind``, ``dim``); ``learned``
    (:attr:`MultiModalData.learned`, the fingerprint's part) and ``state`` (:attr:`MultiModalData.state`:
    each reader's full state, for ``Reader.read_with``), both keyed ``modalities.<name>`` or ``tasks.<name>``.
    Names keep the data's order.
    """
    keys = [f"modalities.{m}" for m in data.modalities] + [f"tasks.{t}" for t in data.tasks]
    learned, state = getattr(data, "learned", None) or {}, getattr(data, "state", None) or {}
    return {
        "version": SCHEMA_VERSION,
        "modalities": {m: {"shape": [int(d) for d in s.shape], "kind": str(s.kind),
                           "vocab_size": None if s.vocab_size is None else int(s.vocab_size), "info": _plain(s.info)}
                       for m, s in data.modalities.items()},
        "tasks": {t: {"kind": str(s.kind), "dim": int(s.dim)} for t, s in data.tasks.items()},
        "learned": {k: _plain(learned[k]) for k in keys if k in learned},
        "state": {k: _plain(state[k]) for k in keys if k in state},
    }


def schema_data(schema: Any, source: str) -> MultiModalData:
    """The :class:`MultiModalData` a :func:`data_schema` describes: specs, ``learned`` and ``state``, no splits.

    Raises:
        UserError: the schema is not one this version wrote (one line naming what is wrong).
    """
    from mtmm_train.batch import TASK_KINDS, ModalitySpec, TaskSpec
    from mtmm_train.data.base import MultiModalData

    def refuse(what: str) -> NoReturn:
        raise UserError(f"{source}: its data_schema {what}; it was not written by this version of mtmm-train: "
                        "predict with the version that trained it, or delete the checkpoint's data_schema entry "
                        "to rebuild the data from the stored config (needs the training data)")

    if not isinstance(schema, dict):
        refuse(f"is a {type(schema).__name__}, not a mapping")
    if schema.get("version") != SCHEMA_VERSION:
        refuse(f"has version {schema.get('version')!r}, this version reads {SCHEMA_VERSION}")
    groups = {}
    for group in ("modalities", "tasks", "learned", "state"):
        value = schema.get(group)
        if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
            refuse(f"has no '{group}' mapping of mappings")
        groups[group] = value
    modalities, tasks = {}, {}
    try:
        for m, d in groups["modalities"].items():
            shape = d["shape"]
            if not (isinstance(shape, list) and all(isinstance(x, int) and x > 0 for x in shape)):
                refuse(f"gives modality '{m}' the shape {shape!r}, not a list of sizes")
            vocab = d.get("vocab_size")
            if vocab is not None and not (isinstance(vocab, int) and vocab > 0):
                refuse(f"gives modality '{m}' the vocab_size {vocab!r}")
            info = d.get("info") or {}
            if not isinstance(info, dict):
                refuse(f"gives modality '{m}' the info {info!r}, not a mapping")
            modalities[m] = ModalitySpec(str(m), tuple(shape), str(d["kind"]), vocab, dict(info))
        for t, d in groups["tasks"].items():
            if d["kind"] not in TASK_KINDS or not (isinstance(d["dim"], int) and d["dim"] > 0):
                refuse(f"gives task '{t}' the kind {d['kind']!r} and size {d['dim']!r}")
            tasks[t] = TaskSpec(str(t), str(d["kind"]), d["dim"])
    except KeyError as e:
        refuse(f"lacks the entry {e}")
    if not modalities or not tasks:
        refuse("names no modality or no task")
    return MultiModalData(modalities, tasks, {}, groups["learned"], state=groups["state"])


def _plain(value: Any) -> Any:
    """``value`` as plain data that ``weights_only=True`` loads: tuples become lists, other objects their text."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def check_fingerprint(stored: dict[str, Any] | None, current: dict[str, Any], source: str, fix: str) -> None:
    """Refuse when the data now differs from the data the checkpoint was trained on.

    A checkpoint without a fingerprint (written before fingerprints existed) passes with a warning.

    Args:
        stored: the checkpoint's ``data_fingerprint`` (None: an older checkpoint).
        current: :func:`data_fingerprint` of the data now.
        source: the checkpoint, for messages (``checkpoint 'path'``).
        fix: the remedy ending the message.

    Raises:
        UserError: naming the first difference, e.g. ``task 'kind' classes were [a, b, c] at
            training, now [a, b, x]``.
    """
    if stored is None:
        log.warning("%s holds no fingerprint of its data (written by an older mtmm-train): not checking that the "
                    "data is the one it was trained on", source)
        return
    difference = fingerprint_difference(stored, current)
    if difference is not None:
        raise UserError(f"{source} was trained on other data: {difference}; {fix}")


def fingerprint_difference(stored: dict[str, Any], current: dict[str, Any]) -> str | None:
    """The first difference between two :func:`data_fingerprint` results, in words, or None.

    An entry that only one side has (written by another version) is not compared.
    """
    for group, word in (("modalities", "modality"), ("tasks", "task")):
        before, now = stored.get(group) or {}, current.get(group) or {}
        if list(before) != list(now):
            return f"{group} were {_listed(list(before))} at training, now {_listed(list(now))}"
        for name, entry in before.items():
            for key, was in entry.items():
                if key not in now[name]:
                    continue
                differs = _first_difference(was, now[name][key])
                if differs is not None:
                    index, a, b = differs
                    return f"{word} '{name}' {key}{index} {'were' if key.endswith('s') else 'was'} {a} at training, " \
                           f"now {b}"
    return None


def _first_difference(a: Any, b: Any) -> tuple[str, str, str] | None:
    """``(index, a, b)`` as text where ``a`` and ``b`` differ (floats within 1e-6 relative are equal)."""
    if isinstance(a, list) and isinstance(b, list):
        if len(a) == len(b) and all(isinstance(x, float) for x in a + b):  # statistics: name the element
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                if not _same(x, y):
                    return (f"[{i}]" if len(a) > 1 else ""), _text(x), _text(y)
            return None
        return None if len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True)) else \
            ("", _listed(a), _listed(b))
    return None if _same(a, b) else ("", _text(a), _text(b))


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and \
            math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12)
    return type(a) is type(b) and a == b


def _text(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def _listed(values: list[Any], limit: int = 8) -> str:
    shown = ", ".join(_text(v) for v in values[:limit])
    return f"[{shown}{', ...' if len(values) > limit else ''}]"
