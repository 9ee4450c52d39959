"""Gradient aggregation: weights from the Gramian of the per-task gradients, in two spaces."""

from __future__ import annotations

import torch
from torch import Tensor

from mtmm_train.balancers import torchjd_api
from mtmm_train.balancers.base import BalanceContext, Balancer, check_choice, representation_gramian, scaler_scale

MODES = ("representation", "parameters")


class GradientAggregation(Balancer):
    """Base of the methods that combine the rows of the per-task Jacobian ``J`` into one update.

    Every method here is a *weighting*: from the Gramian ``G = J J^T`` it computes weights
    ``w``, and the shared parameters receive ``w @ J``. Task-specific parameters (after the
    shared representation) receive the gradient of their own task's loss, unweighted.

    Two spaces for ``J`` (``mode``):

    * ``representation``: ``J`` holds the gradients of the losses with respect to the shared
      representation (``BalanceContext.shared``). Only the task-specific layers are
      differentiated per task, then one ordinary backward pass carries ``w`` down the shared
      layers: about the cost of a static-weights step.
    * ``parameters``: ``J`` holds the gradients with respect to every shared parameter (one
      backward pass per task through the whole shared network, and memory for ``T`` gradient
      copies): the method's exact definition, several times the cost of a step.

    A task without a labelled sample in the batch is left out (its row is dropped, not
    zeroed); it reports weight 0. Weights are computed in float64 on the CPU, outside
    autocast; under fp16 the Jacobian is unscaled first, and a non-finite one skips the solver
    (the GradScaler then skips the step).

    Args:
        tasks: task names (passed in by the recipe).
        mode: ``representation`` or ``parameters``.
    """

    family = "aggregation"
    uses_shared_gradient = True  # the Jacobian's rows, or torchjd's cut between shared and task parts

    def __init__(self, tasks: list[str], mode: str = "representation") -> None:
        super().__init__(tasks)
        check_choice("mode", mode, MODES)
        self.mode = mode
        # Parameter space: torchjd and this class write the shared parameters' .grad themselves.
        self.writes_grads_directly = mode == "parameters"

    def weights(self, gramian: Tensor) -> Tensor:
        """The method: weights ``(m,)`` from a float64 CPU Gramian ``(m, m)`` of ``m >= 1`` tasks."""
        raise NotImplementedError

    def solve(self, gramian: Tensor) -> Tensor:
        """:meth:`weights` in float64 on the CPU outside autocast; ones if the Gramian is not finite."""
        g = gramian.detach().to("cpu", torch.float64)
        if not torch.isfinite(g).all():
            return torch.ones(g.shape[0], dtype=torch.float64)
        with torch.autocast("cpu", enabled=False):
            return self.weights(g)

    def aggregate(self, jacobian: Tensor) -> Tensor:
        """The aggregated update ``w(J J^T) @ J`` of a Jacobian ``(m, n)`` (in its dtype)."""
        return self.solve(jacobian @ jacobian.T).to(jacobian) @ jacobian

    def backward(self, losses: Tensor, ctx: BalanceContext) -> Tensor:
        device = ctx.shared.device
        scale = scaler_scale(ctx, device)
        scaled = [ctx.scaler.scale(loss) for loss in ctx.separate(losses)]  # one graph per task
        counts = torch.stack([ctx.labeled_counts[t] for t in self.tasks]).float()
        step = self._through_representation if self.mode == "representation" else self._through_parameters
        return step(scaled, counts, ctx, scale).to(device=device, dtype=torch.float32)

    def _weights(self, gramian: Tensor, active: Tensor) -> Tensor:
        """The method's weights from the labelled tasks' rows and columns of a host Gramian; 0 elsewhere."""
        w = torch.zeros(len(active), dtype=torch.float64)
        if active.any():
            w[active] = self.solve(gramian[active][:, active])
        return w

    def _through_representation(self, scaled: list[Tensor], counts: Tensor, ctx: BalanceContext, scale: Tensor
                                ) -> Tensor:
        # Unlabelled tasks give zero rows here; they are dropped from the Gramian on the host.
        rows, gramian = representation_gramian(scaled, ctx.shared, scale)  # (T, B*D) scaled, (T, T)
        gramian = ctx.reduce_gramian(gramian)  # data parallel: every process solves for the same weights
        T = len(self.tasks)
        host = torch.cat([gramian.flatten(), counts]).cpu()  # the step's one read of the device
        active = host[T * T:] > 0
        w = self._weights(host[:T * T].view(T, T), active).to(rows)
        if active.any():
            # One backward of sum_t L_t gives each head its own gradient; the extra term turns the
            # representation's gradient from sum_t J_t into sum_t w_t J_t.
            correction = ((w - 1) @ rows).view_as(ctx.shared).to(ctx.shared.dtype)
            (torch.stack(scaled).sum() + (ctx.shared * correction).sum()).backward()
        return w

    def _through_parameters(self, scaled: list[Tensor], counts: Tensor, ctx: BalanceContext, scale: Tensor
                            ) -> Tensor:
        # The labelled tasks must be known before differentiating: only their losses go in.
        active = counts.cpu() > 0
        if not active.any():
            return torch.zeros(len(self.tasks))
        params = [p for p in ctx.shared_params if p.requires_grad]
        jacobians = torchjd_api.shared_jacobians([s for s, a in zip(scaled, active, strict=True) if a], ctx.shared,
                                                 params, sequential=ctx.amp)
        with torch.autocast(ctx.shared.device.type, enabled=False):
            used = [(p, ctx.reduce(j.flatten(1).float())) for p, j in zip(params, jacobians, strict=True)
                    if j is not None]
            gramian = sum(j @ j.T for _, j in used) / scale**2
            out = torch.zeros(len(self.tasks), dtype=torch.float64)
            out[active] = self.solve(gramian)
            w = out[active].to(device=ctx.shared.device, dtype=torch.float32)
            for p, j in used:
                g = (w @ j).view_as(p).to(p.dtype)
                p.grad = g if p.grad is None else p.grad + g
        return out

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"
