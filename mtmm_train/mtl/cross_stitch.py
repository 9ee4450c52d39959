"""Cross-stitch networks (Misra et al., 2016): one column per task, mixed after every layer."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mtmm_train.encoders.base import check_sizes, mlp
from mtmm_train.errors import KEY, SettingError
from mtmm_train.mtl.base import MTLArchitecture


class CrossStitch(MTLArchitecture):
    """Soft parameter sharing: each task has its own MLP column, and after every layer a learned
    ``T x T`` cross-stitch matrix mixes the columns: ``h_t <- sum_s a_ts h_s``
    (`Cross-stitch Networks for Multi-task Learning <https://arxiv.org/abs/1604.03539>`_).
    Each matrix starts at ``self_weight`` on the diagonal and shares the rest evenly.

    Every column feeds every task through the stitches, so all of it is shared for gradient
    aggregation; ``shared`` is the concatenation of the columns' last outputs, and only the
    last stitch (row ``t`` feeds task ``t`` alone) is task-specific.

    Args:
        in_dim: size of the fused representation (passed in by the recipe).
        tasks: task names (passed in by the recipe).
        hidden_dims: each column's layer sizes; the last is ``out_dim``.
        self_weight: initial diagonal of the stitch matrices, in (0, 1].
        dropout: dropout after each layer.
    """

    def __init__(self, in_dim: int, tasks: list[str], hidden_dims: tuple[int, ...] = (128,),
                 self_weight: float = 0.9, dropout: float = 0.0) -> None:
        super().__init__(in_dim, tasks)
        if not hidden_dims:
            raise SettingError("hidden_dims", f"is empty; give the columns at least one layer, e.g. "
                               f"{KEY}.hidden_dims=[128]")
        check_sizes(hidden_dims=list(hidden_dims))
        if not isinstance(self_weight, (int, float)) or not 0 < self_weight <= 1:
            raise SettingError("self_weight", f"must be in (0, 1], found {self_weight!r}")
        T, dims = len(self.tasks), [in_dim, *hidden_dims]
        self.out_dim = dims[-1]
        self.columns = nn.ModuleList(
            nn.ModuleList(mlp([a, b], dropout) for _ in range(T)) for a, b in zip(dims[:-1], dims[1:], strict=True))
        other = (1 - self_weight) / (T - 1) if T > 1 else 0.0
        init = torch.full((T, T), other).fill_diagonal_(self_weight)
        self.stitches = nn.ParameterList(nn.Parameter(init.clone()) for _ in hidden_dims)

    def forward(self, z: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        B, T = z.shape[0], len(self.tasks)
        h = [z] * T
        for layer, stitch in zip(self.columns[:-1], self.stitches[:-1], strict=True):
            out = torch.stack([column(x) for column, x in zip(layer, h, strict=True)], 1)  # (B, T, D)
            h = list(torch.einsum("ts,bsd->btd", stitch.to(out.dtype), out).unbind(1))
        shared = torch.cat([column(x) for column, x in zip(self.columns[-1], h, strict=True)], 1)  # (B, T*D)
        out = shared.view(B, T, -1)
        # The last stitch, one task at a time: no operation after the cut may serve two tasks
        # (parameter-space aggregation backpropagates each task's loss separately).
        stitch = self.stitches[-1].to(out.dtype)
        return {t: torch.einsum("s,bsd->bd", stitch[i], out) for i, t in enumerate(self.tasks)}, shared

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.columns.parameters()) + list(self.stitches[:-1])

    def gate_weights(self) -> dict[str, Tensor]:
        last = self.stitches[-1].detach()
        return {f"{t}/{s}": last[i, j] for i, t in enumerate(self.tasks) for j, s in enumerate(self.tasks)}
