"""The task contract: a masked loss and a set of torchmetrics."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from mtmm_train.batch import TaskSpec

if TYPE_CHECKING:
    from torchmetrics import MetricCollection


class Task:
    """Loss and metrics of one task; the head that predicts it lives in the model.

    The loss averages over labelled samples only; with no labelled sample in the batch it is
    exactly zero (and still part of the graph), never NaN.

    Args:
        spec: the task's spec (name, kind, dim).
    """

    def __init__(self, spec: TaskSpec) -> None:
        self.spec = spec
        self.name = spec.name

    @property
    def out_dim(self) -> int:
        """Number of outputs the head must produce."""
        return self.spec.dim

    def per_sample_loss(self, pred: Tensor, target: Tensor, labeled: Tensor) -> Tensor:
        """Loss of each sample ``(B,)``; values at unlabelled samples are discarded."""
        raise NotImplementedError

    def loss(self, pred: Tensor, target: Tensor, labeled: Tensor) -> Tensor:
        """Mean loss over the labelled samples (0 when there are none)."""
        per = self.per_sample_loss(pred.float(), target, labeled)
        per = torch.where(labeled, per, torch.zeros((), device=per.device))
        return per.sum() / labeled.sum().clamp_min(1)

    def metrics(self) -> MetricCollection:
        """A fresh collection of this task's validation metrics."""
        raise NotImplementedError

    def metric_inputs(self, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Turn head outputs and targets (labelled samples only) into what the metrics take."""
        return pred.float(), target

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.spec.dim})"
