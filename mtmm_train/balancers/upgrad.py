"""UPGrad (Quinton & Rey, 2024): each task gradient projected onto the dual cone of all of them."""

from __future__ import annotations

import torch
from torch import Tensor

from mtmm_train.balancers import qp
from mtmm_train.balancers.aggregation import GradientAggregation
from mtmm_train.balancers.base import check_number


class UPGrad(GradientAggregation):
    """Unconflicting projection of gradients: the mean of the task gradients, each projected
    onto the dual cone of all of them (so the update conflicts with no task).

    The projection of ``g_i`` is ``J^T v`` with ``v = argmin v^T G v s.t. v >= e_i`` (Proposition 1
    of `Jacobian Descent for Multi-Objective Optimization <https://arxiv.org/abs/2406.16232>`_), and
    the update is the mean of the projections. torchjd's ``UPGradWeighting`` solves these quadratic
    programs with quadprog on the Gramian divided by its trace plus ``reg_eps``, which swamps a
    gradient far smaller than the others: with norms 1e-3 and 1e3 its update conflicts with the
    small task (cosine -0.6 at ``reg_eps=1e-4``, -0.35 at 1e-12). The same programs are solved here
    with quadprog in the basis of unit gradients, then polished without the ridge on the active set
    quadprog found (:func:`mtmm_train.balancers.qp.dual_cone_projections`): exact up to rounding.

    Args:
        tasks: task names (passed in by the recipe).
        mode: ``representation`` or ``parameters`` (see :class:`GradientAggregation`).
        norm_eps: below this squared Frobenius norm (the Gramian's trace) the gradients count as
            zero and the weights are the mean's, as with torchjd's ``norm_eps``. The threshold is
            absolute, so it breaks scale equivariance (``agg(s J) = s agg(J)``): at torchjd's 1e-4,
            the former default, gradients scaled by 1e-3 (a loss weight, a large batch, late
            training) got the plain mean, conflicts included. The default 0 turns it off: the
            solver works on cosines, so small gradients need no threshold, and all-zero ones get
            the mean's weights anyway (their update is 0).
        reg_eps: added to the diagonal of the Gramian of unit gradients (the cosines) so that the
            QP is strictly convex for quadprog; the answer is then solved again without it on the
            active constraints quadprog found (other ridges are tried if that fails), so it does
            not perturb the answer.
    """

    def __init__(self, tasks: list[str], mode: str = "representation", norm_eps: float = 0.0,
                 reg_eps: float = 1e-4) -> None:
        super().__init__(tasks, mode)
        check_number("norm_eps", norm_eps)
        check_number("reg_eps", reg_eps)
        self.norm_eps, self.reg_eps = float(norm_eps), float(reg_eps)

    def projections(self, gramian: Tensor) -> Tensor:
        """``(m, m)``: row ``i`` the weights of the projection of ``g_i`` onto the dual cone."""
        m = gramian.shape[0]
        if float(gramian.diagonal().sum()) < self.norm_eps:
            return torch.eye(m, dtype=torch.float64)
        return torch.from_numpy(qp.dual_cone_projections(gramian.numpy(), self.reg_eps or None))

    def weights(self, gramian: Tensor) -> Tensor:
        return self.projections(gramian).mean(0)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, norm_eps={self.norm_eps}, reg_eps={self.reg_eps}"
