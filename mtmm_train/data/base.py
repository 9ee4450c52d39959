"""The container every dataset returns: specs plus whole splits held as tensors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from mtmm_train.batch import Batch, ModalitySpec, TaskSpec


@dataclass
class TensorSplit:
    """One split held as whole tensors (first dimension = samples), batched by index.

    Attributes mirror :class:`~mtmm_train.batch.Batch`, over all samples of the split.
    """

    inputs: dict[str, Tensor]
    present: dict[str, Tensor]
    targets: dict[str, Tensor]
    labeled: dict[str, Tensor]

    def __len__(self) -> int:
        return next(iter(self.present.values())).shape[0]

    def batch(self, index: Tensor) -> Batch:
        """Gather the samples at ``index`` into a :class:`Batch` (no per-sample collate)."""

        def take(d: dict[str, Tensor]) -> dict[str, Tensor]:
            return {k: v.index_select(0, index) for k, v in d.items()}

        return Batch(take(self.inputs), take(self.present), take(self.targets), take(self.labeled))

    def to(self, device: torch.device | str) -> TensorSplit:
        """Return the split with every tensor on ``device``."""

        def move(d: dict[str, Tensor]) -> dict[str, Tensor]:
            return {k: v.to(device) for k, v in d.items()}

        return TensorSplit(move(self.inputs), move(self.present), move(self.targets), move(self.labeled))

    def select(self, modalities: list[str], tasks: list[str]) -> TensorSplit:
        """Keep only the given modalities and tasks."""
        return TensorSplit(
            {m: self.inputs[m] for m in modalities},
            {m: self.present[m] for m in modalities},
            {t: self.targets[t] for t in tasks},
            {t: self.labeled[t] for t in tasks},
        )


@dataclass
class MultiModalData:
    """What a dataset builder returns.

    Attributes:
        modalities: name -> :class:`ModalitySpec`, in a fixed order.
        tasks: name -> :class:`TaskSpec`, in a fixed order.
        splits: ``"train"``, ``"val"`` and optionally ``"test"`` -> :class:`TensorSplit`.
        learned: ``modalities.<name>`` or ``tasks.<name>`` -> what its reader learned from the
            training split, as plain data (class names, standardisation statistics, a digest of
            the vocabulary; see ``Reader.learned``). Part of the data's fingerprint, which a
            resumed run must match (:func:`mtmm_train.checkpoint.data_fingerprint`).
    """

    modalities: dict[str, ModalitySpec]
    tasks: dict[str, TaskSpec]
    splits: dict[str, TensorSplit]
    learned: dict[str, dict[str, Any]] = field(default_factory=dict)

    def select(self, modalities: list[str], tasks: list[str]) -> MultiModalData:
        """Keep only the given modalities and tasks (in the given order)."""
        return MultiModalData(
            {m: self.modalities[m] for m in modalities},
            {t: self.tasks[t] for t in tasks},
            {k: s.select(modalities, tasks) for k, s in self.splits.items()},
            {k: v for k, v in self.learned.items()
             if k in {f"modalities.{m}" for m in modalities} | {f"tasks.{t}" for t in tasks}},
        )
