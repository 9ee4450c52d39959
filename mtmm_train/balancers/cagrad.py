"""CAGrad (Liu et al., 2021): the best worst-task improvement near the average gradient."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mtmm_train.balancers import qp
from mtmm_train.balancers.aggregation import GradientAggregation
from mtmm_train.balancers.base import check_number


class CAGrad(GradientAggregation):
    """Conflict-averse gradient descent: the update ``d`` within ``c |g0|`` of the average
    gradient ``g0`` that maximises the smallest task improvement ``min_i g_i . d``.

    Solved in its dual (Algorithm 1 of `Conflict-Averse Gradient Descent for Multi-task
    Learning <https://arxiv.org/abs/2110.14048>`_): ``w* = argmin_{w in simplex} g_w . g0 +
    c |g0| |g_w|``, then ``d = g0 + c |g0| g_w* / |g_w*|``, all in terms of the Gramian. The
    paper's code solves the dual with SciPy's SLSQP, which stops about 1e-6 (relative) short of
    the optimum, and far more for a task whose gradient is 1,000 times smaller than the others;
    torchjd's CAGrad needs cvxpy (5-7 ms a step on this project's CPU). Here it is solved exactly,
    in the basis of unit gradients, by a root search over ``|g_w|`` with one quadprog solve per
    step and a closed form on the final active set (:func:`mtmm_train.balancers.qp.conflict_averse`).

    Args:
        tasks: task names (passed in by the recipe).
        mode: ``representation`` or ``parameters`` (see :class:`GradientAggregation`).
        c: radius of the ball around ``g0``, relative to ``|g0|`` (0: the mean gradient).
        tol: the root search's tolerance on ``log |g_w|`` (the closed form then makes the answer
            exact whenever the search found the right active set).
    """

    def __init__(self, tasks: list[str], mode: str = "representation", c: float = 0.4, tol: float = 1e-12) -> None:
        super().__init__(tasks, mode)
        check_number("c", c)
        check_number("tol", tol, positive=True)
        self.c, self.tol = float(c), float(tol)

    def weights(self, gramian: Tensor) -> Tensor:
        return self.primal_dual(gramian)[0]

    def primal_dual(self, gramian: Tensor) -> tuple[Tensor, Tensor]:
        """The update's weights and the dual's: ``(lam, w)``, ``d = lam @ J`` and ``w`` in the simplex.

        ``w`` certifies ``d``: ``min_i g_i . d <= g_w . g0 + c |g0| |g_w|`` for every ``d`` in the
        ball, with equality at the optimum (the duality gap is 0).
        """
        G = gramian.numpy()
        m = G.shape[0]
        mean = np.full(m, 1.0 / m)
        g0 = np.sqrt(max(mean @ G @ mean, 0.0))
        if g0 == 0 or self.c == 0:  # d = g0: the ball is a point, and the worst task certifies it
            return torch.from_numpy(mean), torch.from_numpy(np.eye(m)[int(np.argmin(G @ mean))])
        nonzero, norms, cosines = qp.cosines(G)
        q = (G @ mean)[nonzero] / (norms * g0)  # cos(g_i, g0)
        gamma = qp.conflict_averse(cosines, norms, q, self.c, self.tol, zero_rows=not nonzero.all())
        # With a zero gradient the worst improvement is at most 0: it is 0 unless the dual's value
        # over the others, proportional to gamma.q + c, is negative.
        if gamma is not None and not nonzero.all() and gamma @ q + self.c >= 0:
            gamma = None
        if gamma is None:
            # A convex combination of the gradients vanishes: no update improves every task, and the
            # best worst-task improvement is 0, reached by every d in the ball with J d >= 0 (there
            # is one, by duality). The closest to g0 is g0's projection onto the dual cone of the
            # gradients: g0 itself when it conflicts with no task, e.g. beside a task whose gradient
            # is zero in this batch. (d = 0, torchjd's answer, is outside the ball when c < 1.)
            return torch.from_numpy(qp.project_onto_dual_cone(G, mean)), torch.from_numpy(qp.min_norm_point(G))
        lam, w = mean.copy(), np.zeros(m)
        lam[nonzero] += self.c * g0 * gamma / norms  # d = g0 + c |g0| sum_i gamma_i g_i / |g_i|
        w[nonzero] = gamma / norms
        return torch.from_numpy(lam), torch.from_numpy(w / w.sum())

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, c={self.c}"
