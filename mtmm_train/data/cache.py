"""A disk cache of decoded datasets, keyed by the manifest's content and the preprocessing config.

Decoding thousands of images or audio clips takes minutes; loading the tensors back takes a
fraction of a second. The key hashes the manifest's bytes together with every setting that
changes the tensors (readers, splits; the seed only where it draws the split) and the path, size
and modification time of every file the manifest names, so editing any of them builds a new
entry. Entries are compact (images ``uint8``) and written atomically (a temporary file, fsync,
rename), so a reader never sees half an entry. A hit sets the entry's modification time to now, so
that ``mtmm-cache`` (:mod:`mtmm_train.cache_cli`) can tell when it was last used.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from mtmm_train import fileio
from mtmm_train.batch import ModalitySpec, TaskSpec
from mtmm_train.data.base import MultiModalData, TensorSplit

__all__ = ["CACHE_VERSION", "cache_key", "file_digest", "load_cached", "save_cached"]

log = logging.getLogger("mtmm_train")

# Bump when the decoding code changes what it produces (2: entries keep `learned`; 3: images as uint8,
# decoded by bit depth, EXIF-rotated; entries keep each sample's manifest row).
CACHE_VERSION = 3


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_key(content_digest: str, settings: dict[str, Any]) -> str:
    """A short hex key over the manifest's digest, the settings (as canonical JSON) and the version."""
    text = json.dumps({"v": CACHE_VERSION, "content": content_digest, "settings": settings}, sort_keys=True,
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def save_cached(path: Path, data: MultiModalData) -> None:
    """Write ``data`` to ``path`` atomically (a reader never sees half a file; a full disk leaves none).

    Raises:
        mtmm_train.fileio.WriteError: the entry could not be written.
    """
    payload = {
        "modalities": [asdict(s) for s in data.modalities.values()],
        "tasks": [asdict(s) for s in data.tasks.values()],
        "learned": data.learned,
        "state": data.state,  # entries written before readers kept their state lack it (loaded as {})
        "splits": {k: {"inputs": s.inputs, "present": s.present, "targets": s.targets, "labeled": s.labeled,
                       "rows": s.rows} for k, s in data.splits.items()},
    }
    fileio.save_torch(payload, path)


def load_cached(path: Path, mmap: bool = False) -> MultiModalData | None:
    """Load a cache entry, or None if there is none (or it is unreadable, e.g. cut short).

    None means the caller decodes the data and :func:`save_cached` writes it: so on a miss the
    cache folder is checked now, before minutes of decoding, not when the entry is written. A
    read-only cache folder that already holds the entry is fine.

    Args:
        path: the entry.
        mmap: memory-map the tensors instead of reading them (for data larger than memory:
            pages are read when a batch touches them).

    Raises:
        UserError: no entry, and the cache folder cannot take one (a file, read-only, ...).
    """
    if not path.is_file():
        fix = "point dataset.cache_dir (or MTMM_CACHE_DIR) at a writable folder"
        fileio.check_folder(path.parent, "the dataset cache folder", fix + (
            ", or pass dataset.cache=false" if path.parent.name == "files" else ""))
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # a truncated or foreign file: rebuild rather than fail
        log.warning("ignoring unreadable dataset cache %s (%s); rebuilding it", path, str(e).splitlines()[0][:120])
        return None
    with contextlib.suppress(OSError):  # "last used", for mtmm-cache prune (a read-only cache is fine)
        os.utime(path)
    modalities = {d["name"]: ModalitySpec(d["name"], tuple(d["shape"]), d["kind"], d["vocab_size"],
                                          d.get("info") or {})
                  for d in payload["modalities"]}
    tasks = {d["name"]: TaskSpec(d["name"], d["kind"], d["dim"]) for d in payload["tasks"]}
    splits = {k: TensorSplit(s["inputs"], s["present"], s["targets"], s["labeled"], s.get("rows"))
              for k, s in payload["splits"].items()}
    return MultiModalData(modalities, tasks, splits, payload.get("learned") or {}, state=payload.get("state") or {})
