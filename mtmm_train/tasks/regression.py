"""Regression: ``dim`` real targets per sample."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from mtmm_train.tasks.base import Task

if TYPE_CHECKING:
    from torchmetrics import MetricCollection


class RegressionTask(Task):
    """Mean squared error on ``(B, K)`` against ``(B,)`` or ``(B, K)``; MAE, RMSE and R^2."""

    def per_sample_loss(self, pred: Tensor, target: Tensor, labeled: Tensor) -> Tensor:
        target = target.float().view(pred.shape)
        target = torch.where(labeled.view(-1, *([1] * (pred.dim() - 1))), target, torch.zeros((), device=pred.device))
        return F.mse_loss(pred, target, reduction="none").flatten(1).mean(1)

    def metrics(self) -> MetricCollection:
        # torchmetrics takes seconds to import: only runs that evaluate pay for it.
        from torchmetrics import MeanAbsoluteError, MeanSquaredError, MetricCollection, R2Score

        return MetricCollection({"mae": MeanAbsoluteError(), "rmse": MeanSquaredError(squared=False), "r2": R2Score()})

    def metric_inputs(self, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        pred = pred.float()
        if self.spec.dim == 1:
            return pred.view(-1), target.float().view(-1)
        return pred, target.float()
