"""Multi-class classification: one label among ``dim`` classes."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from mtmm_train.tasks.base import Task

if TYPE_CHECKING:
    from torchmetrics import MetricCollection


class MulticlassTask(Task):
    """Cross-entropy on logits ``(B, C)`` against class ids ``(B,)``; accuracy and macro-F1."""

    def per_sample_loss(self, pred: Tensor, target: Tensor, labeled: Tensor) -> Tensor:
        target = torch.where(labeled, target, torch.zeros((), dtype=target.dtype, device=target.device))
        return F.cross_entropy(pred, target, reduction="none")

    def metrics(self) -> MetricCollection:
        # torchmetrics takes seconds to import: only runs that evaluate pay for it.
        from torchmetrics import MetricCollection
        from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

        c = self.spec.dim
        return MetricCollection({
            "accuracy": MulticlassAccuracy(c, average="micro"),
            "f1_macro": MulticlassF1Score(c, average="macro"),
        })
