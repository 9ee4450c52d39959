"""The reader contract: turn manifest columns into one tensor per row, with a presence mask.

Modality readers (image, audio, text, numeric, array) produce inputs; target readers (class
labels, binary, multi-label, numeric) produce task targets. Readers that learn something from
the data (a vocabulary, classes, statistics) learn it from the training split only.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from mtmm_train.batch import ModalitySpec, TaskSpec
from mtmm_train.data.manifest import Table, is_empty
from mtmm_train.errors import UserError

UNSEEN_POLICIES = ("error", "ignore")
MAX_LISTED = 3  # problems named in an error message; the rest are counted


@dataclass
class ReadContext:
    """What every reader needs besides its own settings.

    Attributes:
        key: where the reader sits in the config, for messages (``dataset.modalities.photo``).
        root: the folder that relative paths start from (the manifest's).
        split: ``(N,)`` split id of each row (0 train, 1 val, 2 test).
        num_workers: DataLoader worker processes for decoding files (0: in this process).
        unseen_classes: ``error`` or ``ignore`` (as a missing label) for a class seen
            outside the training split only.
    """

    key: str
    root: Path
    split: Tensor
    num_workers: int = 0
    unseen_classes: str = "error"

    @property
    def train(self) -> Tensor:
        """``(N,)`` bool: the training rows."""
        return self.split == 0


@dataclass
class Column:
    """What a reader returns: ``values`` ``(N, *shape)`` and ``present`` ``(N,)`` bool.

    Rows without a value (an empty cell) hold zeros and a False.
    """

    values: Tensor
    present: Tensor


class Reader:
    """Base of all readers.

    Args:
        name: the modality or task name (passed in by the dataset).
        column: the manifest column to read; null: the column named like the modality or task.
    """

    reads_files = False  # True: cells are paths, checked to exist before decoding

    def __init__(self, name: str, column: str | None = None) -> None:
        self.name = name
        self.column = column or name

    def columns(self) -> list[str]:
        """The manifest columns this reader needs."""
        return [self.column]

    def read(self, table: Table, ctx: ReadContext) -> Column:
        """Read every row of ``table`` (after :meth:`columns` were checked to exist)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(column={self.column!r})"


class ModalityReader(Reader):
    """A reader whose column is an input modality."""

    def spec(self) -> ModalitySpec:
        """The modality's spec, known after :meth:`read`."""
        raise NotImplementedError


class TargetReader(Reader):
    """A reader whose column is the target of a task."""

    def spec(self) -> TaskSpec:
        """The task's spec, known after :meth:`read`."""
        raise NotImplementedError


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


def decode_files(paths: list[Path], fn: Callable[[Path], Tensor], ctx: ReadContext, what: str) -> list[Tensor]:
    """Decode every file with ``fn`` in DataLoader workers; fail listing the unreadable ones.

    Args:
        paths: the files (already known to exist).
        fn: decodes one file into a tensor (must be picklable: a module-level function or a
            method of a picklable object).
        ctx: the read context (worker count, key for messages).
        what: what the files should be, for messages (``"images"``).

    Returns:
        One tensor per path.

    Raises:
        UserError: some files could not be decoded (the first few named, all counted).
    """
    loader = DataLoader(_Cells(paths, fn), batch_size=64, num_workers=ctx.num_workers if len(paths) > 64 else 0,
                        collate_fn=list)
    # One file is little work: intra-op threads only add overhead (30x on a busy 2-core machine).
    # Workers run single-threaded anyway; do the same when decoding in this process.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out: list[Tensor | str] = [x for batch in loader for x in batch]
    finally:
        torch.set_num_threads(threads)
    bad = [(p, r) for p, r in zip(paths, out, strict=True) if isinstance(r, str)]
    if bad:
        listed = "; ".join(f"{p} ({r})" for p, r in bad[:MAX_LISTED])
        raise UserError(f"{ctx.key}: {len(bad)} of {len(paths)} files could not be read as {what}: {listed}"
                        f"{' ...' if len(bad) > MAX_LISTED else ''}; fix or replace them, or empty those cells")
    return out  # type: ignore[return-value]


def stack_present(rows: list[Tensor | None], shape: tuple[int, ...]) -> Column:
    """Stack per-row tensors of ``shape`` (None: absent, zeros) into a :class:`Column`."""
    values = torch.zeros(len(rows), *shape)
    present = torch.zeros(len(rows), dtype=torch.bool)
    for i, r in enumerate(rows):
        if r is not None:
            values[i] = r
            present[i] = True
    return Column(values, present)


def float_cells(cells: list[Any], key: str, column: str) -> Tensor:
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
            raise UserError(f"{key}: column '{column}' row {i + 1} holds {v!r}, not a number; fix the cell or "
                            "leave it empty (missing)") from None
        if not math.isfinite(x):
            raise UserError(f"{key}: column '{column}' row {i + 1} holds {v!r}, not a finite number; fix the cell "
                            "or leave it empty (missing)")
        out.append(x)
    return torch.tensor(out, dtype=torch.float64)


def check_finite(column: Column, key: str, rows: list[Any] | None = None) -> None:
    """Refuse NaN or infinite values in the rows a reader marked present (labelled).

    Args:
        column: what the reader returned.
        key: the reader's key, for the message.
        rows: the column's cells, to name the first bad one (a file path, for file readers).

    Raises:
        UserError: naming how many rows hold NaN or Inf, the first one and its cell.
    """
    if not column.values.is_floating_point():
        return
    bad = ~torch.isfinite(column.values.reshape(len(column.values), -1)).all(1) & column.present
    if not bad.any():
        return
    first = int(bad.nonzero()[0])
    cell = f" ({rows[first]!r})" if rows is not None else ""
    raise UserError(f"{key}: {int(bad.sum())} row(s) hold NaN or Inf values, the first is row {first + 1}{cell}; "
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


def class_ids(cells: list[Any], ctx: ReadContext, column: str) -> tuple[list[str], Tensor, Tensor]:
    """Map class labels to ids, the classes taken from the training split.

    Returns:
        ``(classes, ids (N,) long, labeled (N,) bool)``.

    Raises:
        UserError: fewer than two classes in the training split, or (``unseen_classes=error``)
            a class seen outside the training split only.
    """
    keys = [None if is_empty(v) else class_key(v) for v in cells]
    train = ctx.train.tolist()
    classes = sort_classes({k for k, t in zip(keys, train, strict=True) if t and k is not None})
    if len(classes) < 2:
        raise UserError(f"{ctx.key}: column '{column}' has {len(classes)} class(es) in the training split "
                        f"({', '.join(classes) or 'no labels'}); a task needs at least two: check the column "
                        "or the split")
    index = {c: i for i, c in enumerate(classes)}
    unseen = Counter(k for k in keys if k is not None and k not in index)
    if unseen and ctx.unseen_classes == "error":
        listed = ", ".join(f"'{c}' ({n} rows)" for c, n in unseen.most_common(MAX_LISTED))
        raise UserError(f"{ctx.key}: column '{column}' has classes outside the training split only: {listed}; "
                        "move such rows into training, or set dataset.unseen_classes=ignore to treat them as "
                        "missing labels")
    ids = torch.tensor([index.get(k, 0) if k is not None else 0 for k in keys], dtype=torch.long)
    labeled = torch.tensor([k is not None and k in index for k in keys], dtype=torch.bool)
    return classes, ids, labeled
