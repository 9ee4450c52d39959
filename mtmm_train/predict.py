"""``mtmm-predict``: a trained model's predictions for the rows of a new manifest, streamed in chunks.

    mtmm-predict checkpoint=logs/runs/<time>/checkpoints/best.pt dataset.manifest=new.csv output=pred.csv

The model is rebuilt from its checkpoint alone (:func:`mtmm_train.evaluate.load_run` with ``from_schema``:
the specs of its modalities and tasks and its readers' state are stored in it, ``data_schema``), so the
training data is not needed. The new manifest needs the columns of the modalities the model reads (target
columns are not needed; an empty cell is a missing modality) and is read ``chunk_rows`` rows at a time, each
chunk through the training run's readers with the state they learned from the training split (a vocabulary,
standardisation statistics: :meth:`~mtmm_train.data.readers.base.Reader.read_with`). So memory holds one
chunk, never the whole new manifest.

A checkpoint written before ``data_schema`` existed has its training data rebuilt from the stored config
(the training manifest and its files must be where training read them). A reader whose state the
checkpoint lacks (its data came from a dataset cache entry written before readers kept their state) reads
the training rows of its own columns before each chunk's, as in training, and its result is checked
against the checkpoint's.

The output (CSV or Parquet, from ``output``'s suffix) has one row per input row: the id (``id_column``, or
``row``: the row number from 1), then per task its prediction (the class name of a class label, the label
set of a multi-label task joined by its separator, the value in the column's own units for regression)
and, for classification, each class's probability ``<task>/p_<class>``. A row with none of the modalities
gets empty cells.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import MISSING, OmegaConf

from mtmm_train import fileio
from mtmm_train.commands import run_command
from mtmm_train.data.base import apply_transforms
from mtmm_train.data.files import build_readers, check_files
from mtmm_train.data.manifest import (
    Table,
    _check_header,
    _codec,
    _delimiter,
    check_manifest_path,
    csv_rows,
    jsonl_rows,
    manifest_format,
    read_manifest,
    sniff_delimiter,
)
from mtmm_train.data.readers.base import ModalityReader, ReadContext, resolve
from mtmm_train.data.splits import assign_splits
from mtmm_train.errors import UserError, check
from mtmm_train.evaluate import CheckpointRun, load_run
from mtmm_train.instantiate import located

log = logging.getLogger("mtmm_train")

FILES_DATASET = "mtmm_train.data.files.files"
OUTPUT_FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
TEST = 2  # the split id the new rows get: read as evaluation rows (no learning, no training augmentation)


@dataclass
class NewManifest:
    """``dataset.*`` of ``mtmm-predict``: the new rows.

    Attributes:
        manifest: the CSV, Parquet or JSONL file (relative paths in it start from its folder).
        format: ``auto`` (from the suffix), ``csv``, ``parquet`` or ``jsonl``.
        delimiter: of a CSV; null: the training manifest's setting.
        encoding: of a CSV or JSONL file; null: the training manifest's setting.
    """

    manifest: str = MISSING
    format: str = "auto"
    delimiter: str | None = None
    encoding: str | None = None


@dataclass
class PredictConfig:
    """Settings of ``mtmm-predict`` (``key=value`` on the command line).

    Attributes:
        checkpoint: the ``.pt`` file written by ``mtmm-train``.
        dataset: the new manifest (:class:`NewManifest`).
        output: the predictions file, ``.csv`` or ``.parquet``; null: ``<manifest stem>.predictions.csv``
            next to the manifest.
        id_column: a column of the manifest copied first into the output; null: ``row``, the row number from 1.
        chunk_rows: manifest rows read, decoded and predicted at a time (bounds the memory).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        batch_size: samples per forward pass; null: the checkpoint's ``trainer.eval_batch_size``.
        allow_foreign_targets: as in ``mtmm-eval`` (trusted checkpoints only).
    """

    checkpoint: str = MISSING
    dataset: NewManifest = field(default_factory=NewManifest)
    output: str | None = None
    id_column: str | None = None
    chunk_rows: int = 4096
    device: str = "auto"
    batch_size: int | None = None
    allow_foreign_targets: bool = False


# ---------------------------------------------------------------------- reading the new manifest in chunks
def manifest_columns(path: Path, fmt: str, delimiter: str | None, codec: str) -> list[str]:
    """The column names of a manifest, without reading its rows (JSONL: every key of every line, one pass)."""
    if fmt == "csv":
        with path.open(newline="", encoding=codec) as f:
            header = next(csv.reader(f, delimiter=delimiter or sniff_delimiter(path, codec)), None)
        check(bool(header), f"dataset.manifest '{path}' is empty; it needs a header row with the column names")
        _check_header(path, header)
        return list(header)
    if fmt == "parquet":
        return list(_parquet_file(path).schema_arrow.names)
    names: dict[str, None] = {}
    for _, rows in _jsonl_chunks(path, codec, 1 << 16):
        for row in rows:
            names.update(dict.fromkeys(row))
    return list(names)


def iter_manifest(path: Path, chunk_rows: int, format: str = "auto", delimiter: str = "auto",
                  encoding: str = "utf-8") -> Iterator[Table]:
    """Yield the manifest's rows as tables of at most ``chunk_rows`` rows, in order; concatenated, the
    same cells as :func:`mtmm_train.data.manifest.read_manifest` (CSV: strings; JSONL: a key a line lacks
    is None; Parquet: the column's values).

    Raises:
        UserError: as :func:`~mtmm_train.data.manifest.read_manifest` (a missing or malformed file).
    """
    check_manifest_path(path)
    fmt, codec, sep = manifest_format(path, format), _codec(encoding), _delimiter(delimiter)
    names = manifest_columns(path, fmt, sep, codec)
    if fmt == "parquet":
        for batch in _parquet_file(path).iter_batches(batch_size=chunk_rows):
            yield batch.to_pydict()
    elif fmt == "jsonl":
        for _, rows in _jsonl_chunks(path, codec, chunk_rows):
            yield {n: [row.get(n) for row in rows] for n in names}
    else:
        yield from _csv_chunks(path, sep or sniff_delimiter(path, codec), codec, names, chunk_rows)


def _parquet_file(path: Path) -> Any:
    from mtmm_train.data.optional import require

    pq = require("pyarrow.parquet", "data", "reading a Parquet manifest", package="pyarrow")
    try:
        return pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises its own error types for corrupt files
        raise UserError(f"dataset.manifest '{path}' could not be read as Parquet: {' '.join(str(e).split())[:200]}") \
            from None


def _jsonl_chunks(path: Path, codec: str, chunk_rows: int) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    rows: list[dict[str, Any]] = []
    line_num = 0
    for line_num, row in jsonl_rows(path, codec):
        rows.append(row)
        if len(rows) == chunk_rows:
            yield line_num, rows
            rows = []
    if rows:
        yield -1, rows


def _csv_chunks(path: Path, sep: str, codec: str, header: list[str], chunk_rows: int) -> Iterator[Table]:
    rows = csv_rows(path, sep, codec)
    next(rows)  # the header, already read
    table: Table = {n: [] for n in header}
    for row in rows:
        for name, value in zip(header, row, strict=True):
            table[name].append(value)
        if len(table[header[0]]) == chunk_rows:
            yield table
            table = {n: [] for n in header}
    if table[header[0]]:
        yield table


# ---------------------------------------------------------------------- the readers, applied to new rows
class Predictor:
    """Turns tables of new rows into prediction columns, with the model and readers of a checkpoint.

    Args:
        run: the checkpoint's model and data (:func:`~mtmm_train.evaluate.load_run`).
        root: the folder that relative paths in the new rows start from.

    Attributes:
        rows_read: the number of new rows each reader call read, in order (a test bounds it by the chunk).

    Raises:
        UserError: the model was not trained on a manifest dataset, or its training manifest is gone.
    """

    def __init__(self, run: CheckpointRun, root: Path) -> None:
        self.run, self.root = run, root
        ds = OmegaConf.to_container(run.config.dataset, resolve=True)
        check(ds.get("_target_") == FILES_DATASET, f"mtmm-predict reads new rows through the readers of a manifest "
              f"dataset (dataset=files), but this checkpoint was trained on {ds.get('_target_')}; train on a "
              "manifest to predict for new rows")
        self.dataset = ds
        self.readers: dict[str, ModalityReader] = build_readers(
            {m: ds["modalities"][m] for m in run.data.modalities}, "modalities", ModalityReader)
        self.targets = {t: ds["tasks"][t] for t in run.data.tasks}
        # Each reader reads with the state it learned in training (from the checkpoint's schema, or the data
        # rebuilt for an older checkpoint). One that learned something without a state at hand (data from an
        # older dataset cache entry) learns it again from the training rows, which are read for it.
        self.state: dict[str, dict[str, Any]] = {m: run.data.state.get(f"modalities.{m}") or {} for m in self.readers}
        self.learns = [m for m in self.readers if run.data.learned.get(f"modalities.{m}") and not self.state[m]]
        if self.learns:
            log.info("mtmm-predict: the checkpoint holds no state of the reader(s) of %s: reading the training "
                     "manifest's rows for what they learned", ", ".join(self.learns))
        self.train_rows = self._training_rows() if self.learns else {}
        self.checked: set[str] = set()
        self.rows_read: list[int] = []

    def columns(self, available: list[str]) -> list[str]:
        """The columns of a manifest with columns ``available`` that the model's readers need."""
        return list(dict.fromkeys(c for m in self.readers for c in self.reader_columns(m, available)))

    def reader_columns(self, modality: str, available: list[str]) -> list[str]:
        """The columns one modality's reader reads: those its state names (globs and ranges expanded in
        training), else its config's, expanded over ``available``."""
        stored = self.state[modality].get("columns")
        return [str(c) for c in stored] if isinstance(stored, list) else \
            self.readers[modality].columns_in(available)

    def _training_rows(self) -> Table:
        """The training split's cells of the columns the learning readers read (file paths made absolute)."""
        ds = self.dataset
        path = Path(str(ds["manifest"])).expanduser().resolve()
        check(path.is_file(), f"the training manifest '{path}' is gone; mtmm-predict needs its training rows for "
              f"what the readers of {', '.join(self.learns)} learned from them (vocabulary, statistics)")
        table = read_manifest(path, ds.get("format", "auto"), ds.get("delimiter", "auto"), ds.get("encoding", "utf-8"))
        num_rows = len(next(iter(table.values())))
        # The training rows as files.from_table draws them (a validation carve-out stratified on the first
        # classification task's column).
        carve = {}
        if ds.get("val_fraction") is not None:
            first = next((n for n in ds["tasks"].values() if str(n.get("_target_", "")).endswith(
                ("ClassLabel", "BinaryLabel"))), None)
            carve = {"val_fraction": ds["val_fraction"],
                     "strata": table[first.get("column") or next(k for k, v in ds["tasks"].items() if v is first)]
                     if first is not None else None}
        split = assign_splits(table, num_rows, ds.get("split_column"), list(ds.get("split_ratios", (0.8, 0.1, 0.1))),
                              int(ds.get("seed", 0)), **carve)
        keep = (split == 0).tolist()
        out: Table = {}
        for m in self.learns:
            reader = self.readers[m]
            for c in reader.columns_in(list(table)):
                cells = [v for v, k in zip(table[c], keep, strict=True) if k]
                out[c] = [str(resolve(path.parent, v)) if reader.reads_files and v not in (None, "") else v
                          for v in cells]
        return out

    def inputs(self, table: Table) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The model's inputs and presence masks for the rows of ``table`` (one chunk)."""
        n = len(next(iter(table.values())))
        ds = self.dataset
        check_files(table, self.root, {f"modalities.{m}": r for m, r in self.readers.items()}, None)
        inputs, present = {}, {}
        for m, reader in self.readers.items():
            key = f"modalities.{m}"
            cols = self.reader_columns(m, list(table))
            if m in self.learns:  # the training rows first: the reader learns from them as in training
                part = {c: self.train_rows[c] + list(table[c]) for c in cols}
                n_train = len(self.train_rows[cols[0]])
            else:
                part, n_train = {c: table[c] for c in cols}, 0
            split = torch.cat([torch.zeros(n_train, dtype=torch.long), torch.full((n,), TEST, dtype=torch.long)])
            ctx = ReadContext(self.root, split, int(ds.get("num_workers", 0)), "ignore", None)
            self.rows_read.append(n)
            with located(f"dataset.{key}"):
                result = reader.read_with(part, ctx, self.state[m]) if self.state[m] else reader.read(part, ctx)
            if key not in self.checked:
                expect = self.run.data.learned.get(key, {})
                check(same(result.learned, expect), f"dataset.{key}: the reader learned other values from the training "
                      "rows than the checkpoint holds (was the training manifest edited?); predict with the data "
                      "the model was trained on")
                spec = self.run.data.modalities[m]
                check(tuple(result.spec.shape) == tuple(spec.shape), f"dataset.{key}: the new rows give inputs of "
                      f"shape {list(result.spec.shape)}, the model reads {list(spec.shape)}")
                self.checked.add(key)
            inputs[m], present[m] = result.values[n_train:], result.present[n_train:]
        # The readers' evaluation transforms (e.g. a video's frame choice), as evaluation applies them.
        evaluated = {m: r for m, r in self.readers.items() if r.sample_transform(train=False) is not None}
        if evaluated:
            apply_transforms(inputs, present, torch.arange(n), evaluated, int(self.run.config.get("seed") or 0), None)
        return inputs, present

    @torch.no_grad()
    def predict(self, table: Table) -> dict[str, list[Any]]:
        """The prediction columns (``<task>``, ``<task>/p_<class>``, ...) for the rows of ``table``."""
        inputs, present = self.inputs(table)
        n = len(next(iter(present.values())))
        run, dev = self.run, next(self.run.model.parameters()).device
        outs: dict[str, list[torch.Tensor]] = {t: [] for t in run.tasks}
        for start in range(0, n, run.batch_size):
            x = {m: v[start:start + run.batch_size].to(dev) for m, v in inputs.items()}
            p = {m: v[start:start + run.batch_size].to(dev) for m, v in present.items()}
            with run.autocast:
                preds, _ = run.model(x, p)
            for t in run.tasks:
                outs[t].append(preds[t].float().cpu())
        anything = torch.stack(list(present.values()), 1).any(1).tolist()
        columns: dict[str, list[Any]] = {}
        for t, task in run.tasks.items():
            raw = torch.cat(outs[t]) if outs[t] else torch.zeros(0, task.out_dim)
            columns.update(self.task_columns(t, task.spec.kind, raw.reshape(n, -1), anything))
        return columns

    def task_columns(self, t: str, kind: str, raw: torch.Tensor, valid: list[bool]) -> dict[str, list[Any]]:
        """One task's columns from its head's outputs ``(N, K)``; None where ``valid`` is False."""
        learned, node = self.run.data.learned.get(f"tasks.{t}", {}), self.targets[t]

        def masked(values: list[Any]) -> list[Any]:
            return [v if ok else None for v, ok in zip(values, valid, strict=True)]

        if kind == "multiclass":
            classes, probs = learned["classes"], raw.softmax(1)
            out = {t: masked([classes[i] for i in probs.argmax(1).tolist()])}
            out.update({f"{t}/p_{c}": masked(probs[:, i].tolist()) for i, c in enumerate(classes)})
            return out
        if kind == "binary":
            classes = learned["classes"]
            positive = learned.get("positive") or classes[1]
            negative = next(c for c in classes if c != positive)
            p = raw[:, 0].sigmoid()
            out = {t: masked([positive if v >= 0.5 else negative for v in p.tolist()])}
            out.update({f"{t}/p_{c}": masked((p if c == positive else 1 - p).tolist()) for c in classes})
            return out
        if kind == "multilabel":
            labels, probs = learned["labels"], raw.sigmoid()
            sep = str(node.get("separator", "|"))
            sets = [sep.join(c for c, v in zip(labels, row, strict=True) if v >= 0.5) or "[]"
                    for row in probs.tolist()]
            out = {t: masked(sets)}
            out.update({f"{t}/p_{c}": masked(probs[:, i].tolist()) for i, c in enumerate(labels)})
            return out
        # regression: back to the column's units (the reader standardised, maybe after a log)
        mean = torch.tensor(learned.get("mean", [0.0] * raw.shape[1]), dtype=torch.float64)
        std = torch.tensor(learned.get("std", [1.0] * raw.shape[1]), dtype=torch.float64)
        y = raw.double() * std + mean
        if node.get("log"):
            y = y.exp()
        cols = node.get("columns") or [t]
        cols = [cols] if isinstance(cols, str) else list(cols)
        if len(cols) == 1:
            return {t: masked(y[:, 0].tolist())}
        return {f"{t}/{c}": masked(y[:, i].tolist()) for i, c in enumerate(cols)}


def same(a: Any, b: Any) -> bool:
    """Equal learned state, floats to 1e-9 relative: statistics summed over another number of rows (the
    training rows and a chunk, not the whole manifest) may differ in their last bits."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


# ---------------------------------------------------------------------- writing
class Output:
    """Writes the prediction rows chunk by chunk to a CSV or Parquet file (replaced only when complete)."""

    def __init__(self, path: Path) -> None:
        self.path, self.format = path, OUTPUT_FORMATS.get(path.suffix.lower())
        check(self.format is not None, f"output is '{path}', whose suffix names no format; use one of "
              f"{', '.join(OUTPUT_FORMATS)}, e.g. output=predictions.csv")
        self.names: list[str] | None = None
        self._file = self._cm = self._csv = self._parquet = None

    def __enter__(self) -> Output:
        self._cm = fileio.atomic_write(self.path, text=self.format == "csv")
        self._file = self._cm.__enter__()
        return self

    def write(self, columns: dict[str, list[Any]]) -> None:
        """Append one chunk's rows (``columns``: name -> one value per row; the same names every time)."""
        if self.names is None:
            self.names = list(columns)
            if self.format == "csv":
                self._csv = csv.writer(self._file)
                self._csv.writerow(self.names)
        if self.format == "csv":
            rows = zip(*(columns[n] for n in self.names), strict=True)
            self._csv.writerows(["" if v is None else v for v in row] for row in rows)
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({n: columns[n] for n in self.names})
        if self._parquet is None:
            self._parquet = pq.ParquetWriter(self._file, table.schema)
        self._parquet.write_table(table.cast(self._parquet.schema))

    def __exit__(self, *exc: Any) -> None:
        if self._parquet is not None:
            self._parquet.close()
        self._cm.__exit__(*exc)


def default_output(manifest: str) -> Path:
    """``<manifest folder>/<manifest stem>.predictions.csv``."""
    path = Path(manifest).expanduser()
    return path.with_name(f"{path.stem}.predictions.csv")


def predict(cfg: PredictConfig) -> Path:
    """Write the predictions for every row of ``cfg.dataset.manifest``; returns the output file.

    Raises:
        UserError: a bad setting, checkpoint or manifest (columns the model needs that it lacks).
    """
    check(isinstance(cfg.chunk_rows, int) and cfg.chunk_rows >= 1,
          f"chunk_rows must be an integer >= 1, found {cfg.chunk_rows!r}; e.g. chunk_rows=4096")
    new = Path(str(cfg.dataset.manifest)).expanduser().resolve()
    check_manifest_path(new, cfg.dataset.manifest)
    out = Path(cfg.output).expanduser() if cfg.output else default_output(str(new))
    check(out.resolve() != new, f"output is '{cfg.output}', the manifest itself; write the predictions elsewhere")
    Output(out)  # check the suffix before the model is built
    log.info("mtmm-predict: %s on %s, %d rows at a time, into %s", cfg.checkpoint, new, cfg.chunk_rows, out)
    run = load_run(cfg.checkpoint, cfg.device, cfg.batch_size, cfg.allow_foreign_targets, move_splits=False,
                   from_schema=True)
    predictor = Predictor(run, new.parent)
    ds = predictor.dataset
    fmt, delimiter = cfg.dataset.format, cfg.dataset.delimiter or ds.get("delimiter", "auto")
    encoding = cfg.dataset.encoding or ds.get("encoding", "utf-8")
    names = manifest_columns(new, manifest_format(new, fmt), _delimiter(delimiter), _codec(encoding))
    lacking = [c for c in predictor.columns(names) if c not in names]
    if lacking:
        reads = "; ".join(f"{k} reads '{c}'" for k in predictor.readers for c in predictor.reader_columns(k, names)
                          if c in lacking)
        raise UserError(f"dataset.manifest '{cfg.dataset.manifest}' lacks the column(s) {', '.join(lacking)} that the "
                        f"model was trained on (modality {reads}); its columns: {', '.join(names)}; add them (empty "
                        "cells are missing modalities; target columns are not needed)")
    check(cfg.id_column is None or cfg.id_column in names, f"id_column is '{cfg.id_column}', which the manifest "
          f"lacks; its columns: {', '.join(names)}; or id_column=null for the row number")
    rows, without = 0, 0
    with Output(out) as writer:
        for chunk in iter_manifest(new, cfg.chunk_rows, fmt, delimiter, encoding):
            n = len(next(iter(chunk.values())))
            ids = {cfg.id_column: chunk[cfg.id_column]} if cfg.id_column else {"row": list(range(rows + 1,
                                                                                             rows + n + 1))}
            columns = predictor.predict(chunk)
            without += sum(v is None for v in next(iter(columns.values())))
            writer.write({**ids, **columns})
            rows += n
            log.info("mtmm-predict: %d rows", rows)
    if without:
        log.warning("mtmm-predict: %d of %d rows have none of the modalities %s: their predictions are empty",
                    without, rows, ", ".join(predictor.readers))
    log.info("mtmm-predict: wrote %d rows to %s", rows, out)
    return out


# ---------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: ``mtmm-predict key=value ...``."""
    run_command("mtmm-predict", predict, PredictConfig, ("checkpoint", "dataset.manifest"),
                "checkpoint=logs/runs/<time>/checkpoints/best.pt dataset.manifest=new.csv output=pred.csv", argv)


if __name__ == "__main__":
    main()


__all__ = ["NewManifest", "PredictConfig", "Predictor", "iter_manifest", "main", "predict"]
