"""Class labels (strings or integers) -> a multi-class task; classes from the training split."""

from __future__ import annotations

from typing import Any

from mtmm_train.batch import TaskSpec
from mtmm_train.data.manifest import Table
from mtmm_train.data.readers.base import (
    ReadContext,
    ReadResult,
    TargetReader,
    class_ids,
    class_names,
    learned,
)


class ClassLabel(TargetReader):
    """A column of class labels -> class ids ``(N,)``.

    Classes are those of the training split, numerically ordered when all are integers,
    else alphabetically; an empty cell is a missing label.

    Args:
        name: the task name (passed in by the dataset).
        column: the label column; null: ``name``.
    """

    def read(self, table: Table, ctx: ReadContext) -> ReadResult[TaskSpec]:
        return self._read(table, ctx, None)

    def read_with(self, table: Table, ctx: ReadContext, state: dict[str, Any]) -> ReadResult[TaskSpec]:
        """Class ids over the stored ``classes`` (see :meth:`Reader.read_with`)."""
        return self._read(table, ctx, class_names(state, "label"))

    def _read(self, table: Table, ctx: ReadContext, classes: list[str] | None) -> ReadResult[TaskSpec]:
        classes, ids, labeled = class_ids(table[self.column], ctx, self.column, classes)
        return ReadResult(ids, labeled, TaskSpec(self.name, "multiclass", len(classes)), learned(classes=classes),
                          {"classes": list(classes)})
