"""Class labels (strings or integers) -> a multi-class task; classes from the training split."""

from __future__ import annotations

from mtmm_train.batch import TaskSpec
from mtmm_train.data.manifest import Table
from mtmm_train.data.readers.base import Column, ReadContext, TargetReader, class_ids


class ClassLabel(TargetReader):
    """A column of class labels -> class ids ``(N,)``.

    Classes are those of the training split, numerically ordered when all are integers,
    else alphabetically; an empty cell is a missing label.

    Args:
        name: the task name (passed in by the dataset).
        column: the label column; null: ``name``.
    """

    def __init__(self, name: str, column: str | None = None) -> None:
        super().__init__(name, column)
        self.classes: list[str] = []

    def read(self, table: Table, ctx: ReadContext) -> Column:
        self.classes, ids, labeled = class_ids(table[self.column], ctx, self.column)
        return Column(ids, labeled)

    def spec(self) -> TaskSpec:
        return TaskSpec(self.name, "multiclass", len(self.classes))
