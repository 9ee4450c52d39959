"""A column of label sets -> a multi-label task; labels from the training split."""

from __future__ import annotations

from typing import Any

import torch

from mtmm_train.batch import TaskSpec
from mtmm_train.data.manifest import Table, is_empty
from mtmm_train.data.readers.base import (
    MAX_LISTED,
    ReadContext,
    ReadResult,
    TargetReader,
    class_key,
    class_names,
    expand_columns,
    float_cells,
    learned,
    sort_classes,
)
from mtmm_train.errors import KEY, ComponentError, SettingError

EMPTY_SET = "[]"  # a cell that says "none of the labels" (an empty cell is a missing label)


class MultiLabel(TargetReader):
    """Label sets -> ``(N, K)`` 0/1 floats over the ``K`` labels seen in the training split.

    A cell is a list (JSONL, Parquet) or text joined by ``separator`` (``cat|dog``). An empty
    cell is a missing label; write ``[]`` for a sample that has none of the labels.

    Or one 0/1 column per label (``columns``): the labels are the columns' names, in the
    manifest's order; a row whose cells are all empty is a missing label.

    Args:
        name: the task name (passed in by the dataset).
        column: the label column; null: ``name``.
        separator: what joins labels in a text cell.
        columns: instead of ``column``: indicator columns (names, globs ``tag_*`` or ranges
            ``tag_a:tag_z``, :func:`~mtmm_train.data.readers.base.expand_columns`), cells 0 or 1.
    """

    def __init__(self, name: str, column: str | None = None, separator: str = "|",
                 columns: list[str] | str | None = None) -> None:
        super().__init__(name, column)
        self.separator = separator
        if columns is not None and column is not None:
            raise SettingError("columns", f"and {KEY}.column are both set; give one: a column of label sets, or "
                               "0/1 columns, one per label")
        self.cols = None if columns is None else [str(c) for c in ([columns] if isinstance(columns, str)
                                                                    else columns)]
        if self.cols is not None and not self.cols:
            raise SettingError("columns", "is empty; list the 0/1 label columns, e.g. [tag_*], or set it to null")

    def columns(self) -> list[str]:
        return [self.column] if self.cols is None else self.cols

    def columns_in(self, available: list[str]) -> list[str]:
        return self.columns() if self.cols is None else expand_columns(self.cols, available)

    def read_indicators(self, table: Table, ctx: ReadContext, labels: list[str] | None = None) -> ReadResult[TaskSpec]:
        """One 0/1 column per label (``labels``: the columns, stored by an earlier read; None: expanded now)."""
        cols = self.columns_in(list(table)) if labels is None else labels
        lacking = [c for c in cols if c not in table]
        if lacking:
            raise ComponentError(f"the rows lack the label column(s) {', '.join(lacking[:MAX_LISTED])} of the "
                                 "stored state")
        y = torch.stack([float_cells(table[c], c) for c in cols], 1)  # (N, K) float64, NaN = empty
        bad = ~torch.isnan(y) & (y != 0) & (y != 1)
        if bad.any():
            row, col = (int(v) for v in bad.nonzero()[0])
            raise ComponentError(f"column '{cols[col]}' row {row + 1} holds {float(y[row, col]):g}, not 0 or 1; each "
                                 f"of {KEY}.columns marks one label with 0 or 1 (empty: missing)")
        labeled = ~torch.isnan(y).all(1)
        if labels is None and not (labeled & ctx.train).any():
            raise ComponentError(f"columns {', '.join(cols[:MAX_LISTED])} have no label in the training split")
        return ReadResult(torch.nan_to_num(y, nan=0.0).float(), labeled, TaskSpec(self.name, "multilabel", len(cols)),
                          learned(labels=cols), {"labels": list(cols)})

    def split(self, cell: Any) -> list[str]:
        """The labels of one non-empty cell."""
        if isinstance(cell, list | tuple):
            return [class_key(v) for v in cell if not is_empty(v)]
        text = str(cell).strip()
        if text == EMPTY_SET:
            return []
        return [s.strip() for s in text.split(self.separator) if s.strip()]

    def read(self, table: Table, ctx: ReadContext) -> ReadResult[TaskSpec]:
        return self._read(table, ctx, None)

    def read_with(self, table: Table, ctx: ReadContext, state: dict[str, Any]) -> ReadResult[TaskSpec]:
        """0/1 over the stored ``labels`` (see :meth:`Reader.read_with`)."""
        return self._read(table, ctx, class_names(state, "multilabel", "labels"))

    def _read(self, table: Table, ctx: ReadContext, labels: list[str] | None) -> ReadResult[TaskSpec]:
        if self.cols is not None:
            return self.read_indicators(table, ctx, labels)
        cells = table[self.column]
        sets = [None if is_empty(v) else self.split(v) for v in cells]
        if labels is None:
            train = ctx.train.tolist()
            labels = sort_classes({x for s, t in zip(sets, train, strict=True) if t and s is not None for x in s})
        if not labels:
            raise ComponentError(f"column '{self.column}' has no label in the training split; check the column and "
                                 f"{KEY}.separator ('{self.separator}')")
        index = {c: i for i, c in enumerate(labels)}
        unseen = sorted({x for s in sets if s is not None for x in s if x not in index})
        if unseen and ctx.unseen_classes == "error":
            raise ComponentError(f"column '{self.column}' has labels outside the training split only: "
                                 f"{', '.join(unseen[:MAX_LISTED])}; move such rows into training, or set "
                                 "dataset.unseen_classes=ignore to drop those labels")
        values = torch.zeros(len(cells), len(labels))
        for i, s in enumerate(sets):
            for x in s or []:
                if x in index:  # an unseen label (policy ignore) is dropped from the set
                    values[i, index[x]] = 1.0
        return ReadResult(values, torch.tensor([s is not None for s in sets], dtype=torch.bool),
                          TaskSpec(self.name, "multilabel", len(labels)), learned(labels=labels),
                          {"labels": list(labels)})
