"""Your own multi-modal dataset from one manifest file (CSV, Parquet or JSONL) and a config: no code.

One row per sample. The config maps columns to modalities (``reader`` configs: image, audio,
text, numeric, array) and to tasks (``target`` configs: label, binary, multilabel,
regression); an empty cell is a missing modality or a missing label. Everything is checked
before anything is decoded. ``storage`` says where the decoded data lives: ``memory`` (decoded
once in DataLoader workers, cached on disk, see :mod:`mtmm_train.data.cache`), ``cache`` (the
same entry, memory-mapped and streamed) or ``stream`` (image, audio and array files decoded per
sample when a batch is made, in the loader's workers: :class:`~mtmm_train.data.base.FileSplit`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from mtmm_train.data.base import STORAGES, FileSplit, MultiModalData, TensorSplit
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
    present_of,
    resolve,
    where,
)
from mtmm_train.data.readers.binary import BinaryLabel
from mtmm_train.data.readers.label import ClassLabel
from mtmm_train.data.splits import SPLITS, assign_splits
from mtmm_train.errors import ComponentError, UserError, check
from mtmm_train.instantiate import build, located

__all__ = ["build_readers", "files", "from_frame", "from_table"]

log = logging.getLogger("mtmm_train")


def files(manifest: str | None, modalities: dict[str, Any], tasks: dict[str, Any], format: str = "auto",
          split_column: str | None = None, split_ratios: list[float] = (0.8, 0.1, 0.1), seed: int = 0,
          unseen_classes: str = "error", cache: bool = True, cache_dir: str = "~/.cache/mtmm-train",
          mmap: bool = False, num_workers: int = 2, delimiter: str = "auto", encoding: str = "utf-8",
          val_fraction: float | None = None, storage: str = "memory") -> MultiModalData:
    """Read, check, decode (or load from the cache) a manifest dataset.

    Args:
        manifest: the manifest file; relative paths in it start from its folder.
        modalities: modality name -> reader config (``_target_`` and settings).
        tasks: task name -> target config.
        format: ``auto`` (from the suffix), ``csv``, ``parquet`` or ``jsonl``.
        split_column: a column of ``train``/``val``/``test``; null: split by ``split_ratios``.
        split_ratios: train, val and test fractions, drawn with ``seed``.
        seed: seed of the ratio split, and of the per-sample transforms.
        unseen_classes: a class seen outside the training split only: ``error`` or ``ignore``
            (a missing label).
        cache: keep the decoded tensors in ``cache_dir`` and reuse them (``storage`` memory or cache).
        cache_dir: the cache folder.
        mmap: the older spelling of ``storage=cache`` (memory-map the cached tensors).
        num_workers: DataLoader workers that decode files (up front, or per batch when streaming).
        delimiter: a CSV's delimiter: ``auto`` (detected among ``, ; tab |``) or the character
            (``tab`` for a tab).
        encoding: the text encoding of a CSV or JSONL manifest (``utf-8``, ``latin-1``, ...); a
            UTF-8 byte-order mark is skipped.
        val_fraction: when the split column (or the ratios) gives no validation row, this fraction of
            the training rows becomes the validation split, stratified on the first classification
            task and drawn with ``seed``; null: never (:func:`mtmm_train.data.splits.carve_val`).
        storage: ``memory`` (decode everything once, hold it in memory; the default), ``stream``
            (decode image, audio and array files per sample, in the loader's workers; nothing is
            cached) or ``cache`` (decode once into the disk cache, memory-map it, and stream it).

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
    check(storage in STORAGES, f"dataset.storage must be one of {', '.join(STORAGES)}, found '{storage}'")
    if mmap and storage == "memory":
        storage = "cache"  # the older spelling
    check(cache or storage != "cache", "dataset.storage=cache memory-maps the disk cache, but dataset.cache=false; "
          "set dataset.cache=true, or use dataset.storage=stream (no cache)")
    mod_readers = build_readers(modalities, "modalities", ModalityReader)
    task_readers = build_readers(tasks, "tasks", TargetReader)

    table = read_manifest(path, format, delimiter, encoding)
    with keep_random_state():  # reading never moves the random streams the model is then built from
        data = _decode_or_load(path, table, mod_readers, task_readers, storage, cache, cache_dir, {
            "format": format, "modalities": modalities, "tasks": tasks, "split_column": split_column,
            "split_ratios": list(split_ratios), "seed": seed, "unseen_classes": unseen_classes,
            "delimiter": delimiter, "encoding": encoding, "val_fraction": val_fraction, "num_workers": num_workers})
    data.storage = storage
    return data


@contextlib.contextmanager
def keep_random_state() -> Iterator[None]:
    """Restore torch's (CPU), NumPy's and Python's global random states on exit.

    Reading the data must not change what a run draws next: a run that decoded its data and one
    that loaded it from the cache then initialise the same model (DataLoader iteration, for one,
    draws its workers' base seed from torch's global generator).
    """
    states = torch.get_rng_state(), np.random.get_state(), random.getstate()
    try:
        yield
    finally:
        torch.set_rng_state(states[0])
        np.random.set_state(states[1])
        random.setstate(states[2])


def _decode_or_load(path: Path, table: Table, mod_readers: dict[str, ModalityReader],
                    task_readers: dict[str, TargetReader], storage: str, cache: bool, cache_dir: str,
                    args: dict[str, Any]) -> MultiModalData:
    """:func:`files` after its checks: stream, or load from the cache, or decode (and cache); ``args``: its others."""
    split_column, split_ratios, seed = args["split_column"], args["split_ratios"], args["seed"]
    unseen_classes, num_workers, val_fraction = args["unseen_classes"], args["num_workers"], args["val_fraction"]
    delimiter, encoding = args["delimiter"], args["encoding"]
    if storage == "stream":  # the files are the data: nothing to cache
        return from_table(table, path.parent, mod_readers, task_readers, split_column, split_ratios, seed,
                          unseen_classes, num_workers, manifest=path, val_fraction=val_fraction, stream=True)
    # The key covers exactly what changes the tensors: the seed only where it draws rows (ratios, val_fraction).
    settings = {k: args[k] for k in ("format", "modalities", "tasks", "split_column", "unseen_classes")}
    # Train-time augmentation runs after the cache, and a cached image is decoded on the host whatever its
    # reader's decode (host|device) says: changing either reuses the decoded tensors.
    settings["modalities"] = {m: {k: v for k, v in node.items() if k not in ("augment", "decode")}
                              if isinstance(node, dict) else node for m, node in settings["modalities"].items()}
    if split_column is None:
        settings.update(split_ratios=split_ratios, seed=seed)
    if (delimiter, encoding) != ("auto", "utf-8"):  # only when set: the default keeps existing cache entries
        settings.update(delimiter=delimiter, encoding=encoding)
    if val_fraction is not None:  # likewise
        settings.update(val_fraction=val_fraction, seed=seed)
    if cache:  # the files the manifest names count too: an image edited in place builds a new entry
        settings["files"] = media_digest(table, path.parent, {**mod_readers, **task_readers})
    entry = Path(cache_dir).expanduser() / "files" / f"{path.stem}-{cache_key(file_digest(path), settings)}.pt"
    mmap = storage == "cache"
    if cache:
        data = load_cached(entry, mmap=mmap)
        if data is not None:
            log.info("dataset: loaded %s from the cache %s (%s)", path.name, entry, megabytes(entry))
            return with_transforms(data, mod_readers, seed)
    data = from_table(table, path.parent, mod_readers, task_readers, split_column, split_ratios, seed,
                      unseen_classes, num_workers, manifest=path, val_fraction=val_fraction)
    if cache:
        save_cached(entry, data)
        log.info("dataset: decoded %s and cached it in %s (%s)", path.name, entry, megabytes(entry))
        if mmap:  # hand back the memory-mapped copy, as a later run would get
            return with_transforms(load_cached(entry, mmap=True) or data, mod_readers, seed)
    return data


def megabytes(path: Path) -> str:
    """A file's size for the log, e.g. ``12.3 MB``."""
    try:
        return f"{path.stat().st_size / 1e6:.1f} MB"
    except OSError:
        return "size unknown"


def transform_readers(readers: dict[str, ModalityReader]) -> dict[str, ModalityReader] | None:
    """The modality readers that have a per-sample transform (training or evaluation); None if none has."""
    out = {m: r for m, r in readers.items()
           if r.sample_transform(train=True) is not None or r.sample_transform(train=False) is not None}
    return out or None


def with_transforms(data: MultiModalData, readers: dict[str, ModalityReader], seed: int) -> MultiModalData:
    """Give each split (e.g. loaded from the cache) the readers' per-sample transforms and the seed."""
    chosen = transform_readers(readers)
    for split in data.splits.values():
        target = split.tensors if isinstance(split, FileSplit) else split
        target.readers, target.seed = chosen, seed
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
               num_workers: int = 0, manifest: Path | None = None, val_fraction: float | None = None,
               stream: bool = False) -> MultiModalData:
    """Turn a table (a manifest, or a data frame's columns) into :class:`MultiModalData`.

    Args:
        table: column -> one value per row.
        root: the folder relative paths start from.
        modalities: modality name -> its reader.
        tasks: task name -> its target reader.
        split_column, split_ratios, seed, unseen_classes, num_workers, val_fraction: as in :func:`files`.
        manifest: the file the table was read from, for messages.
        stream: keep the modalities whose readers stream (image, audio, array files) as paths, decoded
            per sample when a batch is made (:class:`FileSplit`); the others are read in full.

    Raises:
        UserError: missing columns, missing files, bad splits, or what a reader refuses.
    """
    readers: dict[str, ModalityReader | TargetReader] = {**{f"modalities.{k}": r for k, r in modalities.items()},
                                                        **{f"tasks.{k}": r for k, r in tasks.items()}}
    with_columns = list(table)
    for key, r in readers.items():  # globs and ranges name the manifest's columns
        with located(f"dataset.{key}"):
            r.columns_in(with_columns)
    absent = [(key, c) for key, r in readers.items() for c in r.columns_in(with_columns) if c not in table]
    if absent:
        listed = "; ".join(f"dataset.{key} reads column '{c}'" for key, c in absent)
        raise UserError(f"{listed}, which the manifest does not have; its columns: {', '.join(table)}"
                        f"{delimiter_hint(list(table), [c for _, c in absent])}")
    num_rows = len(next(iter(table.values())))
    first_class = next((r for r in tasks.values() if isinstance(r, ClassLabel | BinaryLabel)), None)
    strata = table[first_class.column] if first_class is not None else None  # stratifies dataset.val_fraction
    split = assign_splits(table, num_rows, split_column, split_ratios, seed, val_fraction, strata)
    check_files(table, root, readers, manifest)

    ctx = ReadContext(root, split, num_workers, unseen_classes, manifest)
    streamed = {f"modalities.{m}" for m, r in modalities.items() if stream and r.streams}
    columns: dict[str, ReadResult] = {}
    for key, r in readers.items():
        with located(f"dataset.{key}"):
            columns[key] = probe(r, table, ctx) if key in streamed else r.read(table, ctx)
    for key, r in readers.items():  # e.g. NaN inside a .npy file, or statistics that overflowed
        if key in streamed:
            continue
        with located(f"dataset.{key}"):
            check_finite(columns[key], table[r.columns_in(list(table))[0]] if r.reads_files else None)
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
        take = {key: (None if key in streamed else c.values.index_select(0, rows), c.present.index_select(0, rows))
                for key, c in columns.items()}
        tensors = TensorSplit({m: take[f"modalities.{m}"][0] for m in modalities if f"modalities.{m}" not in streamed},
                              {m: take[f"modalities.{m}"][1] for m in modalities},
                              {t: take[f"tasks.{t}"][0] for t in tasks},
                              {t: take[f"tasks.{t}"][1] for t in tasks}, rows.clone(),
                              transform_readers(modalities), seed)
        splits[name] = tensors if not streamed else file_split(tensors, table, root, modalities, columns, streamed,
                                                               rows, manifest)
    for t in tasks:
        for name in ("train", "val"):
            check(bool(splits[name].labeled[t].any()), f"dataset.tasks.{t}: the '{name}' split has no label for it; "
                  "fill its column or change the split")
    data = MultiModalData({m: columns[f"modalities.{m}"].spec for m in modalities},
                          {t: columns[f"tasks.{t}"].spec for t in tasks}, splits,
                          {key: c.learned for key, c in columns.items()},
                          state={key: c.state for key, c in columns.items()})
    log.info("dataset: %s rows (%s); modalities %s; tasks %s", num_rows,
             ", ".join(f"{k} {len(s)}" for k, s in splits.items()),
             ", ".join(f"{m} {s.kind}{list(s.shape)}" for m, s in data.modalities.items()),
             ", ".join(f"{t} {s.kind}({s.dim})" for t, s in data.tasks.items()))
    return data


def probe(reader: ModalityReader, table: Table, ctx: ReadContext) -> ReadResult:
    """A streamed modality without decoding it: its presence from the cells, its spec from one file.

    The reader reads a one-row table of the first present cell, which gives the spec (shape, kind,
    info) and what it learned; ``values`` holds that one decoded sample (its shape and dtype).

    Raises:
        ComponentError: no cell holds a path, or the probed file cannot be decoded (naming its row).
    """
    column = reader.columns_in(list(table))[0]
    cells = table[column]
    present = present_of(cells)
    if not present.any():
        raise ComponentError(f"column '{column}' has no paths; fill it or remove the modality")
    first = int(present.nonzero()[0])
    try:
        reader.decode(resolve(ctx.root, cells[first]))
    except Exception as e:
        raise ComponentError(f"{resolve(ctx.root, cells[first])} ({where(column, first, ctx.manifest)}) could not be "
                             f"decoded: {type(e).__name__}: {' '.join(str(e).split())[:160]}; fix or replace the file, "
                             "or empty the cell") from None
    one = ReadContext(ctx.root, ctx.split[first:first + 1], 0, ctx.unseen_classes, ctx.manifest)
    result = reader.read({c: [table[c][first]] for c in reader.columns_in(list(table))}, one)
    return ReadResult(result.values, present, result.spec, result.learned, result.state)


def file_split(tensors: TensorSplit, table: Table, root: Path, modalities: dict[str, ModalityReader],
               columns: dict[str, ReadResult], streamed: set[str], rows: torch.Tensor,
               manifest: Path | None) -> FileSplit:
    """A :class:`FileSplit` of the manifest ``rows``: the streamed modalities' paths, the rest as tensors."""
    names = [m for m in modalities if f"modalities.{m}" in streamed]
    cols = {m: modalities[m].columns_in(list(table))[0] for m in names}
    paths = {m: [None if is_empty(table[cols[m]][i]) else str(resolve(root, table[cols[m]][i])) for i in rows.tolist()]
             for m in names}
    shapes = {m: (tuple(columns[f"modalities.{m}"].values.shape[1:]), columns[f"modalities.{m}"].values.dtype)
              for m in names}
    return FileSplit(tensors, paths, {m: modalities[m] for m in names}, shapes, cols,
                     str(manifest) if manifest is not None else None)


def media_digest(table: Table, root: Path, readers: dict[str, ModalityReader | TargetReader]) -> str:
    """SHA-256 over the path, size and modification time of every file the manifest names.

    Stat-only (like ``make``): cheap for many files, and an edit in place changes the time.
    A missing file counts as missing here; :func:`check_files` reports it when decoding.
    """
    h = hashlib.sha256()
    for r in readers.values():
        if not r.reads_files:
            continue
        for v in (v for c in r.columns_in(list(table)) if c in table for v in table[c]):
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
        for column in r.columns_in(list(table)) if r.reads_files else []:
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
