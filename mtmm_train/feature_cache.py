"""The frozen-feature cache: a frozen encoder's outputs computed once per split, kept on disk, reused.

A frozen encoder (every parameter ``requires_grad=False``) whose modality is read without train-time
augmentation gives the same output for a sample at every epoch, and in every run that only changes
what comes after it (fusion, MTL architecture, balancer, heads, optimizer: a sweep). So
:func:`apply` runs it once over each split, in eval mode without gradients, writes the outputs
(pooled ``(N, D)``, or tokens ``(N, L, D)`` when ``fusion.wants_tokens``) as one ``.npy`` file per
split under ``<cache dir>/features/<key>/``, memory-maps them, puts them in the run's splits in
place of the modality's inputs, and adds the modality to :attr:`MultiModalModel.precomputed
<mtmm_train.model.MultiModalModel.precomputed>`, so the model takes them as the encoder's output.
The encoder stays in the model, frozen: checkpoints hold it, and ``mtmm-eval`` and ``mtmm-predict``
(which build a fresh model) run it on raw inputs.

The key (:func:`entry_key`) hashes everything the features depend on, so a change gives a new entry,
never a stale one: the encoder's config, a digest of its weights (parameters and buffers, after any
``init_from`` or pretrained load), the reader's config (the preprocessing), a digest of the modality's
decoded inputs and presence masks of every split (the data: a changed manifest, file or split
changes it), the modality's spec and what its reader learned (:func:`mtmm_train.checkpoint.data_fingerprint`),
the pooled/tokens choice and the precision. Rows without the modality are never encoded: their
features are zeros, and the fusion masks them.

Setting: ``model.feature_cache`` = ``auto`` (cache every eligible encoder) or ``off``; the folder is
``model.feature_cache_dir``, else ``dataset.cache_dir``, else ``$MTMM_CACHE_DIR``, else
``~/.cache/mtmm-train``.

For ``mtmm-cache`` (:mod:`mtmm_train.cache_cli`), each entry ``features/<key>/`` has a small description,
``feature-info/<key>.json`` (:func:`write_info`: the modality, the encoder's and reader's configs, the shapes;
not part of the key; outside ``features/``, which holds the entries alone), and a hit sets the entry folder's
modification time to now ("last used").
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from mtmm_train import distributed, fileio
from mtmm_train.checkpoint import data_fingerprint
from mtmm_train.data.base import MultiModalData, TensorSplit
from mtmm_train.errors import UserError

__all__ = ["FEATURE_CACHE_VERSION", "MODES", "apply", "augmented", "cache_folder", "entry_key", "frozen", "info_path",
           "tensor_digest", "weights_digest", "write_info"]

log = logging.getLogger("mtmm_train")

FEATURE_CACHE_VERSION = 1  # bump when what an entry holds changes
MODES = ("auto", "off")
# Settings of a dataset node that do not change the tensors (where they are stored, how they are loaded).
NOT_DATA = ("cache", "cache_dir", "mmap", "num_workers")


# ---------------------------------------------------------------------- eligibility
def frozen(encoder: nn.Module) -> bool:
    """True when the encoder has parameters and none of them trains (``requires_grad`` False).

    ``model.encoders.<m>.freeze`` (:mod:`mtmm_train.finetune`) freezes this way (and keeps the encoder in
    eval mode while the model trains, as the cache computes it); an encoder with ``unfreeze_at_epoch``, or
    partly frozen (a trainable projection or LoRA adapter on a frozen backbone), is not.
    """
    tuning = getattr(encoder, "fine_tuning", None)  # mtmm_train.finetune.FineTuning, where applied
    if tuning is not None and getattr(tuning, "unfreeze_at_epoch", None) is not None:
        return False  # trains from a later epoch on
    params = list(encoder.parameters())
    return bool(params) and not any(p.requires_grad for p in params)


def augmented(cfg: DictConfig, modality: str) -> bool:
    """True when the modality's reader augments its training inputs (a random transform per epoch).

    The reader's ``augment`` node (:mod:`mtmm_train.data.augment`) counts when its preset (after the
    run's ``augment.preset`` is filled in) or any of its settings differs from the preset ``none``;
    any other reader setting whose name contains ``augment`` counts when it is set (not null, false,
    ``none`` or empty).
    """
    node = OmegaConf.select(cfg, f"dataset.modalities.{modality}")
    if not isinstance(node, DictConfig):
        return False
    for key, value in node.items():
        if "augment" not in str(key):
            continue
        value = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        if isinstance(value, dict):
            if value.get("preset") is None:  # not filled in yet: the run's augment=none|light|strong
                value = {**value, "preset": OmegaConf.select(cfg, "augment.preset", default=None)}
            if augment_settings_active(value):
                return True
        elif value not in (None, False, "none", "off", "", [], 0):
            return True
    return False


def augment_settings_active(augment: dict[str, Any]) -> bool:
    """Whether an ``augment`` mapping (``preset``, ``device`` and settings) transforms anything."""
    given = dict(augment)
    if (given.pop("preset", None) or "none") != "none":
        return True
    given.pop("device", None)
    given = {k: v for k, v in given.items() if v is not None}  # null: the preset's value (none: no change)
    try:
        from mtmm_train.data.augment import SETTINGS
    except ImportError:  # no augmentation module: any setting counts
        return any(v not in (None, False, 0, 0.0, "none", []) for v in given.values())
    for known in SETTINGS.values():  # the kind whose settings these are
        if all(k in known for k in given):
            return any(known[k] != v for k, v in given.items())
    return bool(given)


# ---------------------------------------------------------------------- the key
def tensor_digest(h: Any, x: Tensor) -> None:
    """Feed ``x``'s dtype, shape and bytes (any dtype, any device) into the hash ``h``."""
    h.update(f"{x.dtype}{tuple(x.shape)}".encode())
    flat = x.detach().reshape(-1).contiguous().cpu()
    if flat.numel():
        h.update(memoryview(flat.view(torch.uint8).numpy()))


def weights_digest(module: nn.Module) -> str:
    """SHA-256 over the module's state dict (names, dtypes, shapes and bytes of parameters and buffers)."""
    h = hashlib.sha256()
    for name, value in module.state_dict().items():
        h.update(name.encode())
        if isinstance(value, Tensor):
            tensor_digest(h, value)
    return h.hexdigest()


def data_digest(splits: Mapping[str, Any], modality: str) -> str:
    """SHA-256 over one modality's data in every split: its inputs (or, for a streamed split, each file's
    path, size and modification time) and its presence mask."""
    h = hashlib.sha256()
    for name in sorted(splits):
        split = splits[name]
        h.update(name.encode())
        paths = getattr(split, "paths", {}).get(modality)
        if paths is not None:
            for path in paths:
                st = os.stat(path) if path is not None else None
                h.update(f"{path}|{st.st_size if st else ''}|{st.st_mtime_ns if st else ''}\n".encode())
        else:
            tensor_digest(h, tensors_of(split).inputs[modality])
        tensor_digest(h, split.present[modality])
    return h.hexdigest()


def tensors_of(split: Any) -> TensorSplit:
    """The :class:`TensorSplit` of a split (a streamed split keeps its in-memory columns in ``tensors``)."""
    return split.tensors if hasattr(split, "tensors") else split


def reader_settings(cfg: DictConfig, modality: str) -> Any:
    """The preprocessing: the modality's reader config, or, for a dataset without readers, its settings."""
    node = OmegaConf.select(cfg, f"dataset.modalities.{modality}")
    if node is None:
        node = OmegaConf.select(cfg, "dataset")
        if isinstance(node, DictConfig):
            return {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k not in NOT_DATA}
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def entry_key(cfg: DictConfig, modality: str, encoder: nn.Module, data: MultiModalData, tokens: bool,
              precision: str) -> str:
    """The entry's folder name: a hex digest of everything the features depend on (module docstring)."""
    from mtmm_train.finetune import KEYS  # fine-tuning settings: their effect on the weights is in the digest

    encoder_cfg = {k: v for k, v in OmegaConf.to_container(cfg.model.encoders[modality], resolve=True).items()
                   if k not in KEYS}
    fingerprint = data_fingerprint(data)["modalities"][modality]
    parts = {"v": FEATURE_CACHE_VERSION, "encoder": encoder_cfg, "weights": weights_digest(encoder),
             "reader": reader_settings(cfg, modality), "data": data_digest(data.splits, modality),
             "fingerprint": fingerprint, "tokens": tokens, "precision": precision}
    text = json.dumps(parts, sort_keys=True, default=str)
    return f"{modality}-{hashlib.sha256(text.encode()).hexdigest()[:20]}"


def cache_folder(cfg: DictConfig) -> Path:
    """``model.feature_cache_dir``, else ``dataset.cache_dir``, else ``$MTMM_CACHE_DIR``, else ``~/.cache/mtmm-train``;
    entries go under its ``features/``."""
    folder = OmegaConf.select(cfg, "model.feature_cache_dir") or OmegaConf.select(cfg, "dataset.cache_dir") \
        or os.environ.get("MTMM_CACHE_DIR") or "~/.cache/mtmm-train"
    return Path(str(folder)).expanduser() / "features"


INFO_FOLDER = "feature-info"  # beside features/: <cache dir>/feature-info/<entry name>.json


def info_path(folder: Path) -> Path:
    """The description of the entry ``folder`` (``<cache dir>/features/<name>``):
    ``<cache dir>/feature-info/<name>.json``."""
    return folder.parent.parent / INFO_FOLDER / f"{folder.name}.json"


def write_info(folder: Path, cfg: DictConfig, modality: str, tokens: bool, precision: str,
               shapes: dict[str, tuple[int, ...]]) -> None:
    """Describe the entry ``folder`` for ``mtmm-cache list``, once (best effort: a failure is only logged).

    Args:
        folder: the entry.
        cfg: the run's config (the encoder's config, without fine-tuning settings, and the reader's).
        modality: the modality.
        tokens: token features (else pooled).
        precision: ``trainer.precision``.
        shapes: split -> the shape of its features.
    """
    path = info_path(folder)
    if path.is_file():
        return
    from mtmm_train.finetune import KEYS

    encoder = {k: v for k, v in OmegaConf.to_container(cfg.model.encoders[modality], resolve=True).items()
               if k not in KEYS}
    info = {"v": FEATURE_CACHE_VERSION, "modality": modality, "encoder": encoder,
            "reader": reader_settings(cfg, modality), "tokens": tokens, "precision": precision,
            "shapes": {k: list(v) for k, v in shapes.items()}}
    try:
        with fileio.atomic_write(path, text=True) as f:
            f.write(json.dumps(info, sort_keys=True, default=str) + "\n")
    except OSError as e:  # a read-only cache still serves its entries
        log.debug("feature cache: could not describe %s (%s)", folder, e)


# ---------------------------------------------------------------------- computing and storing
@torch.no_grad()
def write_features(encoder: nn.Module, split: Any, modality: str, tokens: bool, path: Path, batch_size: int,
                   device: torch.device, autocast: contextlib.AbstractContextManager) -> tuple[int, ...]:
    """Encode the present rows of one split and write ``(N, D)`` or ``(N, L, D)`` float32 features to
    ``path`` (a ``.npy`` file) atomically: a memory-mapped temporary file, filled batch by batch,
    flushed, fsynced and renamed. Absent rows are never encoded; their rows stay zeros.

    The inputs are the split's evaluation batches (``split.batch(index)``: streamed files decoded,
    evaluation transforms applied), as the model would see them.

    Returns:
        The shape written.

    Raises:
        mtmm_train.fileio.WriteError: the file could not be written (names ``path``).
    """
    present = split.present[modality].detach().cpu()
    rows = present.nonzero().squeeze(1)
    probe = rows[:1] if rows.numel() else torch.zeros(1, dtype=torch.long)

    def encode(index: Tensor) -> Tensor:
        x = split.batch(index.to(split.present[modality].device)).inputs[modality].to(device, non_blocking=True)
        with autocast:
            out = encoder.tokens(x) if tokens else encoder(x)
        return out.float().cpu()

    first = encode(probe)
    shape = (len(present), *first.shape[1:])
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
        for start in range(0, rows.numel(), batch_size):
            index = rows[start:start + batch_size]
            out[index.numpy()] = encode(index).numpy()
        out.flush()
        del out
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        raise fileio.WriteError(e.errno, e.strerror or str(e), str(path)) from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return shape


def load_features(path: Path) -> Tensor | None:
    """The features at ``path``, memory-mapped (copy-on-write: never written back); None if missing or unreadable."""
    if not path.is_file():
        return None
    try:
        return torch.from_numpy(np.load(path, mmap_mode="c"))
    except (OSError, ValueError) as e:  # cut short or foreign: compute again
        log.warning("feature cache: ignoring unreadable %s (%s); computing it again", path, str(e)[:120])
        return None


def cached_split(split: Any, modality: str, features: Tensor) -> Any:
    """``split`` with ``modality``'s inputs replaced by ``features`` (on the split's device) and its reader's
    per-sample transforms and decoding dropped (the features already went through them)."""
    if hasattr(split, "tensors"):  # streamed: the features join the columns held in memory
        keep = [m for m in split.readers if m != modality]
        return dataclasses.replace(split, tensors=cached_split(split.tensors, modality, features),
                                   paths={m: split.paths[m] for m in keep}, readers={m: split.readers[m] for m in keep},
                                   shapes={m: split.shapes[m] for m in keep},
                                   columns={m: c for m, c in split.columns.items() if m != modality})
    device = split.present[modality].device
    changes: dict[str, Any] = {"inputs": {**split.inputs, modality: features if device.type == "cpu"
                                          else features.to(device)}}
    readers = getattr(split, "readers", None)
    if readers:
        changes["readers"] = {m: r for m, r in readers.items() if m != modality} or None
    return dataclasses.replace(split, **changes)


# ---------------------------------------------------------------------- the one call of the recipe
def apply(cfg: DictConfig, model: nn.Module, data: MultiModalData, splits: dict[str, TensorSplit],
          device: torch.device, precision: str, batch_size: int) -> dict[str, TensorSplit]:
    """Serve every eligible encoder's outputs from the cache (computing missing entries); return the splits.

    Eligible: ``model.feature_cache=auto``, the encoder :func:`frozen`, its modality not
    :func:`augmented`. For each, the run's splits get the features in place of the inputs,
    ``data.splits`` too (the raw inputs are dropped from memory), and ``model.precomputed`` the
    modality. Under torchrun, rank 0 writes a missing entry and the other ranks wait, then read it.

    Args:
        cfg: the run's config.
        model: the built model (weights final: pretrained, ``init_from`` and ``freeze`` applied).
        data: the data on the host (its splits are hashed and updated).
        splits: the run's splits (on the device, or on the host when streamed).
        device: where the encoders run.
        precision: ``trainer.precision`` (the features are computed under its autocast).
        batch_size: rows per encoder call (``trainer.eval_batch_size``).

    Returns:
        The run's splits, with the cached modalities replaced.

    Raises:
        UserError: ``model.feature_cache`` is not one of :data:`MODES`.
    """
    from mtmm_train.builders import autocast_for  # local: builders imports the model

    mode = str(OmegaConf.select(cfg, "model.feature_cache", default="auto"))
    if mode not in MODES:
        raise UserError(f"model.feature_cache must be one of {', '.join(MODES)}, found '{mode}'; use "
                        "model.feature_cache=auto (cache frozen encoders) or off")
    if mode == "off":
        return splits
    tokens = bool(getattr(model.fusion, "wants_tokens", False))
    dist = distributed.info()
    for m, encoder in model.encoders.items():
        if not frozen(encoder):
            continue
        if augmented(cfg, m):
            log.info("feature cache: model.encoders.%s is frozen but dataset.modalities.%s augments its training "
                     "inputs; encoding them at every step", m, m)
            continue
        folder = cache_folder(cfg) / entry_key(cfg, m, encoder, data, tokens, precision)
        paths = {name: folder / f"{name}.npy" for name in splits}
        if dist.is_main and not all(p.is_file() for p in paths.values()):
            fileio.check_folder(folder.parent, "the feature cache folder", "point model.feature_cache_dir (or "
                                "MTMM_CACHE_DIR) at a writable folder, or set model.feature_cache=off")
        start, computed = time.perf_counter(), []
        was_training = encoder.training
        encoder.eval()
        try:
            for name, path in paths.items():
                if dist.is_main and load_features(path) is None:
                    write_features(encoder, data.splits[name], m, tokens, path, batch_size, device,
                                   autocast_for(precision, device))
                    computed.append(name)
        finally:
            encoder.train(was_training)
        distributed.barrier()  # the other ranks read what rank 0 wrote
        size, shapes = 0, {}
        for name, path in paths.items():
            features = load_features(path)
            if features is None:
                raise UserError(f"feature cache entry {path} could not be read after it was written; check the "
                                "folder (model.feature_cache_dir), or set model.feature_cache=off")
            size += path.stat().st_size
            shapes[name] = tuple(features.shape)
            splits[name] = cached_split(splits[name], m, features)
            if data.splits.get(name) is not None:
                data.splits[name] = cached_split(data.splits[name], m, features)
        model.precomputed.add(m)
        shape = tuple(splits["train"].inputs[m].shape[1:])
        if dist.is_main:  # "last used" and a description, for mtmm-cache
            with contextlib.suppress(OSError):
                os.utime(folder)
            write_info(folder, cfg, m, tokens, precision, shapes)
        if computed:
            log.info("feature cache: model.encoders.%s is frozen; computed its %s outputs %s for %s in %.1f s, "
                     "wrote %.1f MB to %s", m, "token" if tokens else "pooled", shape, ", ".join(computed),
                     time.perf_counter() - start, size / 1e6, folder)
        else:
            log.info("feature cache: model.encoders.%s is frozen; reading its %s outputs %s from %s (%.1f MB)",
                     m, "token" if tokens else "pooled", shape, folder, size / 1e6)
    return splits
