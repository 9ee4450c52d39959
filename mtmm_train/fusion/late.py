"""Late fusion: every modality decides alone, then the per-task decisions are combined."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mtmm_train.errors import SettingError
from mtmm_train.fusion.base import DecisionFusion, ProjectedFusion, masked_softmax

COMBINERS = ("mean", "learned")


class LateFusion(ProjectedFusion, DecisionFusion):
    """``y_t = sum_m a_{t,m} f_{t,m}(h_m)`` over the present modalities.

    ``forward`` returns each modality's projected embedding ``h_m`` stacked ``(B, M, D)``;
    the model runs the MTL architecture and a head per modality per task ``f_{t,m}`` on each
    modality alone, then :meth:`combine` mixes the decisions (head outputs: logits for
    classification). ``a_{t,m}`` is uniform over the present modalities (``mean``) or a
    softmax of learned per-task scores (``learned``), renormalised over the present ones.
    No modality sees another before the decision, so late fusion cannot learn interactions
    between modalities; it is the baseline that degrades most gracefully when one is missing.

    Args:
        in_dims: modality -> embedding size (passed in by the recipe).
        dim: common size (``None``: see :class:`ProjectedFusion`).
        combine: ``mean`` or ``learned``.

    Raises:
        SettingError: ``combine`` is not one of ``COMBINERS``.
    """

    def __init__(self, in_dims: dict[str, int], dim: int | None, combine: str) -> None:
        super().__init__(in_dims, dim)
        if combine not in COMBINERS:
            raise SettingError("combine", f"must be one of {', '.join(COMBINERS)}, found '{combine}'")
        self.combine_mode = combine
        self.task_scores = nn.ParameterDict()

    def add_tasks(self, tasks: list[str]) -> None:
        """Create the per-task combination scores (``combine: learned``); see :meth:`DecisionFusion.add_tasks`."""
        if self.combine_mode == "learned":
            for t in tasks:
                self.task_scores[t] = nn.Parameter(torch.zeros(len(self.modalities)))

    def forward(self, embs: dict[str, Tensor], present: dict[str, Tensor]) -> Tensor:
        return torch.stack([self.proj[m](embs[m]) for m in self.modalities], 1)  # (B, M, D)

    def combine(self, decisions: dict[str, Tensor], present: dict[str, Tensor]) -> dict[str, Tensor]:
        """``sum_m a_{t,m} decisions[t][:, m]`` over the present modalities (see :meth:`DecisionFusion.combine`)."""
        mask = self.mask(present)  # (B, M)
        out = {}
        for t, d in decisions.items():
            scores = self.task_scores[t] if t in self.task_scores else torch.zeros(mask.shape[1], device=d.device)
            weights = masked_softmax(scores.to(d.dtype).expand(mask.shape), mask, dim=1)  # (B, M)
            out[t] = (weights.unsqueeze(-1) * d).sum(1)  # (B, K)
        return out

    def shared_parameters(self) -> list[nn.Parameter]:
        """The projections; the per-task scores belong to their task alone."""
        return list(self.proj.parameters())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, combine={self.combine_mode!r}"
