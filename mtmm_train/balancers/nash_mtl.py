"""Nash-MTL (Navon et al., 2022): the Nash bargaining solution between the tasks."""

from __future__ import annotations

import torch
from torch import Tensor

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
    system. Gradient clipping, the paper's ``max_norm``, is ``trainer.gradient_clip_norm``.

    Args:
        tasks: task names (passed in by the recipe).
        mode: ``representation`` or ``parameters`` (see :class:`GradientAggregation`).
        ridge: added to the diagonal of the Gramian normalised to unit mean diagonal, so that a
            solution exists when the gradients are linearly dependent; opposite gradients then
            give a (near) zero update.
        max_iters: Newton iterations at most.
    """

    def __init__(self, tasks: list[str], mode: str = "representation", ridge: float = 1e-6,
                 max_iters: int = 50) -> None:
        super().__init__(tasks, mode)
        check_number("ridge", ridge, positive=True)
        check_number("max_iters", max_iters, positive=True, integer=True)
        self.ridge, self.max_iters = float(ridge), max_iters

    def weights(self, gramian: Tensor) -> Tensor:
        m = gramian.shape[0]
        level = gramian.diagonal().mean()
        if level <= 0:
            return torch.zeros(m, dtype=gramian.dtype)
        G = gramian / level + self.ridge * torch.eye(m, dtype=gramian.dtype)

        def objective(a: Tensor) -> Tensor:
            return 0.5 * a @ G @ a - a.log().sum()

        a = G.diagonal().rsqrt()  # the answer when the gradients are orthogonal
        for _ in range(self.max_iters):
            grad = G @ a - 1 / a
            if grad.abs().max() < 1e-13:
                break
            step = torch.linalg.solve(G + torch.diag(a.pow(-2)), -grad)
            t, f0, slope = 1.0, objective(a), grad @ step
            while (a + t * step).min() <= 0 or objective(a + t * step) > f0 + 1e-4 * t * slope:
                t /= 2
                if t < 1e-12:
                    break
            a = a + t * step
        # G was divided by `level`: (G' a') = 1/a' with G' = G/level gives a = a' / sqrt(level).
        return a / level.sqrt()

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, ridge={self.ridge}"
