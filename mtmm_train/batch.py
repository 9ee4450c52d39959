"""The data contracts shared by every part: modality and task specs, and the Batch."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

TASK_KINDS = ("multiclass", "binary", "multilabel", "regression")


@dataclass(frozen=True)
class ModalitySpec:
    """What one input modality looks like, per sample.

    Args:
        name: modality name (a key of ``Batch.inputs``).
        shape: per-sample shape, e.g. ``(C, H, W)`` for images, ``(C, L)`` for sequences,
            ``(L,)`` for token ids, ``(F,)`` for vectors, ``(T, C, H, W)`` for video clips (frames).
        kind: ``"image"``, ``"sequence"``, ``"tokens"``, ``"vector"`` or ``"video"``.
        vocab_size: number of token ids (``kind == "tokens"`` only).
        info: what the reader did that an encoder may need to check, as plain data, e.g.
            ``{"tokenizer": "models/bert", "special_tokens": True}`` or ``{"sample_rate": 16000}``
            (see :mod:`mtmm_train.preprocessing`). Not part of equality.
    """

    name: str
    shape: tuple[int, ...]
    kind: str
    vocab_size: int | None = None
    info: dict = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class TaskSpec:
    """What one prediction task looks like.

    Args:
        name: task name (a key of ``Batch.targets``).
        kind: one of ``TASK_KINDS``.
        dim: number of classes (multiclass), labels (multilabel), or outputs (binary: 1,
            regression: number of targets).
    """

    name: str
    kind: str
    dim: int


@dataclass
class Batch:
    """One batch. A missing modality or label is a False in its mask, never a NaN.

    Attributes:
        inputs: modality -> tensor ``(B, *shape)``; absent samples hold zeros.
        present: modality -> bool ``(B,)``, True where the sample has the modality.
        targets: task -> tensor; class ids ``(B,)`` long, or floats ``(B,)``/``(B, K)``.
        labeled: task -> bool ``(B,)``, True where the sample has a label for the task.
    """

    inputs: dict[str, Tensor]
    present: dict[str, Tensor]
    targets: dict[str, Tensor]
    labeled: dict[str, Tensor]
    size: int = field(init=False)

    def __post_init__(self) -> None:
        self.size = next(iter(self.present.values())).shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """Return the batch on ``device`` (non-blocking copies where asked)."""

        def move(d: dict[str, Tensor]) -> dict[str, Tensor]:
            return {k: v.to(device, non_blocking=non_blocking) for k, v in d.items()}

        return Batch(move(self.inputs), move(self.present), move(self.targets), move(self.labeled))
