"""Nash-MTL (Navon et al., 2022): the Nash bargaining solution between the tasks."""

from __future__ import annotations

import torch
from torch import Tensor

from mtmm_train.balancers import qp
from mtmm_train.balancers.aggregation import GradientAggregation
from mtmm_train.balancers.base import check_number


class NashMTL(GradientAggregation):
    """Weights ``a > 0`` with ``(G a)_i = 1 / a_i``: each task's improvement ``g_i . d`` is
    inversely proportional to its weight (`Multi-Task Learning as a Bargaining Game
    <https://arxiv.org/abs/2202.01017>`_). The update is invariant to the gradients' scale,
    so under fp16 the Jacobian is unscaled before the solve (the base class does so).

    The paper approximates the solution by a sequence of convex programs (cvxpy and ECOS; so
    does torchjd, at 55-75 ms a step on this project's CPU, with a fixed number of tasks). The
    equation is the stationarity condition of the strictly convex ``1/2 a^T G a - sum log a``,
    which a damped Newton method solves to machine precision in a few steps of a ``T x T``
    system. It is solved in the basis of unit gradients: with ``s_i = |g_i|`` and ``b = s * a``,
    the equation reads ``C b = 1 / b`` for the cosines ``C = D^-1/2 G D^-1/2``, so the ridge below is
    relative to each task's own gradient (added to the Gramian divided by its mean diagonal, it
    moved the update by 0.25% at a norm ratio of 100 and swamped the small task at 1,000: for
    ``J = diag(1, 1000)`` the update was ``(0.82, 1)``, not ``(1, 1)``). A task whose gradient is
    zero has no solution (``0 = 1 / a_i``); it gets weight 0 and the others solve the equation
    among themselves.
    Gradient clipping, the paper's ``max_norm``, is ``trainer.gradient_clip_norm``.

    Args:
        tasks: task names (passed in by the recipe).
        mode: ``representation`` or ``parameters`` (see :class:`GradientAggregation`).
        ridge: added to the diagonal of the cosines ``C`` (each gradient's squared norm, relative),
            so that a solution exists when the gradients are linearly dependent; opposite
            gradients then give a (near) zero update.
        max_iters: Newton iterations at most.
    """

    def __init__(self, tasks: list[str], mode: str = "representation", ridge: float = 1e-6,
                 max_iters: int = 50) -> None:
        super().__init__(tasks, mode)
        check_number("ridge", ridge, positive=True)
        check_number("max_iters", max_iters, positive=True, integer=True)
        self.ridge, self.max_iters = float(ridge), max_iters

    def weights(self, gramian: Tensor) -> Tensor:
        out = torch.zeros(gramian.shape[0], dtype=torch.float64)
        nonzero, norms, cosines = qp.cosines(gramian.numpy())
        if not nonzero.any():
            return out
        G = torch.from_numpy(cosines) + self.ridge * torch.eye(len(cosines), dtype=torch.float64)

        def objective(a: Tensor) -> Tensor:
            return 0.5 * a @ G @ a - a.log().sum()

        a = G.diagonal().rsqrt()  # the answer when the gradients are orthogonal
        for _ in range(self.max_iters):
            grad = G @ a - 1 / a
            if (a * grad).abs().max() < 1e-15:  # a_i (G a)_i = 1 to rounding
                break
            step = torch.linalg.solve(G + torch.diag(a.pow(-2)), -grad)
            t, f0, slope = 1.0, objective(a), grad @ step  # -slope: the squared Newton decrement
            if -slope < 1e-28:  # nothing left that rounding lets Newton see
                break
            # The objective is self-concordant: with a decrement below 1/4 full steps converge
            # quadratically (and stay in a > 0). Above it, backtrack (Armijo); near the answer the
            # decrease falls below the objective's rounding, so Armijo alone would stall at ~1e-8.
            while -slope >= 0.0625 and ((a + t * step).min() <= 0
                                        or objective(a + t * step) > f0 + 1e-4 * t * slope):
                t /= 2
                if t < 1e-12:
                    break
            a = a + t * step
        out[nonzero] = a / torch.from_numpy(norms)  # back from b = s * a
        return out

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, ridge={self.ridge}"
