"""Your own multi-modal dataset from one manifest file (CSV, Parquet or JSONL) and a config: no code.

One row per sample. The config maps columns to modalities (``reader`` configs: image, audio,
text, numeric, array) and to tasks (``target`` configs: label, binary, multilabel,
regression); an empty cell is a missing modality or a missing label. Everything is checked
before anything is decoded, decoding runs in DataLoader workers, and the decoded tensors are
cached on disk (see :mod:`mtmm_train.data.cache`).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from mtmm_train.data.base import MultiModalData, TensorSplit
from mtmm_train.data.cache import cache_key, file_digest, load_cached, save_cached
from mtmm_train.data.manifest import Table, check_manifest_path, delimiter_hint, is_empty, read_manifest
from mtmm_train.data.readers.base import (
    MAX_LISTED,
    UNSEEN_POLICIES,
    ModalityReader,
    ReadContext,
    ReadResult,
    TargetReader,
    check_finite,
    check_scalar_cells,
    resolve,
)
from mtmm_train.data.splits import SPLITS, assign_splits
from mtmm_train.errors import UserError, check
from mtmm_train.instantiate import build, located

__all__ = ["build_readers", "files", "from_frame", "from_table"]

log = logging.getLogger("mtmm_train")


def files(manifest: str | None, modalities: dict[str, Any], tasks: dict[str, Any], format: str = "auto",
          split_column: str | None = None, split_ratios: list[float] = (0.8, 0.1, 0.1), seed: int = 0,
          unseen_classes: str = "error", cache: bool = True, cache_dir: str = "~/.cache/mtmm-train",
          mmap: bool = False, num_workers: int = 2, delimiter: str = "auto", encoding: str = "utf-8") -> MultiModalData:
    """Read, check, decode (or load from the cache) a manifest dataset.

    Args:
        manifest: the manifest file; relative paths in it start from its folder.
        modalities: modality name -> reader config (``_target_`` and settings).
        tasks: task name -> target config.
        format: ``auto`` (from the suffix), ``csv``, ``parquet`` or ``jsonl``.
        split_column: a column of ``train``/``val``/``test``; null: split by ``split_ratios``.
        split_ratios: train, val and test fractions, drawn with ``seed``.
        seed: seed of the ratio split.
        unseen_classes: a class seen outside the training split only: ``error`` or ``ignore``
            (a missing label).
        cache: keep the decoded tensors in ``cache_dir`` and reuse them.
        cache_dir: the cache folder.
        mmap: memory-map the cached tensors instead of reading them into memory (with
            ``loader=dataloader`` for data larger than memory).
        num_workers: DataLoader workers that decode files.
        delimiter: a CSV's delimiter: ``auto`` (detected among ``, ; tab |``) or the character
            (``tab`` for a tab).
        encoding: the text encoding of a CSV or JSONL manifest (``utf-8``, ``latin-1``, ...); a
            UTF-8 byte-order mark is skipped.

    Returns:
        The data, with splits ``train``, ``val`` and (when it has rows) ``test``.

    Raises:
        UserError: on any problem with the config, the manifest or the files it names.
    """
    check(manifest is not None, "dataset.manifest is not set; point it to your CSV, Parquet or JSONL file, e.g. "
          "dataset.manifest=data/manifest.csv")
    path = Path(str(manifest)).expanduser().resolve()
    check_manifest_path(path, manifest)
    check(unseen_classes in UNSEEN_POLICIES, f"dataset.unseen_classes must be one of {', '.join(UNSEEN_POLICIES)}, "
          f"found '{unseen_classes}'")
    check(isinstance(num_workers, int) and num_workers >= 0,
          f"dataset.num_workers must be an integer >= 0, found {num_workers!r}")
    mod_readers = build_readers(modalities, "modalities", ModalityReader)
    task_readers = build_readers(tasks, "tasks", TargetReader)

    table = read_manifest(path, format, delimiter, encoding)
    settings = {"format": format, "modalities": modalities, "tasks": tasks, "split_column": split_column,
                "split_ratios": list(split_ratios), "seed": seed, "unseen_classes": unseen_classes}
    if (delimiter, encoding) != ("auto", "utf-8"):  # only when set: the default keeps existing cache entries
        settings.update(delimiter=delimiter, encoding=encoding)
    if cache:  # the files the manifest names count too: an image edited in place builds a new entry
        settings["files"] = media_digest(table, path.parent, {**mod_readers, **task_readers})
    entry = Path(cache_dir).expanduser() / "files" / f"{path.stem}-{cache_key(file_digest(path), settings)}.pt"
    if cache:
        data = load_cached(entry, mmap=mmap)
        if data is not None:
            log.info("dataset: loaded %s from the cache %s", path.name, entry)
            return data
    data = from_table(table, path.parent, mod_readers, task_readers, split_column, list(split_ratios), seed,
                      unseen_classes, num_workers, manifest=path)
    if cache:
        save_cached(entry, data)
        log.info("dataset: decoded %s and cached it in %s", path.name, entry)
        if mmap:  # hand back the memory-mapped copy, as a later run would get
            return load_cached(entry, mmap=True) or data
    return data


def build_readers(nodes: dict[str, Any], group: str, base: type) -> dict[str, Any]:
    """Build each reader of ``dataset.<group>`` from its config, naming it in any error."""
    target_group = "reader" if group == "modalities" else "target"
    check(isinstance(nodes, dict) and len(nodes) > 0,
          f"dataset.{group} is empty; map at least one column, e.g. +{target_group}@dataset.{group}.NAME="
          f"{'image' if group == 'modalities' else 'label'} dataset.{group}.NAME.column=COLUMN")
    readers = {}
    for name, node in nodes.items():
        key = f"dataset.{group}.{name}"
        check(isinstance(node, dict) and "_target_" in node,
              f"{key} must choose a reader, found {node!r}; e.g. +{target_group}@{key}="
              f"{'image' if group == 'modalities' else 'label'}")
        unset = [f"{key}.{k}" for k, v in node.items() if v == "???"]
        check(not unset, f"{', '.join(unset)} has no value; set it, e.g. {unset[0] if unset else ''}=...")
        reader = build(OmegaConf.create(node), key, name=name)
        check(isinstance(reader, base), f"{key} builds a {type(reader).__name__}, which is not a "
              f"{base.__name__}; choose one of the {target_group} configs")
        readers[name] = reader
    return readers


def from_table(table: Table, root: Path, modalities: dict[str, ModalityReader], tasks: dict[str, TargetReader],
               split_column: str | None, split_ratios: list[float], seed: int, unseen_classes: str = "error",
               num_workers: int = 0, manifest: Path | None = None) -> MultiModalData:
    """Turn a table (a manifest, or a data frame's columns) into :class:`MultiModalData`.

    Args:
        table: column -> one value per row.
        root: the folder relative paths start from.
        modalities: modality name -> its reader.
        tasks: task name -> its target reader.
        split_column, split_ratios, seed, unseen_classes, num_workers: as in :func:`files`.
        manifest: the file the table was read from, for messages.

    Raises:
        UserError: missing columns, missing files, bad splits, or what a reader refuses.
    """
    readers: dict[str, ModalityReader | TargetReader] = {**{f"modalities.{k}": r for k, r in modalities.items()},
                                                        **{f"tasks.{k}": r for k, r in tasks.items()}}
    absent = [(key, c) for key, r in readers.items() for c in r.columns() if c not in table]
    if absent:
        listed = "; ".join(f"dataset.{key} reads column '{c}'" for key, c in absent)
        raise UserError(f"{listed}, which the manifest does not have; its columns: {', '.join(table)}"
                        f"{delimiter_hint(list(table), [c for _, c in absent])}")
    num_rows = len(next(iter(table.values())))
    split = assign_splits(table, num_rows, split_column, split_ratios, seed)
    check_files(table, root, readers, manifest)

    ctx = ReadContext(root, split, num_workers, unseen_classes, manifest)
    columns: dict[str, ReadResult] = {}
    for key, r in readers.items():
        with located(f"dataset.{key}"):
            columns[key] = r.read(table, ctx)
    for key, r in readers.items():  # e.g. NaN inside a .npy file, or statistics that overflowed
        with located(f"dataset.{key}"):
            check_finite(columns[key], table[r.columns()[0]] if r.reads_files else None)
    present = torch.stack([columns[f"modalities.{m}"].present for m in modalities], 1)  # (N, M)
    keep = present.any(1)
    if not keep.all():
        log.warning("dataset: dropping %d of %d rows that have none of the modalities %s", int((~keep).sum()),
                    num_rows, ", ".join(modalities))
    splits = {}
    for i, name in enumerate(SPLITS):
        rows = ((split == i) & keep).nonzero().squeeze(1)
        if len(rows) == 0:
            check(name == "test", f"dataset: the '{name}' split has no row with any modality; give it samples")
            continue
        take = {key: (c.values.index_select(0, rows), c.present.index_select(0, rows)) for key, c in columns.items()}
        splits[name] = TensorSplit({m: take[f"modalities.{m}"][0] for m in modalities},
                                   {m: take[f"modalities.{m}"][1] for m in modalities},
                                   {t: take[f"tasks.{t}"][0] for t in tasks},
                                   {t: take[f"tasks.{t}"][1] for t in tasks})
    for t in tasks:
        for name in ("train", "val"):
            check(bool(splits[name].labeled[t].any()), f"dataset.tasks.{t}: the '{name}' split has no label for it; "
                  "fill its column or change the split")
    data = MultiModalData({m: columns[f"modalities.{m}"].spec for m in modalities},
                          {t: columns[f"tasks.{t}"].spec for t in tasks}, splits,
                          {key: c.learned for key, c in columns.items()})
    log.info("dataset: %s rows (%s); modalities %s; tasks %s", num_rows,
             ", ".join(f"{k} {len(s)}" for k, s in splits.items()),
             ", ".join(f"{m} {s.kind}{list(s.shape)}" for m, s in data.modalities.items()),
             ", ".join(f"{t} {s.kind}({s.dim})" for t, s in data.tasks.items()))
    return data


def media_digest(table: Table, root: Path, readers: dict[str, ModalityReader | TargetReader]) -> str:
    """SHA-256 over the path, size and modification time of every file the manifest names.

    Stat-only (like ``make``): cheap for many files, and an edit in place changes the time.
    A missing file counts as missing here; :func:`check_files` reports it when decoding.
    """
    h = hashlib.sha256()
    for r in readers.values():
        if not r.reads_files:
            continue
        for v in (v for c in r.columns() if c in table for v in table[c]):
            if is_empty(v):
                continue
            try:
                st = resolve(root, v).stat()
                h.update(f"{v}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            except OSError:
                h.update(f"{v}\0missing\n".encode())
    return h.hexdigest()


def check_files(table: Table, root: Path, readers: dict[str, ModalityReader | TargetReader],
                manifest: Path | None = None) -> None:
    """Fail, before decoding anything, if files named by the manifest do not exist (or are folders)."""
    problems = []
    for key, r in readers.items():
        for column in r.columns() if r.reads_files else []:
            with located(f"dataset.{key}"):
                check_scalar_cells(table[column], column, "a file path", manifest)
            cells = [v for v in table[column] if not is_empty(v)]
            paths = [resolve(root, v) for v in cells]
            folders = [p for p in paths if p.is_dir()]
            if folders:
                listed = ", ".join(str(p) for p in folders[:MAX_LISTED])
                raise UserError(f"dataset.{key} (column '{column}'): {len(folders)} of {len(cells)} paths are "
                                f"directories, e.g. {listed}; give a file in each cell (or empty the cell)")
            missing = [p for p in paths if not p.is_file()]
            if missing:
                listed = ", ".join(str(p) for p in missing[:MAX_LISTED])
                problems.append(f"dataset.{key} (column '{column}'): {len(missing)} of {len(cells)} files not "
                                f"found, e.g. {listed}")
    if problems:
        raise UserError(f"{'; '.join(problems)}; paths are relative to the manifest's folder {root}; fix them, or "
                        "empty the cells of samples that lack the file")


def from_frame(frame: Any, modalities: dict[str, Any], tasks: dict[str, Any], split_ratios: list[float],
               seed: int, unseen_classes: str = "error") -> MultiModalData:
    """A pandas data frame with reader configs -> :class:`MultiModalData` (the built-in tables use it).

    Args:
        frame: the data frame (one row per sample; NaN is an empty cell).
        modalities: modality name -> reader config, as in :func:`files`.
        tasks: task name -> target config.
        split_ratios, seed, unseen_classes: as in :func:`files`.
    """
    table = {str(c): frame[c].tolist() for c in frame.columns}
    return from_table(table, Path.cwd(), build_readers(modalities, "modalities", ModalityReader),
                      build_readers(tasks, "tasks", TargetReader), None, list(split_ratios), seed, unseen_classes)
