"""MGDA (Désidéri, 2012; Sener & Koltun, 2018): the minimum-norm point of the gradients' hull."""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from mtmm_train.balancers import qp, torchjd_api
from mtmm_train.balancers.aggregation import GradientAggregation
from mtmm_train.balancers.base import check_number

log = logging.getLogger("mtmm_train")


class MGDA(GradientAggregation):
    """Multiple-gradient descent: the convex combination of the task gradients with the
    smallest norm, a common descent direction (zero at a Pareto-stationary point).

    Computed here exactly: ``min a^T G a`` over the simplex, a quadratic program solved by
    quadprog in the basis of unit gradients (:func:`mtmm_train.balancers.qp.min_norm_point`).
    torchjd's ``MGDAWeighting`` runs Frank-Wolfe (Algorithm 2 of `Multi-Task Learning as
    Multi-Objective Optimization <https://arxiv.org/abs/1810.04650>`_), exact for two tasks only:
    with three or more it stops up to 6% away from the min-norm point (for the gradients
    ``(1, 0), (-1, 0), (0, 1)`` it answers ``d = (-0.0024, 0.049)``, where the exact one is 0). It
    remains the fallback should quadprog fail (it has not on any input tried).

    Args:
        tasks: task names (passed in by the recipe).
        mode: ``representation`` or ``parameters`` (see :class:`GradientAggregation`).
        epsilon: the Frank-Wolfe fallback stops when its step size falls below this.
        max_iters: at most this many Frank-Wolfe iterations (fallback).
    """

    def __init__(self, tasks: list[str], mode: str = "representation", epsilon: float = 1e-3,
                 max_iters: int = 100) -> None:
        super().__init__(tasks, mode)
        check_number("epsilon", epsilon, positive=True)
        check_number("max_iters", max_iters, positive=True, integer=True)
        self.epsilon, self.max_iters = float(epsilon), max_iters
        self.weighting = torchjd_api.gramian_weighting("mgda", epsilon=self.epsilon, max_iters=max_iters)

    def weights(self, gramian: Tensor) -> Tensor:
        try:
            return torch.from_numpy(qp.min_norm_point(gramian.numpy()))
        except ValueError as e:  # quadprog: "matrix G is not positive definite", numpy's LinAlgError
            log.warning("MGDA: quadprog failed (%s); Frank-Wolfe (torchjd) answers this step, approximately", e)
            return self.weighting(gramian)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, epsilon={self.epsilon}, max_iters={self.max_iters}"
