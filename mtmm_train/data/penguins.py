"""Palmer penguins: real multi-task tabular data (344 penguins, the ``palmerpenguins`` package).

Inputs are the bill and flipper measurements; tasks are species (3 classes), sex (binary,
missing for 11 birds), island (3 classes) and body mass (regression), all set in
``configs/dataset/penguins.yaml`` with the same readers as a manifest dataset.
"""

from __future__ import annotations

from typing import Any

from mtmm_train.data.base import MultiModalData
from mtmm_train.data.files import from_frame
from mtmm_train.data.optional import require

__all__ = ["penguins"]


def penguins(modalities: dict[str, Any], tasks: dict[str, Any], split_ratios: list[float] = (0.6, 0.2, 0.2),
             seed: int = 0, unseen_classes: str = "error") -> MultiModalData:
    """Load the penguins table (bundled with the package: no download) and read it as configured.

    Args:
        modalities: modality name -> reader config over the table's columns (``species``,
            ``island``, ``bill_length_mm``, ``bill_depth_mm``, ``flipper_length_mm``,
            ``body_mass_g``, ``sex``, ``year``).
        tasks: task name -> target config.
        split_ratios: train, val, test fractions, drawn with ``seed``.
        seed: seed of the split.
        unseen_classes: ``error`` or ``ignore``, as in :func:`~mtmm_train.data.files.files`.

    Raises:
        UserError: ``palmerpenguins`` is not installed, or the config names a column it lacks.
    """
    pp = require("palmerpenguins", "penguins", "dataset=penguins")
    return from_frame(pp.load_penguins(), modalities, tasks, split_ratios, seed, unseen_classes)
