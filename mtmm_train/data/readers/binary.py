"""A two-class label column -> a binary task (one logit)."""

from __future__ import annotations

from typing import Any

from mtmm_train.batch import TaskSpec
from mtmm_train.data.manifest import Table
from mtmm_train.data.readers.base import (
    ReadContext,
    ReadResult,
    TargetReader,
    class_ids,
    class_key,
    class_names,
    learned,
)
from mtmm_train.errors import KEY, ComponentError, SettingError


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

    def read(self, table: Table, ctx: ReadContext) -> ReadResult[TaskSpec]:
        return self._read(table, ctx, None)

    def read_with(self, table: Table, ctx: ReadContext, state: dict[str, Any]) -> ReadResult[TaskSpec]:
        """0/1 over the stored ``classes`` (see :meth:`Reader.read_with`)."""
        return self._read(table, ctx, class_names(state, "binary"))

    def _read(self, table: Table, ctx: ReadContext, classes: list[str] | None) -> ReadResult[TaskSpec]:
        classes, ids, labeled = class_ids(table[self.column], ctx, self.column, classes)
        if len(classes) != 2:
            raise ComponentError(f"column '{self.column}' has {len(classes)} classes in the training split "
                                 f"({', '.join(classes[:6])}); a binary task needs exactly two: use "
                                 f"target@{KEY}=label for more")
        positive = self.positive if self.positive is not None else classes[1]
        if positive not in classes:
            raise SettingError("positive", f"is '{positive}', which is not a class of column '{self.column}'; "
                               f"allowed: {', '.join(classes)}")
        return ReadResult((ids == classes.index(positive)).float(), labeled, TaskSpec(self.name, "binary", 1),
                          learned(classes=classes, positive=self.positive), {"classes": list(classes)})
