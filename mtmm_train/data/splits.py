"""Assign each manifest row to a split: from a split column, or by ratios with a seed; a validation split
carved out of the training rows (``dataset.val_fraction``) where that gives none."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor

from mtmm_train.data.manifest import Table, is_empty
from mtmm_train.errors import UserError, check

__all__ = ["SPLITS", "assign_splits", "carve_val"]

SPLITS = ("train", "val", "test")

log = logging.getLogger("mtmm_train")


def assign_splits(table: Table, num_rows: int, split_column: str | None, split_ratios: list[float],
                  seed: int, val_fraction: float | None = None, strata: list[Any] | None = None) -> Tensor:
    """The split of every row, as an index into :data:`SPLITS`.

    Args:
        table: the manifest's columns.
        num_rows: rows in the manifest.
        split_column: a column whose cells are ``train``, ``val`` or ``test``; null: use ratios.
        split_ratios: fractions of rows for train, val and test (summing to 1; test may be 0),
            drawn by a permutation seeded with ``seed``.
        seed: seed of that permutation, and of the validation carve-out.
        val_fraction: where the column or the ratios give no validation row, move this fraction of
            the training rows to validation (:func:`carve_val`); null: never.
        strata: one value per row to stratify that carve-out on (the first classification task's
            labels, empty cells a stratum of their own); None: not stratified.

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
    if val_fraction is not None:
        check(isinstance(val_fraction, int | float) and 0 < val_fraction < 1,
              f"dataset.val_fraction must be a fraction between 0 and 1 (or null), found {val_fraction!r}; e.g. "
              "dataset.val_fraction=0.1")
        if bool((split == 1).any()):
            log.info("dataset: the %s gives %d validation rows; dataset.val_fraction=%s is not used", how,
                     int((split == 1).sum()), val_fraction)
        else:
            split = carve_val(split, float(val_fraction), seed, strata)
            how += f", validation {val_fraction} of the training rows"
    counts = torch.bincount(split, minlength=3)
    for i, name in enumerate(SPLITS[:2]):
        hint = " or set dataset.val_fraction=0.1 to take it from the training rows" if i == 1 else ""
        check(counts[i] > 0, f"dataset: the '{name}' split is empty (from the {how}); give it rows{hint}")
    return split


def carve_val(split: Tensor, fraction: float, seed: int, strata: list[Any] | None = None) -> Tensor:
    """Move ``fraction`` of the training rows to validation, stratified and deterministic given ``seed``.

    Each stratum (a class of the first classification task; unlabelled rows are one more) gives
    its share: ``fraction`` of its rows, rounded so that the total is ``round(fraction * train rows)``
    (largest remainders first), and never its last training row, so no class leaves the training split.

    Args:
        split: ``(N,)`` split ids (0 train, 1 val, 2 test); not changed.
        fraction: of the training rows, in (0, 1).
        seed: seeds the draw within each stratum.
        strata: one value per row (None: one stratum).

    Returns:
        The new split ids.
    """
    train = (split == 0).nonzero().squeeze(1).tolist()
    keys = [None if strata is None or is_empty(strata[i]) else str(strata[i]).strip() for i in train]
    groups: dict[Any, list[int]] = {}
    for row, key in zip(train, keys, strict=True):
        groups.setdefault(key, []).append(row)
    order = sorted(groups, key=lambda k: (k is None, str(k)))  # a fixed order: the draw depends on the seed only
    want = round(fraction * len(train))
    exact = {k: fraction * len(groups[k]) for k in order}
    take = {k: min(int(exact[k]), len(groups[k]) - 1) for k in order}
    for k in sorted(order, key=lambda k: exact[k] - int(exact[k]), reverse=True):  # stable: ties in stratum order
        if sum(take.values()) >= want:
            break
        if take[k] < len(groups[k]) - 1:
            take[k] += 1
    gen = torch.Generator().manual_seed(seed)
    out = split.clone()
    for k in order:
        rows = torch.tensor(groups[k], dtype=torch.long)
        pick = rows[torch.randperm(len(rows), generator=gen)[:take[k]]]
        out[pick] = 1
    return out
