"""The balancer contract."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class BalanceContext:
    """What a balancer may look at besides the losses, for one step.

    Attributes:
        shared: the last shared representation ``(B, D)`` (see ``MTLArchitecture``).
        shared_params: the parameters every task depends on (encoders, fusion, trunk).
        labeled_counts: task -> number of labelled samples in the batch (a device tensor;
            reading it synchronises, so only balancers that need it do).
        scaler: the ``GradScaler`` (disabled unless fp16); backward passes go through
            ``scaler.scale``.
        step: the optimizer step about to be taken.
    """

    shared: Tensor
    shared_params: list[nn.Parameter]
    labeled_counts: dict[str, Tensor]
    scaler: torch.amp.GradScaler
    step: int


class Balancer(nn.Module):
    """Base of all balancers. It is a module, so learned weights train and are checkpointed.

    Args:
        tasks: task names (passed in by the recipe).
    """

    def __init__(self, tasks: list[str]) -> None:
        super().__init__()
        self.tasks = list(tasks)

    def backward(self, losses: dict[str, Tensor], ctx: BalanceContext) -> dict[str, Tensor]:
        """Accumulate gradients into ``.grad`` for the given losses.

        Returns:
            task -> the weight the task received this step (a detached scalar tensor).
        """
        raise NotImplementedError
