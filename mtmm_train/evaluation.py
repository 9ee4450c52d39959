"""Per-task losses and metrics of a model over a whole split: used by training and by ``mtmm-eval``."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch
from torch import Tensor, nn

from mtmm_train import distributed
from mtmm_train.data import FileSplit, InMemoryLoader, TensorSplit
from mtmm_train.tasks import Task

log = logging.getLogger("mtmm_train")


def metric_keys(tasks: dict[str, Task], prefix: str = "val") -> list[str]:
    """Every key :func:`evaluate` returns for ``tasks``, in a stable order."""
    keys = [f"{prefix}/loss/total"] + [f"{prefix}/loss/{t}" for t in tasks]
    for t, task in tasks.items():
        keys += [f"{prefix}/{t}/{m}" for m in task.metrics().keys()]
    return keys


@torch.no_grad()
def evaluate(model: nn.Module, tasks: dict[str, Task], split: TensorSplit | FileSplit, batch_size: int,
             prefix: str = "val", autocast: contextlib.AbstractContextManager | None = None,
             loader: Any = None) -> dict[str, float]:
    """Per-task losses and metrics over ``split`` (labelled samples only).

    Under torchrun each rank evaluates its share of the split; loss sums are reduced, and the
    labelled samples' predictions and targets gathered, so that every rank returns the metrics
    of the whole split. (torchmetrics' own sync in ``compute()`` fails when a rank saw no labels
    for a task.)

    Args:
        model: returns ``(preds, shared)`` from ``(inputs, present)``; put in eval mode here and
            back in the mode it had.
        tasks: task name -> task (loss, metrics).
        split: the data, on the model's device (or on the host, e.g. a FileSplit: batches are moved).
        batch_size: samples per forward pass.
        prefix: the keys' first part (``val``, ``test``, ...).
        autocast: the precision context of the forward passes (None: full precision).
        loader: batches of ``split`` for this rank (a :class:`~mtmm_train.data.StreamingLoader` with
            ``train=False``, whose workers decode a streamed split); None: batched by index here.

    Returns:
        ``{"<prefix>/loss/total", "<prefix>/loss/<task>", "<prefix>/<task>/<metric>": float}``;
        a metric of a task without labels in the split is NaN.
    """
    dist = distributed.info()
    device = next(iter(split.present.values())).device
    param = next(model.parameters(), None)
    if param is not None and param.device != device:  # a split left on the host: move each batch
        device = param.device
    training = model.training
    model.eval()
    parallel = dist.distributed
    loader = loader or InMemoryLoader(split, batch_size, rank=dist.rank, world_size=dist.world_size)
    metrics = {t: task.metrics().to(device) for t, task in tasks.items()}
    kept: dict[str, tuple[list[Tensor], list[Tensor]]] = {t: ([], []) for t in tasks}
    loss_sum = torch.zeros(len(tasks), device=device)
    n_labeled = torch.zeros(len(tasks), device=device)
    for batch in loader:
        batch = batch.to(device, non_blocking=True)
        with autocast or contextlib.nullcontext():
            preds, _ = model(batch.inputs, batch.present)
        for i, (t, task) in enumerate(tasks.items()):
            lab = batch.labeled[t]
            n = lab.sum()
            loss_sum[i] += task.loss(preds[t], batch.targets[t], lab) * n
            n_labeled[i] += n
            if parallel:  # empty selections too: they carry the shapes for the gather
                kept[t][0].append(preds[t][lab].float())
                kept[t][1].append(batch.targets[t][lab])
            elif lab.any():
                metrics[t].update(*task.metric_inputs(preds[t][lab], batch.targets[t][lab]))
    if parallel:
        for t, task in tasks.items():
            pred, target = (distributed.gather_rows(torch.cat(x)) for x in kept[t])
            for metric in metrics[t].values():
                metric.sync_on_compute = metric._to_sync = False  # every rank holds all the data
            if len(pred):
                metrics[t].update(*task.metric_inputs(pred, target))
    loss_sum, n_labeled = distributed.total(loss_sum), distributed.total(n_labeled)
    losses = (loss_sum / n_labeled.clamp_min(1)).tolist()
    labeled = n_labeled.tolist()
    out: dict[str, float] = {f"{prefix}/loss/total": float(sum(losses))}
    for i, t in enumerate(tasks):
        out[f"{prefix}/loss/{t}"] = losses[i]
    for i, (t, collection) in enumerate(metrics.items()):
        for k, metric in collection.items():
            out[f"{prefix}/{t}/{k}"] = float("nan")
            if labeled[i] == 0:
                continue
            try:
                out[f"{prefix}/{t}/{k}"] = float(metric.compute())
            except ValueError as e:  # e.g. R^2 of a single labelled sample
                log.warning("%s/%s/%s is NaN: %s", prefix, t, k, str(e).splitlines()[0])
    model.train(training)
    return out
