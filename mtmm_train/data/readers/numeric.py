"""Numeric columns -> one tabular vector, standardised with training-split statistics."""

from __future__ import annotations

from typing import Any

import torch

from mtmm_train.batch import ModalitySpec
from mtmm_train.data.manifest import Table
from mtmm_train.data.readers.base import (
    ModalityReader,
    ReadContext,
    ReadResult,
    expand_columns,
    float_cells,
    float_state,
    learned,
    state_entry,
)
from mtmm_train.errors import KEY, ComponentError, SettingError


class NumericReader(ModalityReader):
    """Numeric columns -> ``(F,)`` float vectors with zero mean and unit variance on the training split.

    A row whose cells are all empty lacks the modality; a single empty cell among numbers
    is filled with the training mean (0 after standardising).

    Args:
        name: the modality name (passed in by the dataset).
        columns: the numeric columns, in order; null: the one column named ``name``. Each entry may
            also be a glob (``x*``) or a range of the manifest's columns (``x1:x100``, both ends
            included), expanded in the manifest's order (:func:`~mtmm_train.data.readers.base.expand_columns`).
    """

    def __init__(self, name: str, columns: list[str] | str | None = None) -> None:
        super().__init__(name, None)
        cols = [columns] if isinstance(columns, str) else list(columns or [name])
        if not cols:
            raise SettingError("columns", "is empty; list the numeric columns")
        self.cols = [str(c) for c in cols]

    def columns(self) -> list[str]:
        return self.cols

    def columns_in(self, available: list[str]) -> list[str]:
        return expand_columns(self.cols, available)

    def read(self, table: Table, ctx: ReadContext) -> ReadResult[ModalitySpec]:
        cols = self.columns_in(list(table))
        x = torch.stack([float_cells(table[c], c) for c in cols], 1)  # (N, F) float64, NaN = empty
        train = ctx.train.unsqueeze(1) & ~torch.isnan(x)
        count = train.sum(0)
        if (count == 0).any():
            col = cols[int((count == 0).nonzero()[0])]
            raise ComponentError(f"column '{col}' has no number in the training split; fill it or drop it from "
                                 f"{KEY}.columns")
        zero = torch.zeros((), dtype=x.dtype)
        mean = torch.where(train, x, zero).sum(0) / count
        var = torch.where(train, (x - mean) ** 2, zero).sum(0) / count
        std = var.sqrt().clamp_min(1e-12)
        return self._standardised(cols, x, mean, std)

    def read_with(self, table: Table, ctx: ReadContext, state: dict[str, Any]) -> ReadResult[ModalitySpec]:
        """Standardise with the stored ``columns``, ``mean`` and ``std`` (see :meth:`Reader.read_with`).

        The columns are the ones the training run read (globs and ranges expanded then), not expanded again.
        """
        cols = [str(c) for c in state_entry(state, "columns", list, "numeric")]
        lacking = [c for c in cols if c not in table]
        if lacking:
            raise ComponentError(f"the rows lack the column(s) {', '.join(lacking)} that the model was trained on")
        x = torch.stack([float_cells(table[c], c) for c in cols], 1)
        mean, std = (float_state(state, k, len(cols), "numeric") for k in ("mean", "std"))
        return self._standardised(cols, x, mean, std)

    def _standardised(self, cols: list[str], x: torch.Tensor, mean: torch.Tensor,
                      std: torch.Tensor) -> ReadResult[ModalitySpec]:
        """``x`` ``(N, F)`` float64 (NaN: empty) standardised with ``mean`` and ``std``, and what was learned."""
        finite = ~torch.isnan(x)
        present = finite.any(1)
        zero = torch.zeros((), dtype=x.dtype)
        values = torch.where(finite, (x - mean) / std, zero)
        values[~present] = 0.0
        summary = learned(mean=mean, std=std)
        return ReadResult(values.float(), present, ModalitySpec(self.name, (len(cols),), "vector"), summary,
                          {"columns": list(cols), "mean": summary["mean"], "std": summary["std"]})

    def __repr__(self) -> str:
        return f"{type(self).__name__}(columns={self.cols!r})"
