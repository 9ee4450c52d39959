"""MGDA (Désidéri, 2012; Sener & Koltun, 2018): the minimum-norm point of the gradients' hull."""

from __future__ import annotations

from torch import Tensor

from mtmm_train.balancers import torchjd_api
from mtmm_train.balancers.aggregation import GradientAggregation
from mtmm_train.balancers.base import check_number


class MGDA(GradientAggregation):
    """Multiple-gradient descent: the convex combination of the task gradients with the
    smallest norm, a common descent direction (zero at a Pareto-stationary point).

    Computed by torchjd's ``MGDAWeighting`` (Frank-Wolfe, Algorithm 2 of
    `Multi-Task Learning as Multi-Objective Optimization <https://arxiv.org/abs/1810.04650>`_);
    exact after one iteration for two tasks.

    Args:
        tasks: task names (passed in by the recipe).
        mode: ``representation`` or ``parameters`` (see :class:`GradientAggregation`).
        epsilon: Frank-Wolfe stops when its step size falls below this.
        max_iters: at most this many Frank-Wolfe iterations.
    """

    def __init__(self, tasks: list[str], mode: str = "representation", epsilon: float = 1e-3,
                 max_iters: int = 100) -> None:
        super().__init__(tasks, mode)
        check_number("epsilon", epsilon, positive=True)
        check_number("max_iters", max_iters, positive=True, integer=True)
        self.epsilon, self.max_iters = float(epsilon), max_iters
        self.weighting = torchjd_api.gramian_weighting("mgda", epsilon=self.epsilon, max_iters=max_iters)

    def weights(self, gramian: Tensor) -> Tensor:
        return self.weighting(gramian)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, epsilon={self.epsilon}, max_iters={self.max_iters}"
