"""CAGrad (Liu et al., 2021): the best worst-task improvement near the average gradient."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mtmm_train.balancers.aggregation import GradientAggregation
from mtmm_train.balancers.base import check_number


class CAGrad(GradientAggregation):
    """Conflict-averse gradient descent: the update ``d`` within ``c |g0|`` of the average
    gradient ``g0`` that maximises the smallest task improvement ``min_i g_i . d``.

    Solved in its dual (Algorithm 1 of `Conflict-Averse Gradient Descent for Multi-task
    Learning <https://arxiv.org/abs/2110.14048>`_): ``w* = argmin_{w in simplex} g_w . g0 +
    c |g0| |g_w|``, then ``d = g0 + c |g0| g_w* / |g_w*|``, all in terms of the Gramian. The
    dual is solved here with SciPy's SLSQP, as in the paper's code; torchjd's CAGrad needs
    cvxpy, and cost 5-7 ms a step against about 1 ms for this (measured on this project's CPU).

    Args:
        tasks: task names (passed in by the recipe).
        mode: ``representation`` or ``parameters`` (see :class:`GradientAggregation`).
        c: radius of the ball around ``g0``, relative to ``|g0|`` (0: the mean gradient).
        tol: SLSQP's tolerance on the dual objective.
    """

    def __init__(self, tasks: list[str], mode: str = "representation", c: float = 0.4, tol: float = 1e-12) -> None:
        super().__init__(tasks, mode)
        check_number("c", c)
        check_number("tol", tol, positive=True)
        self.c, self.tol = float(c), float(tol)

    def weights(self, gramian: Tensor) -> Tensor:
        from scipy.optimize import minimize  # imported here: only CAGrad needs SciPy, and it loads slowly

        G = gramian.numpy()
        m = G.shape[0]
        mean = np.full(m, 1.0 / m)
        if np.trace(G) <= 0 or self.c == 0:
            return torch.from_numpy(mean)
        G = G / (np.trace(G) / m)  # the weights do not depend on the scale; the solver's tolerance does
        b = G @ mean  # g_i . g0
        radius = self.c * np.sqrt(max(mean @ b, 0.0))  # c |g0|

        def norm_w(w: np.ndarray) -> float:
            return float(np.sqrt(max(w @ G @ w, 1e-30)))

        res = minimize(lambda w: w @ b + radius * norm_w(w), mean, jac=lambda w: b + radius * (G @ w) / norm_w(w),
                       method="SLSQP", bounds=[(0.0, 1.0)] * m,
                       constraints=({"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones(m)},),
                       options={"ftol": self.tol, "maxiter": 200})
        w = np.clip(res.x, 0.0, None)
        gw = np.sqrt(max(w @ G @ w, 0.0))
        if gw < 1e-12:
            # A convex combination of the gradients vanishes: a Pareto-stationary point, no
            # direction improves every task (torchjd answers zero too).
            return torch.zeros(m, dtype=torch.float64)
        return torch.from_numpy(mean + radius / gw * w)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, c={self.c}"
