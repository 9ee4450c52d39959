"""Multi-label classification: ``dim`` independent 0/1 labels per sample."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from mtmm_train.tasks.base import Task

if TYPE_CHECKING:
    from torchmetrics import MetricCollection


class MultilabelTask(Task):
    """BCE-with-logits on ``(B, K)`` against 0/1 targets ``(B, K)``; macro AUROC and macro-F1."""

    def per_sample_loss(self, pred: Tensor, target: Tensor, labeled: Tensor) -> Tensor:
        target = torch.where(labeled.unsqueeze(-1), target.float(), torch.zeros((), device=target.device))
        return F.binary_cross_entropy_with_logits(pred, target, reduction="none").mean(-1)

    def metrics(self) -> MetricCollection:
        # torchmetrics takes seconds to import: only runs that evaluate pay for it.
        from torchmetrics import MetricCollection
        from torchmetrics.classification import MultilabelAUROC, MultilabelF1Score

        k = self.spec.dim
        return MetricCollection({
            "auroc": MultilabelAUROC(k, average="macro"),
            "f1_macro": MultilabelF1Score(k, average="macro"),
        })

    def metric_inputs(self, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        return pred.float().sigmoid(), target.long()
