"""Binary classification: one logit per sample."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from mtmm_train.tasks.base import Task

if TYPE_CHECKING:
    from torchmetrics import MetricCollection


class BinaryTask(Task):
    """BCE-with-logits on ``(B, 1)`` against 0/1 targets ``(B,)``; AUROC and accuracy."""

    def per_sample_loss(self, pred: Tensor, target: Tensor, labeled: Tensor) -> Tensor:
        target = torch.where(labeled, target.float(), torch.zeros((), device=target.device))
        return F.binary_cross_entropy_with_logits(pred.squeeze(-1), target, reduction="none")

    def metrics(self) -> MetricCollection:
        # torchmetrics takes seconds to import: only runs that evaluate pay for it.
        from torchmetrics import MetricCollection
        from torchmetrics.classification import BinaryAccuracy, BinaryAUROC

        return MetricCollection({"auroc": BinaryAUROC(), "accuracy": BinaryAccuracy()})

    def metric_inputs(self, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        return pred.float().squeeze(-1).sigmoid(), target.long()
