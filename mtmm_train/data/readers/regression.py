"""Numeric target columns -> a regression task, standardised with training-split statistics."""

from __future__ import annotations

from typing import Any

import torch

from mtmm_train.batch import TaskSpec
from mtmm_train.data.manifest import Table
from mtmm_train.data.readers.base import (
    ReadContext,
    ReadResult,
    TargetReader,
    expand_columns,
    float_cells,
    float_state,
    learned,
    state_entry,
)
from mtmm_train.errors import ComponentError, SettingError


class NumericTarget(TargetReader):
    """Numeric columns -> ``(N,)`` (one column) or ``(N, K)`` float targets.

    Standardising puts every regression loss on the scale of a classification loss, so no
    task dominates the sum by its units; metrics (MAE, RMSE) are then in standard deviations
    of the training split, and R^2 is unchanged. A row with an empty cell is unlabelled.

    Args:
        name: the task name (passed in by the dataset).
        columns: the target columns; null: the one column named ``name``.
        standardize: subtract the training mean, divide by the training standard deviation.
        log: take ``log(x)`` first (for positive, skewed targets such as prices).
    """

    def __init__(self, name: str, columns: list[str] | str | None = None, standardize: bool = True,
                 log: bool = False) -> None:
        super().__init__(name, None)
        cols = [columns] if isinstance(columns, str) else list(columns or [name])
        if not cols:
            raise SettingError("columns", "is empty; list the numeric target columns")
        self.cols = [str(c) for c in cols]
        self.standardize, self.log = standardize, log

    def columns(self) -> list[str]:
        return self.cols

    def columns_in(self, available: list[str]) -> list[str]:
        return expand_columns(self.cols, available)

    def read(self, table: Table, ctx: ReadContext) -> ReadResult[TaskSpec]:
        cols = self.columns_in(list(table))  # globs and ranges expanded
        y, labeled = self._targets(table, cols)
        train = labeled & ctx.train
        if not train.any():
            raise ComponentError(f"columns {cols} have no number in the training split; fill them")
        mean = y[train].mean(0) if self.standardize else torch.zeros(len(cols), dtype=y.dtype)
        std = y[train].std(0, correction=0).clamp_min(1e-12) if self.standardize else \
            torch.ones(len(cols), dtype=y.dtype)
        return self._standardised(cols, y, labeled, mean, std)

    def read_with(self, table: Table, ctx: ReadContext, state: dict[str, Any]) -> ReadResult[TaskSpec]:
        """Targets standardised with the stored ``columns``, ``mean`` and ``std`` (see :meth:`Reader.read_with`)."""
        cols = [str(c) for c in state_entry(state, "columns", list, "regression")]
        lacking = [c for c in cols if c not in table]
        if lacking:
            raise ComponentError(f"the rows lack the target column(s) {', '.join(lacking)} of the stored state")
        y, labeled = self._targets(table, cols)
        mean, std = (float_state(state, k, len(cols), "regression") for k in ("mean", "std"))
        return self._standardised(cols, y, labeled, mean, std)

    def _targets(self, table: Table, cols: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(y (N, K) float64, after the log if any; labeled (N,))``."""
        y = torch.stack([float_cells(table[c], c) for c in cols], 1)  # (N, K) float64
        labeled = ~torch.isnan(y).any(1)
        if self.log:
            bad = labeled & (y <= 0).any(1)
            if bad.any():
                row = int(bad.nonzero()[0]) + 1
                raise SettingError("log", f"is true, but row {row} has a target <= 0; use log=false or fix it")
            y = torch.log(y)
        return y, labeled

    def _standardised(self, cols: list[str], y: torch.Tensor, labeled: torch.Tensor, mean: torch.Tensor,
                      std: torch.Tensor) -> ReadResult[TaskSpec]:
        values = torch.where(labeled.unsqueeze(1), (y - mean) / std, torch.zeros((), dtype=y.dtype))
        values = values.float()
        summary = learned(mean=mean, std=std)
        return ReadResult(values[:, 0] if len(cols) == 1 else values, labeled,
                          TaskSpec(self.name, "regression", len(cols)), summary,
                          {"columns": list(cols), "mean": summary["mean"], "std": summary["std"]})

    def __repr__(self) -> str:
        return f"{type(self).__name__}(columns={self.cols!r}, standardize={self.standardize}, log={self.log})"
