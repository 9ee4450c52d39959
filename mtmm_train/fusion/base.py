"""The fusion contract and the helpers the fusions share."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mtmm_train.encoders.base import check_sizes


class Fusion(nn.Module):
    """Base of all fusion methods.

    A fusion maps per-modality embeddings ``embs[m]`` ``(B, D_m)`` (or tokens ``(B, L_m, D_m)``
    when ``wants_tokens``) and presence masks ``present[m]`` ``(B,)`` to one representation
    ``(B, out_dim)``. Absent modalities must not influence the result. ``out_dim`` is
    computed from ``in_dims``, never typed by the user.

    A fusion with ``decides = True`` (late fusion) returns one representation per modality
    ``(B, M, out_dim)`` instead; the model then runs the MTL architecture and a head per
    modality per task on each, and calls ``fusion.combine`` to fuse the per-task decisions.

    Args:
        in_dims: modality -> embedding size, in the model's modality order.
    """

    wants_tokens: bool = False
    decides: bool = False
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
            ``(B, out_dim)`` (``(B, M, out_dim)`` when ``decides``).
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
        check_sizes("fusion", dim=dim)
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
