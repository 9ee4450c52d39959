"""Numeric columns -> one tabular vector, standardised with training-split statistics."""

from __future__ import annotations

import torch

from mtmm_train.batch import ModalitySpec
from mtmm_train.data.manifest import Table
from mtmm_train.data.readers.base import (
    ModalityReader,
    ReadContext,
    ReadResult,
    expand_columns,
    float_cells,
    learned,
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
        finite = ~torch.isnan(x)
        present = finite.any(1)
        train = ctx.train.unsqueeze(1) & finite
        count = train.sum(0)
        if (count == 0).any():
            col = cols[int((count == 0).nonzero()[0])]
            raise ComponentError(f"column '{col}' has no number in the training split; fill it or drop it from "
                                 f"{KEY}.columns")
        zero = torch.zeros((), dtype=x.dtype)
        mean = torch.where(train, x, zero).sum(0) / count
        var = torch.where(train, (x - mean) ** 2, zero).sum(0) / count
        std = var.sqrt().clamp_min(1e-12)
        values = torch.where(finite, (x - mean) / std, zero)
        values[~present] = 0.0
        return ReadResult(values.float(), present, ModalitySpec(self.name, (len(cols),), "vector"),
                          learned(mean=mean, std=std))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(columns={self.cols!r})"
