"""The fusion contract and the helpers the fusions share."""

from __future__ import annotations

import abc

import torch
from torch import Tensor, nn

from mtmm_train.encoders.base import check_sizes


class Fusion(nn.Module):
    """Base of all fusion methods.

    A fusion maps per-modality embeddings ``embs[m]`` ``(B, D_m)`` (or tokens ``(B, L_m, D_m)``
    when ``wants_tokens``) and presence masks ``present[m]`` ``(B,)`` to one representation
    ``(B, out_dim)``. Absent modalities must not influence the result. ``out_dim`` is
    computed from ``in_dims``, never typed by the user.

    A decision-level fusion (:class:`DecisionFusion`) returns one representation per modality
    ``(B, M, out_dim)`` instead, and fuses the heads' decisions.

    Settings are checked in the constructor; a refusal is a
    :class:`~mtmm_train.errors.SettingError` (the builder names the config key).

    Args:
        in_dims: modality -> embedding size, in the model's modality order.
    """

    wants_tokens: bool = False
    out_dim: int

    def __init__(self, in_dims: dict[str, int]) -> None:
        super().__init__()
        self.modalities = list(in_dims)
        self.in_dims = dict(in_dims)

    def forward(self, embs: dict[str, Tensor], present: dict[str, Tensor]) -> Tensor:
        """Fuse the embeddings of the present modalities.

        Args:
            embs: modality -> ``(B, D_m)``, or ``(B, L_m, D_m)`` when ``wants_tokens``.
            present: modality -> bool ``(B,)``.

        Returns:
            ``(B, out_dim)`` (``(B, M, out_dim)`` for a :class:`DecisionFusion`).
        """
        raise NotImplementedError

    def mask(self, present: dict[str, Tensor]) -> Tensor:
        """The presence masks stacked in modality order, bool ``(B, M)``."""
        return torch.stack([present[m] for m in self.modalities], 1)

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters every task depends on (all of them, unless a fusion holds per-task ones)."""
        return list(self.parameters())

    def extra_repr(self) -> str:
        return f"in_dims={self.in_dims}, out_dim={self.out_dim}"


class DecisionFusion(Fusion, metaclass=abc.ABCMeta):
    """Base of decision-level (late) fusions: every modality decides alone, then the decisions are fused.

    ``forward`` returns one representation per modality, ``(B, M, out_dim)`` in modality order,
    instead of one fused representation. :class:`~mtmm_train.model.MultiModalModel` then runs the
    MTL architecture on each modality's representation alone (``B * M`` rows) and a head per
    modality per task (each a fresh copy of the task's head), and hands the decisions to
    :meth:`combine`. Before that, at construction, it calls :meth:`add_tasks` with the task names,
    so that per-task parameters exist before the optimizer does.

    A modality that is absent from a sample must not influence its combined decision.
    """

    def forward(self, embs: dict[str, Tensor], present: dict[str, Tensor]) -> Tensor:
        """Each modality's representation, stacked: ``(B, M, out_dim)`` (``embs[m]`` is ``(B, D_m)``)."""
        raise NotImplementedError

    @abc.abstractmethod
    def add_tasks(self, tasks: list[str]) -> None:
        """Create what the fusion holds per task (e.g. learned combination weights); called once by the model.

        Args:
            tasks: the task names, in the model's order.
        """

    @abc.abstractmethod
    def combine(self, decisions: dict[str, Tensor], present: dict[str, Tensor]) -> dict[str, Tensor]:
        """Fuse each task's per-modality decisions into one.

        Args:
            decisions: task -> the heads' outputs per modality, ``(B, M, K)`` in modality order
                (``K``: the task's outputs, e.g. logits).
            present: modality -> bool ``(B,)``.

        Returns:
            task -> ``(B, K)``; absent modalities must not influence it (zeros for a sample
            without any modality).
        """


class ProjectedFusion(Fusion):
    """A fusion that first projects every modality to a common size ``dim``.

    Args:
        in_dims: modality -> embedding size.
        dim: the common size; ``None`` keeps the size when all modalities share it and
            otherwise projects to the largest.
    """

    always_project: bool = False

    def __init__(self, in_dims: dict[str, int], dim: int | None) -> None:
        super().__init__(in_dims)
        check_sizes(dim=dim)
        sizes = set(in_dims.values())
        needs_projection = self.always_project or dim is not None or len(sizes) > 1
        self.out_dim = dim if dim is not None else max(sizes)
        self.proj = nn.ModuleDict({
            m: nn.Linear(d, self.out_dim) if needs_projection else nn.Identity() for m, d in in_dims.items()
        })

    def stacked(self, embs: dict[str, Tensor], present: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Projected embeddings ``(B, M, D)`` and the presence mask ``(B, M, 1)`` as floats."""
        z = torch.stack([self.proj[m](embs[m]) for m in self.modalities], 1)
        mask = self.mask(present).unsqueeze(-1).to(z.dtype)
        return z, mask


def masked_softmax(scores: Tensor, mask: Tensor, dim: int) -> Tensor:
    """Softmax of ``scores`` over the entries where ``mask`` is True, zero elsewhere.

    A row without any True entry gets all zeros (not NaN), so a sample without modalities
    fuses to zeros instead of poisoning the batch.

    Args:
        scores: any shape.
        mask: bool, broadcastable to ``scores``.
        dim: the dimension to normalise over.

    Returns:
        Weights of the shape of ``scores``.
    """
    mask = mask.expand_as(scores)
    # finfo.min rather than -inf: an all-masked row must not turn into NaN.
    weights = scores.masked_fill(~mask, torch.finfo(scores.dtype).min).softmax(dim)
    return weights * mask.to(weights.dtype)
