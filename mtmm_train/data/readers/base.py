"""The reader contract: turn manifest columns into one tensor per row, with a presence mask and a spec.

Modality readers (image, audio, text, numeric, array) produce inputs; target readers (class
labels, binary, multi-label, numeric) produce task targets. Readers that learn something from
the data (a vocabulary, classes, statistics) learn it from the training split only.

A reader is built from its config with its modality's or task's ``name``; :meth:`Reader.columns`
says which manifest columns it needs, and :meth:`Reader.read` returns everything it produces at
once (:class:`ReadResult`: values, presence mask, spec and what it learned), so nothing about a
reader is valid only after another call. Readers do not know where they sit in the config: they
raise :class:`~mtmm_train.errors.ComponentError` (:class:`~mtmm_train.errors.SettingError` about
one of their settings), and the dataset names the key (``dataset.modalities.photo``) with
:func:`mtmm_train.instantiate.located`.

Learning and applying. A reader that learns from the training split (numeric statistics, a word
vocabulary, classes, labels) returns two records of it in its :class:`ReadResult`:

* ``learned``: a short summary (a vocabulary as its size and a digest), part of the data's
  fingerprint and of cache keys; it never changes meaning, so old checkpoints and caches still match;
* ``state``: everything needed to read other rows the same way, as plain data (lists, mappings,
  text, numbers: it goes into checkpoints loaded with ``weights_only=True``), e.g. ``{"columns": [...],
  "mean": [...], "std": [...]}`` or ``{"words": [...]}`` (the vocabulary in id order). Empty for a
  reader that learns nothing.

:meth:`Reader.read_with` reads rows with a stored ``state`` instead of learning it: the split in the
context is not consulted, and the result (values, spec, ``learned``, ``state``) equals, bit for bit,
what :meth:`Reader.read` gave those rows when it learned that state. ``mtmm-predict`` reads new rows
so, from the checkpoint alone. The base class's :meth:`Reader.read_with` reads as :meth:`Reader.read`
when ``state`` is empty, so a reader that learns nothing needs nothing more; one that learns must
return its ``state`` and override :meth:`Reader.read_with`.
"""

from __future__ import annotations

import fnmatch
import hashlib
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from mtmm_train.batch import ModalitySpec, TaskSpec
from mtmm_train.data.manifest import Table, is_empty
from mtmm_train.errors import ComponentError, SettingError

UNSEEN_POLICIES = ("error", "ignore")
MAX_LISTED = 3  # problems named in an error message; the rest are counted


@dataclass
class ReadContext:
    """What every reader needs besides its own settings.

    Attributes:
        root: the folder that relative paths start from (the manifest's).
        split: ``(N,)`` split id of each row (0 train, 1 val, 2 test).
        num_workers: DataLoader worker processes for decoding files (0: in this process).
        unseen_classes: ``error`` or ``ignore`` (as a missing label) for a class seen
            outside the training split only.
        manifest: the manifest file (None: a data frame), named in messages about a cell.
    """

    root: Path
    split: Tensor
    num_workers: int = 0
    unseen_classes: str = "error"
    manifest: Path | None = None

    @property
    def train(self) -> Tensor:
        """``(N,)`` bool: the training rows."""
        return self.split == 0


S = TypeVar("S", ModalitySpec, TaskSpec)


@dataclass
class ReadResult(Generic[S]):
    """What :meth:`Reader.read` returns: the data of every row, and what it is.

    Attributes:
        values: ``(N, *shape)``; rows without a value (an empty cell) hold zeros.
        present: ``(N,)`` bool: False where the value is missing (a missing modality or label).
        spec: the modality's :class:`~mtmm_train.batch.ModalitySpec` or the task's
            :class:`~mtmm_train.batch.TaskSpec`.
        learned: what the reader learned from the training split, as plain data (:func:`learned`);
            part of the data's fingerprint.
        state: what :meth:`Reader.read_with` needs to read other rows as these were read (the full
            vocabulary, the statistics, the classes), as plain data; empty when nothing was learned.
    """

    values: Tensor
    present: Tensor
    spec: S
    learned: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)


class Reader(Generic[S]):
    """Base of all readers.

    Args:
        name: the modality or task name (passed in by the dataset).
        column: the manifest column to read; null: the column named like the modality or task.
    """

    reads_files = False  # True: the cells of columns() are file paths, checked to exist before decoding

    def __init__(self, name: str, column: str | None = None) -> None:
        self.name = name
        self.column = column or name

    def columns(self) -> list[str]:
        """The manifest columns this reader needs (checked to exist before :meth:`read`)."""
        return [self.column]

    def columns_in(self, available: list[str]) -> list[str]:
        """The columns this reader reads from a manifest whose columns are ``available``: :meth:`columns`,
        with column patterns expanded (:func:`expand_columns`) by readers that take several columns."""
        return self.columns()

    def read(self, table: Table, ctx: ReadContext) -> ReadResult[S]:
        """Read every row of ``table``: values, presence mask, spec and what was learned, together.

        Raises:
            ComponentError: a cell or a file the reader cannot use, or a setting that does not fit the data.
        """
        raise NotImplementedError

    def read_with(self, table: Table, ctx: ReadContext, state: dict[str, Any]) -> ReadResult[S]:
        """Read every row of ``table`` with a ``state`` that an earlier :meth:`read` returned, learning nothing.

        ``ctx.split`` is not used to learn (the rows need not include any training row); the result is
        what :meth:`read` gave the same rows when it learned ``state``.

        Args:
            table: the rows to read.
            ctx: the read context.
            state: :attr:`ReadResult.state` of the training run's :meth:`read`.

        Raises:
            ComponentError: as :meth:`read`, or ``state`` is not one this reader wrote.
        """
        if state:
            raise ComponentError(f"{type(self).__name__} cannot read with a stored state (it has keys "
                                 f"{', '.join(sorted(state))}); read the training rows with it instead")
        return self.read(table, ctx)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(column={self.column!r})"


class ModalityReader(Reader[ModalitySpec]):
    """A reader whose column is an input modality: :meth:`read` returns a :class:`ModalitySpec`.

    A file reader that also has a per-file ``decode(path) -> Tensor`` can stream
    (``dataset.storage=stream``): each sample is decoded when its batch is made, in DataLoader
    workers, instead of all at once by :meth:`read` (:attr:`streams`).
    """

    @property
    def streams(self) -> bool:
        """True: this reader decodes one file at a time (``decode(path)``), so its modality can stream."""
        return self.reads_files and callable(getattr(self, "decode", None))

    def sample_transform(self, train: bool) -> Callable[[Tensor, torch.Generator], Tensor] | None:
        """A per-sample transform applied to each present sample as its batch is made; None: none.

        The contract (docs/design.md, "Dataset"): called once per batch per modality, with
        ``train=True`` for training batches and ``train=False`` for evaluation (which must be
        deterministic). The callable takes one sample ``x`` (the modality's shape and dtype, e.g.
        ``(C, H, W)`` ``uint8``) and a ``torch.Generator`` seeded from ``(seed, epoch, manifest row)``
        only (:func:`mtmm_train.data.base.sample_seed`), draws every random number from that
        generator, and returns a tensor of the same shape and dtype. It runs in DataLoader workers
        when streaming, on the host (or the split's device in memory): it must be picklable.
        """
        return None


class TargetReader(Reader[TaskSpec]):
    """A reader whose column is the target of a task: :meth:`read` returns a :class:`TaskSpec`."""


def learned(classes: list[str] | None = None, labels: list[str] | None = None, positive: str | None = None,
            mean: Tensor | None = None, std: Tensor | None = None, vocab: dict[str, int] | None = None,
            tokenizer: str | None = None) -> dict[str, Any]:
    """What a reader learned from the training split, as plain data (:attr:`ReadResult.learned`).

    Args:
        classes, labels: class names (label and binary targets; multi-label targets).
        positive: the configured positive class of a binary target.
        mean, std: standardisation statistics.
        vocab: a word vocabulary (kept as its size and a digest).
        tokenizer: the pretrained tokenizer's name.
    """
    out: dict[str, Any] = {}
    for name, names in (("classes", classes), ("labels", labels)):
        if names:
            out[name] = [str(c) for c in names]
    if positive is not None:
        out["positive"] = str(positive)
    for name, value in (("mean", mean), ("std", std)):
        if isinstance(value, Tensor) and value.numel():
            out[name] = [float(v) for v in value.flatten().tolist()]
    if vocab:
        digest = hashlib.sha256("\n".join(f"{w}\t{i}" for w, i in vocab.items()).encode()).hexdigest()[:16]
        out["vocabulary"] = f"{len(vocab)} words, sha256 {digest}"
    if tokenizer is not None:
        out["tokenizer"] = str(tokenizer)
    return out


def state_entry(state: dict[str, Any], key: str, kind: type, reader: str) -> Any:
    """``state[key]``, checked to be a ``kind`` (e.g. ``list``): a stored state written by another reader or
    version is refused, not half applied.

    Raises:
        ComponentError: the key is missing or holds something else.
    """
    value = state.get(key)
    if not isinstance(value, kind):
        raise ComponentError(f"the stored state of this {reader} reader has no '{key}' {kind.__name__} "
                             f"(found {type(value).__name__}); it was written by another reader or version")
    return value


def float_state(state: dict[str, Any], key: str, size: int, reader: str) -> Tensor:
    """``state[key]``: ``size`` floats (statistics), as the float64 tensor they were learned as.

    Raises:
        ComponentError: missing, not numbers, or another length.
    """
    values = state_entry(state, key, list, reader)
    if len(values) != size or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        raise ComponentError(f"the stored state of this {reader} reader has {len(values)} '{key}' values for "
                             f"{size} columns; it was written for other columns")
    return torch.tensor([float(v) for v in values], dtype=torch.float64)


def class_names(state: dict[str, Any], reader: str, key: str = "classes") -> list[str]:
    """The stored class (or label) names of a target reader's state, checked.

    Raises:
        ComponentError: missing, not names, or a name twice.
    """
    names = state_entry(state, key, list, reader)
    if not all(isinstance(c, str) for c in names) or len(set(names)) != len(names):
        raise ComponentError(f"the stored '{key}' of this {reader} reader hold something other than names, or a "
                             "name twice; it was written by another reader or version")
    return list(names)


def present_of(cells: list[Any]) -> Tensor:
    """``(N,)`` bool: True where the cell is not empty."""
    return torch.tensor([not is_empty(v) for v in cells], dtype=torch.bool)


def resolve(root: Path, cell: Any) -> Path:
    """A path cell, relative to the manifest's folder unless absolute."""
    path = Path(str(cell).strip()).expanduser()
    return path if path.is_absolute() else root / path


class _Cells(Dataset):
    def __init__(self, paths: list[Path], fn: Callable[[Path], Tensor]) -> None:
        self.paths, self.fn = paths, fn

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Tensor | str:
        try:
            return self.fn(self.paths[i])
        except Exception as e:  # any decoder failure is reported per file, not raised in a worker
            return f"{type(e).__name__}: {' '.join(str(e).split())[:120]}"


def decode_files(paths: list[Path], fn: Callable[[Path], Tensor], ctx: ReadContext, what: str,
                 rows: list[int] | None = None, column: str | None = None) -> list[Tensor]:
    """Decode every file with ``fn`` in DataLoader workers; fail listing the unreadable ones.

    The DataLoader draws its workers' seeds from a generator of its own, so decoding leaves the
    global random state as it was (a run that decodes and one that loads the cache then build the
    same model).

    Args:
        paths: the files (already known to exist).
        fn: decodes one file into a tensor (must be picklable: a module-level function or a
            method of a picklable object).
        ctx: the read context (worker count).
        what: what the files should be, for messages (``"images"``).
        rows: the manifest row of each path (0-based), named in messages with ``column``.
        column: the manifest column of the paths.

    Returns:
        One tensor per path.

    Raises:
        ComponentError: some files could not be decoded (the first few named, all counted).
    """
    loader = DataLoader(_Cells(paths, fn), batch_size=64, num_workers=ctx.num_workers if len(paths) > 64 else 0,
                        collate_fn=list, generator=torch.Generator())
    # One file is little work: intra-op threads only add overhead (30x on a busy 2-core machine).
    # Workers run single-threaded anyway; do the same when decoding in this process.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out: list[Tensor | str] = [x for batch in loader for x in batch]
    finally:
        torch.set_num_threads(threads)
    bad = [(p, r, i) for i, (p, r) in enumerate(zip(paths, out, strict=True)) if isinstance(r, str)]
    if bad:
        listed = "; ".join(f"{p} ({where(column or 'path', rows[i], ctx.manifest) + ': ' if rows else ''}{r})"
                           for p, r, i in bad[:MAX_LISTED])
        raise ComponentError(f"{len(bad)} of {len(paths)} files could not be read as {what}: {listed}"
                             f"{' ...' if len(bad) > MAX_LISTED else ''}; fix or replace them, or empty those cells")
    return out  # type: ignore[return-value]


def stack_present(rows: list[Tensor | None], shape: tuple[int, ...],
                  dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """Stack per-row tensors of ``shape`` (None: absent, zeros): ``(values (N, *shape), present (N,))``."""
    values = torch.zeros(len(rows), *shape, dtype=dtype)
    present = torch.zeros(len(rows), dtype=torch.bool)
    for i, r in enumerate(rows):
        if r is not None:
            values[i] = r
            present[i] = True
    return values, present


def float_cells(cells: list[Any], column: str) -> Tensor:
    """Parse cells as floats (NaN where empty); fail on the first cell that is not a finite number.

    A cell that spells NaN or infinity (``nan``, ``inf``, ``1e999``, JSON ``Infinity``) is refused
    rather than read: NaN would silently become a missing value, and infinity would turn the
    training statistics, and then every loss, into NaN. A float NaN cell (pandas, Parquet) is empty.
    """
    out = []
    for i, v in enumerate(cells):
        if is_empty(v):
            out.append(float("nan"))
            continue
        try:
            x = float(v)
        except (TypeError, ValueError):
            raise ComponentError(f"column '{column}' row {i + 1} holds {v!r}, not a number; fix the cell or leave "
                                 "it empty (missing)") from None
        if not math.isfinite(x):
            raise ComponentError(f"column '{column}' row {i + 1} holds {v!r}, not a finite number; fix the cell or "
                                 "leave it empty (missing)")
        out.append(x)
    return torch.tensor(out, dtype=torch.float64)


def check_finite(result: ReadResult, rows: list[Any] | None = None) -> None:
    """Refuse NaN or infinite values in the rows a reader marked present (labelled).

    Args:
        result: what the reader returned.
        rows: the column's cells, to name the first bad one (a file path, for file readers).

    Raises:
        ComponentError: naming how many rows hold NaN or Inf, the first one and its cell.
    """
    if not result.values.is_floating_point():
        return
    bad = ~torch.isfinite(result.values.reshape(len(result.values), -1)).all(1) & result.present
    if not bad.any():
        return
    first = int(bad.nonzero()[0])
    cell = f" ({rows[first]!r})" if rows is not None else ""
    raise ComponentError(f"{int(bad.sum())} row(s) hold NaN or Inf values, the first is row {first + 1}{cell}; "
                         "fix the data there, or empty those cells (a missing value)")


def class_key(value: Any) -> str:
    """A class label as text: ``3``, ``3.0`` and ``"3"`` are one class; strings are stripped."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def sort_classes(names: set[str]) -> list[str]:
    """Classes in a stable order: numerically when all are integers, else alphabetically."""
    try:
        return sorted(names, key=int)
    except ValueError:
        return sorted(names)


def where(column: str, row: int, manifest: Path | None) -> str:
    """``column 'label' row 4 of '<manifest>'`` (``row`` counts data rows from 0; shown from 1)."""
    return f"column '{column}' row {row + 1}" + (f" of '{manifest}'" if manifest is not None else "")


def check_scalar_cells(cells: list[Any], column: str, what: str, manifest: Path | None = None) -> None:
    """Refuse a list (or another collection) where one value per cell is expected (Parquet, JSONL lists).

    Args:
        what: what a cell should hold, for the message (``a class label``).

    Raises:
        ComponentError: naming the first such cell.
    """
    for i, v in enumerate(cells):
        if isinstance(v, list | tuple | dict | set) or (hasattr(v, "__len__") and not isinstance(v, str | bytes)):
            text = " ".join(str(v).split())
            raise ComponentError(f"{where(column, i, manifest)} holds a list ({text[:60]}), not {what}; give one "
                                 "value per cell (label sets: use the multilabel target)")


# Cells that spell a missing value (pandas reads them as NaN); as a class they would silently be one.
NAN_LABELS = ("nan", "-nan", "+nan", "<na>")


def class_ids(cells: list[Any], ctx: ReadContext, column: str,
              classes: list[str] | None = None) -> tuple[list[str], Tensor, Tensor]:
    """Map class labels to ids, the classes taken from the training split (or given).

    An empty cell is a missing label; a cell that spells NaN (``NaN``, ``nan``, ``<NA>``) or holds
    infinity is refused rather than taken as a class named so, and so is a list.

    Args:
        classes: the classes, in id order, learned before (a stored state); None: learn them from
            the training split.

    Returns:
        ``(classes, ids (N,) long, labeled (N,) bool)``.

    Raises:
        ComponentError: a NaN or list cell, fewer than two classes in the training split, or
            (``unseen_classes=error``) a class seen outside the training split only.
    """
    check_scalar_cells(cells, column, "a class label", ctx.manifest)
    for i, v in enumerate(cells):
        if is_empty(v):
            continue
        infinite = isinstance(v, float) and math.isinf(v)
        if infinite or class_key(v).lower() in NAN_LABELS:  # "NaN" text, pandas' <NA>, a numpy float32 NaN
            raise ComponentError(f"{where(column, i, ctx.manifest)} holds {v!r}, which spells "
                                 f"{'infinity' if infinite else 'a missing value (NaN)'}, not a class; leave the cell "
                                 "empty for a missing label")
    keys = [None if is_empty(v) else class_key(v) for v in cells]
    if classes is None:
        train = ctx.train.tolist()
        classes = sort_classes({k for k, t in zip(keys, train, strict=True) if t and k is not None})
    if len(classes) < 2:
        raise ComponentError(f"column '{column}' has {len(classes)} class(es) in the training split "
                             f"({', '.join(classes) or 'no labels'}); a task needs at least two: check the column "
                             "or the split")
    index = {c: i for i, c in enumerate(classes)}
    unseen = Counter(k for k in keys if k is not None and k not in index)
    if unseen and ctx.unseen_classes == "error":
        listed = ", ".join(f"'{c}' ({n} rows)" for c, n in unseen.most_common(MAX_LISTED))
        raise ComponentError(f"column '{column}' has classes outside the training split only: {listed}; "
                             "move such rows into training, or set dataset.unseen_classes=ignore to treat them as "
                             "missing labels")
    ids = torch.tensor([index.get(k, 0) if k is not None else 0 for k in keys], dtype=torch.long)
    labeled = torch.tensor([k is not None and k in index for k in keys], dtype=torch.bool)
    return classes, ids, labeled


PATTERN_CHARS = "*?["  # fnmatch wildcards


def expand_columns(patterns: list[str], available: list[str], setting: str = "columns") -> list[str]:
    """Column names, globs and ranges -> the manifest's columns they name, in the manifest's order.

    Each entry is a column name (kept as is, even one the manifest lacks: the caller reports missing
    columns with the manifest's list), a glob (``x*``, ``pixel_??``: :func:`fnmatch.fnmatchcase`), or a
    range ``first:last`` of the columns from ``first`` to ``last`` in the manifest's order, both included
    (``x1:x100``). A name that the manifest has wins over a pattern reading of it (a column called
    ``a:b``). A column named twice is read once.

    Args:
        patterns: the reader's setting, e.g. ``["age", "x*"]`` or ``["x1:x100"]``.
        available: the manifest's columns, in its order.
        setting: the reader's setting, for messages.

    Raises:
        SettingError: a glob that matches no column, or a range whose end is not a column or comes first.
    """
    def listed() -> str:
        return ", ".join(available[:8]) + (f", ... ({len(available)} columns)" if len(available) > 8 else "")

    index = {c: i for i, c in enumerate(available)}
    out: list[str] = []
    seen: set[str] = set()
    for p in patterns:
        p = str(p)
        if p in index:
            names = [p]
        elif ":" in p:
            first, last = (s.strip() for s in p.split(":", 1))
            ends = [e for e in (first, last) if e not in index]
            if ends:
                raise SettingError(setting, f"has the range '{p}', but '{ends[0]}' is not a column of the manifest; "
                                   f"its columns: {listed()}")
            if index[first] > index[last]:
                raise SettingError(setting, f"has the range '{p}', but '{first}' comes after '{last}' in the "
                                   f"manifest; write it as '{last}:{first}'")
            names = available[index[first]:index[last] + 1]
        elif any(ch in p for ch in PATTERN_CHARS):
            names = [c for c in available if fnmatch.fnmatchcase(c, p)]
            if not names:
                raise SettingError(setting, f"has the pattern '{p}', which matches none of the manifest's columns: "
                                   f"{listed()}")
        else:
            names = [p]  # a column the manifest lacks: reported with the others by the dataset
        for n in names:
            if n not in seen:
                seen.add(n)
                out.append(n)
    return out
