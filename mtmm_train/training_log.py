"""What the training loop logs, kept on the device between logs: one object, one host read per log."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtmm_train import distributed


class TrainingLog:
    """Per-task losses and weights of the optimizer steps since the last log.

    The step adds its ``(T,)`` tensors on the device (:meth:`add`); every
    ``logger.log_every_n_steps`` steps :meth:`flush` reads them once (one host
    synchronisation) and starts again. Each step's weights are also kept, to write one
    TensorBoard point per step (:meth:`step_weight_rows`).

    Args:
        tasks: the task names, in the order of the tensors.
        every: ``logger.log_every_n_steps``: how many steps' weights can wait.
        device: where the sums live (the training device).
    """

    def __init__(self, tasks: list[str], every: int, device: torch.device) -> None:
        self.tasks = tasks
        self.sums = torch.zeros(2, len(tasks), device=device)  # (2, T): losses, weights
        self.count = 0  # optimizer steps in self.sums
        self.step_weights = torch.zeros(every, len(tasks), device=device)  # row `step % every`
        self.pending = 0  # steps whose weights wait in self.step_weights
        self.gramian: Tensor | None = None  # of the task gradients at the last step that computed one

    def add(self, step: int, losses: Tensor, weights: Tensor, gramian: Tensor | None = None) -> None:
        """Record optimizer step ``step`` (counted from 1): its ``(T,)`` losses and weights."""
        self.sums[0] += losses
        self.sums[1] += weights
        self.step_weights[(step - 1) % len(self.step_weights)] = weights
        self.count += 1
        self.pending += 1
        if gramian is not None:
            self.gramian = gramian

    def flush(self) -> tuple[dict[str, float], dict[str, float]]:
        """The mean losses and weights since the last flush, per task (under torchrun, over the
        processes too); empties the sums. The one host read of the loop."""
        mean = (distributed.mean(self.sums) / max(self.count, 1)).tolist()
        self.sums.zero_()
        self.count = 0
        return dict(zip(self.tasks, mean[0], strict=True)), dict(zip(self.tasks, mean[1], strict=True))

    def step_weight_rows(self, step: int) -> list[tuple[int, dict[str, float]]]:
        """``(step, {task: weight})`` of each step up to ``step`` not written yet; empties the buffer."""
        if self.pending == 0:
            return []
        every, first = len(self.step_weights), step - self.pending + 1
        rows = self.step_weights[[(s - 1) % every for s in range(first, step + 1)]].tolist()
        self.step_weights.zero_()
        self.pending = 0
        return [(s, dict(zip(self.tasks, row, strict=True))) for s, row in zip(range(first, step + 1), rows,
                                                                                 strict=True)]

    def take_gramian(self) -> Tensor | None:
        """The last Gramian recorded since the last call, if any."""
        gramian, self.gramian = self.gramian, None
        return gramian

    def state_dict(self) -> dict[str, Any]:
        """The sums since the last log (under torchrun: their mean over the processes), for a
        checkpoint: a resumed run then logs the same values as an uninterrupted one."""
        return {"sums": distributed.mean(self.sums), "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.sums.copy_(state["sums"])
        self.count = int(state["count"])
