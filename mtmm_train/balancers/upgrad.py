"""UPGrad (Quinton & Rey, 2024): each task gradient projected onto the dual cone of all of them."""

from __future__ import annotations

from torch import Tensor

from mtmm_train.balancers import torchjd_api
from mtmm_train.balancers.aggregation import GradientAggregation
from mtmm_train.balancers.base import check_number


class UPGrad(GradientAggregation):
    """Unconflicting projection of gradients: the mean of the task gradients, each projected
    onto the dual cone of all of them (so the update conflicts with no task).

    Computed by torchjd's ``UPGradWeighting`` (a quadratic program per task, solved by quadprog).
    See `Jacobian Descent for Multi-Objective Optimization <https://arxiv.org/abs/2406.16232>`_.

    Args:
        tasks: task names (passed in by the recipe).
        mode: ``representation`` or ``parameters`` (see :class:`GradientAggregation`).
        norm_eps: below this squared Frobenius norm the Gramian counts as zero.
        reg_eps: added to the diagonal of the normalised Gramian so that the QP is strictly
            convex; it perturbs the answer by about this much (use ~1e-12 for exact answers).
    """

    def __init__(self, tasks: list[str], mode: str = "representation", norm_eps: float = 1e-4,
                 reg_eps: float = 1e-4) -> None:
        super().__init__(tasks, mode)
        check_number("norm_eps", norm_eps)
        check_number("reg_eps", reg_eps)
        self.norm_eps, self.reg_eps = float(norm_eps), float(reg_eps)
        self.weighting = torchjd_api.gramian_weighting("upgrad", norm_eps=self.norm_eps, reg_eps=self.reg_eps)

    def weights(self, gramian: Tensor) -> Tensor:
        return self.weighting(gramian)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, norm_eps={self.norm_eps}, reg_eps={self.reg_eps}"
