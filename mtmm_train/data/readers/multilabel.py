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
    learned,
    sort_classes,
)
from mtmm_train.errors import KEY, ComponentError

EMPTY_SET = "[]"  # a cell that says "none of the labels" (an empty cell is a missing label)


class MultiLabel(TargetReader):
    """Label sets -> ``(N, K)`` 0/1 floats over the ``K`` labels seen in the training split.

    A cell is a list (JSONL, Parquet) or text joined by ``separator`` (``cat|dog``). An empty
    cell is a missing label; write ``[]`` for a sample that has none of the labels.

    Args:
        name: the task name (passed in by the dataset).
        column: the label column; null: ``name``.
        separator: what joins labels in a text cell.
    """

    def __init__(self, name: str, column: str | None = None, separator: str = "|") -> None:
        super().__init__(name, column)
        self.separator = separator

    def split(self, cell: Any) -> list[str]:
        """The labels of one non-empty cell."""
        if isinstance(cell, list | tuple):
            return [class_key(v) for v in cell if not is_empty(v)]
        text = str(cell).strip()
        if text == EMPTY_SET:
            return []
        return [s.strip() for s in text.split(self.separator) if s.strip()]

    def read(self, table: Table, ctx: ReadContext) -> ReadResult[TaskSpec]:
        cells = table[self.column]
        sets = [None if is_empty(v) else self.split(v) for v in cells]
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
                          TaskSpec(self.name, "multilabel", len(labels)), learned(labels=labels))
