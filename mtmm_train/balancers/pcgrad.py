"""PCGrad (Yu et al., 2020): project away the conflicting part of each task's gradient."""

from __future__ import annotations

from torch import Tensor

from mtmm_train.balancers import torchjd_api
from mtmm_train.balancers.aggregation import GradientAggregation


class PCGrad(GradientAggregation):
    """Gradient surgery: for each task, in a random order of the others, remove the component
    along any other task's gradient it conflicts with (negative inner product); sum the results.

    Computed by torchjd's ``PCGradWeighting`` (Algorithm 1 of
    `Gradient Surgery for Multi-Task Learning <https://arxiv.org/abs/2001.06782>`_). With more
    than two tasks the random order draws from torch's global generator.

    Args:
        tasks: task names (passed in by the recipe).
        mode: ``representation`` or ``parameters`` (see :class:`GradientAggregation`).
    """

    def __init__(self, tasks: list[str], mode: str = "representation") -> None:
        super().__init__(tasks, mode)
        self.weighting = torchjd_api.gramian_weighting("pcgrad")

    def weights(self, gramian: Tensor) -> Tensor:
        return self.weighting(gramian)
