"""A two-class label column -> a binary task (one logit)."""

from __future__ import annotations

from mtmm_train.batch import TaskSpec
from mtmm_train.data.manifest import Table
from mtmm_train.data.readers.base import Column, ReadContext, TargetReader, class_ids, class_key
from mtmm_train.errors import UserError


class BinaryLabel(TargetReader):
    """A column with exactly two classes -> 0/1 floats ``(N,)``.

    Args:
        name: the task name (passed in by the dataset).
        column: the label column; null: ``name``.
        positive: the class that is 1; null: the second class in sorted order (``1`` of 0/1,
            ``true`` of false/true, ``yes`` of no/yes).
    """

    def __init__(self, name: str, column: str | None = None, positive: str | int | None = None) -> None:
        super().__init__(name, column)
        self.positive = None if positive is None else class_key(positive)
        self.classes: list[str] = []

    def read(self, table: Table, ctx: ReadContext) -> Column:
        self.classes, ids, labeled = class_ids(table[self.column], ctx, self.column)
        if len(self.classes) != 2:
            raise UserError(f"{ctx.key}: column '{self.column}' has {len(self.classes)} classes in the training "
                            f"split ({', '.join(self.classes[:6])}); a binary task needs exactly two: use "
                            f"target@dataset.tasks.{self.name}=label for more")
        positive = self.positive if self.positive is not None else self.classes[1]
        if positive not in self.classes:
            raise UserError(f"{ctx.key}.positive is '{positive}', which is not a class of column '{self.column}'; "
                            f"allowed: {', '.join(self.classes)}")
        return Column((ids == self.classes.index(positive)).float(), labeled)

    def spec(self) -> TaskSpec:
        return TaskSpec(self.name, "binary", 1)
