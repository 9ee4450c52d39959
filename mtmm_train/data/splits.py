"""Assign each manifest row to a split: from a split column, or by ratios with a seed."""

from __future__ import annotations

import torch
from torch import Tensor

from mtmm_train.data.manifest import Table, is_empty
from mtmm_train.errors import UserError, check

__all__ = ["SPLITS", "assign_splits"]

SPLITS = ("train", "val", "test")


def assign_splits(table: Table, num_rows: int, split_column: str | None, split_ratios: list[float],
                  seed: int) -> Tensor:
    """The split of every row, as an index into :data:`SPLITS`.

    Args:
        table: the manifest's columns.
        num_rows: rows in the manifest.
        split_column: a column whose cells are ``train``, ``val`` or ``test``; null: use ratios.
        split_ratios: fractions of rows for train, val and test (summing to 1; test may be 0),
            drawn by a permutation seeded with ``seed``.
        seed: seed of that permutation.

    Returns:
        ``(N,)`` long tensor of split ids.

    Raises:
        UserError: an unknown split value, bad ratios, or an empty train or val split.
    """
    if split_column is not None:
        check(split_column in table, f"dataset.split_column is '{split_column}', which the manifest does not have; "
              f"its columns: {', '.join(table)}")
        cells = [str(v).strip() if not is_empty(v) else "" for v in table[split_column]]
        bad = sorted({c for c in cells if c not in SPLITS})
        if bad:
            raise UserError(f"dataset.split_column '{split_column}' has the value '{bad[0]}' (values found: "
                            f"{', '.join(bad[:5])}); allowed: {', '.join(SPLITS)}; fix those cells or use "
                            "dataset.split_column=null with dataset.split_ratios")
        split = torch.tensor([SPLITS.index(c) for c in cells], dtype=torch.long)
        how = f"split column '{split_column}'"
    else:
        ratios = [float(r) for r in split_ratios]
        check(len(ratios) == 3 and all(r >= 0 for r in ratios) and abs(sum(ratios) - 1.0) < 1e-6,
              f"dataset.split_ratios must be three non-negative fractions (train, val, test) summing to 1, found "
              f"{list(split_ratios)}; e.g. dataset.split_ratios=[0.8,0.1,0.1]")
        n_train = round(ratios[0] * num_rows)
        n_val = round(ratios[1] * num_rows) if ratios[2] > 0 else num_rows - n_train
        order = torch.randperm(num_rows, generator=torch.Generator().manual_seed(seed))
        split = torch.full((num_rows,), 2, dtype=torch.long)
        split[order[:n_train]] = 0
        split[order[n_train:n_train + n_val]] = 1
        how = f"split ratios {ratios} of {num_rows} rows"
    counts = torch.bincount(split, minlength=3)
    for i, name in enumerate(SPLITS[:2]):
        check(counts[i] > 0, f"dataset: the '{name}' split is empty (from the {how}); give it rows")
    return split
