"""The multi-modal, multi-task model: encoders -> fusion -> MTL architecture -> heads."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from mtmm_train.encoders.base import Encoder
from mtmm_train.errors import check
from mtmm_train.fusion.base import DecisionFusion, Fusion
from mtmm_train.mtl.base import MTLArchitecture

MISSING_POLICIES = ("ignore", "learned")


class MultiModalModel(nn.Module):
    """Composes the parts; ``forward(inputs, present) -> (preds, shared)``.

    Args:
        encoders: modality -> encoder.
        fusion: fuses the encoders' outputs (pooled, or tokens if ``fusion.wants_tokens``).
            A decision-level fusion (:class:`~mtmm_train.fusion.base.DecisionFusion`, late
            fusion) instead gets the MTL architecture applied to each modality alone, a copy of
            each head per modality, and combines the decisions.
        mtl: the multi-task architecture on the fused representation.
        heads: task -> head on the task's features.
        missing: ``"ignore"``: fusion skips absent modalities (by the masks);
            ``"learned"``: an absent modality's embedding is replaced by a learned vector and
            the fusion sees every modality as present.
        modality_dropout: in training, drop each present modality of a sample with this
            probability (never all of a sample's modalities).
    """

    def __init__(self, encoders: dict[str, Encoder], fusion: Fusion, mtl: MTLArchitecture,
                 heads: dict[str, nn.Module], missing: str = "ignore", modality_dropout: float = 0.0) -> None:
        super().__init__()
        check(missing in MISSING_POLICIES,
              f"model.missing must be one of {', '.join(MISSING_POLICIES)}, found '{missing}'")
        check(0.0 <= modality_dropout < 1.0, f"model.modality_dropout must be in [0, 1), found {modality_dropout}")
        self.encoders = nn.ModuleDict(encoders)
        self.fusion = fusion
        self.mtl = mtl
        if isinstance(fusion, DecisionFusion):
            # A head per modality per task, each freshly initialised.
            fusion.add_tasks(list(heads))
            heads = {t: nn.ModuleDict({m: _fresh_copy(h) for m in encoders}) for t, h in heads.items()}
        self.heads = nn.ModuleDict(heads)
        self.missing = missing
        self.modality_dropout = modality_dropout
        if missing == "learned":
            self.missing_embeddings = nn.ParameterDict({
                m: nn.Parameter(torch.zeros(e.out_dim)) for m, e in encoders.items()
            })

    def drop_modalities(self, present: dict[str, Tensor]) -> dict[str, Tensor]:
        """Randomly drop present modalities, keeping at least one per sample."""
        names = list(present)
        p = torch.stack([present[m] for m in names], 1)  # (B, M)
        keep = torch.rand(p.shape, device=p.device) >= self.modality_dropout
        dropped = p & keep
        # A sample that would lose all its modalities keeps what it had.
        dropped = torch.where(dropped.any(1, keepdim=True), dropped, p)
        return {m: dropped[:, i] for i, m in enumerate(names)}

    def embed(self, inputs: dict[str, Tensor],
              present: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Encode every modality; apply the missing-modality policy."""
        tokens = self.fusion.wants_tokens
        embs = {m: (enc.tokens(inputs[m]) if tokens else enc(inputs[m])) for m, enc in self.encoders.items()}
        if self.missing == "learned":
            for m in embs:
                mask = present[m].view(-1, *([1] * (embs[m].dim() - 1)))
                embs[m] = torch.where(mask, embs[m], self.missing_embeddings[m].to(embs[m].dtype))
            present = {m: torch.ones_like(p) for m, p in present.items()}
        return embs, present

    def forward(self, inputs: dict[str, Tensor], present: dict[str, Tensor]) -> tuple[dict[str, Tensor], Tensor]:
        """Predict every task.

        Args:
            inputs: modality -> ``(B, *shape)``.
            present: modality -> bool ``(B,)``.

        Returns:
            ``(preds, shared)``: task -> head output ``(B, dim)``, and the last shared tensor.
        """
        z, present = self.represent(inputs, present)
        return self.predict(z, present)

    def represent(self, inputs: dict[str, Tensor], present: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Modality dropout (in training), the encoders, the missing-modality policy and the fusion.

        Returns:
            ``(z, present)``: the fused representation ``(B, D)`` (``(B, M, D)`` for late fusion)
            and the presence masks the fusion saw.
        """
        if self.training and self.modality_dropout > 0:
            present = self.drop_modalities(present)
        embs, present = self.embed(inputs, present)
        return self.fusion(embs, present), present

    def predict(self, z: Tensor, present: dict[str, Tensor]) -> tuple[dict[str, Tensor], Tensor]:
        """The MTL architecture and the heads on the fused ``z``: ``(preds, shared)``."""
        if isinstance(self.fusion, DecisionFusion):
            return self.decide_per_modality(z, present)
        features, shared = self.mtl(z)
        preds = {t: head(features[t]) for t, head in self.heads.items()}
        return preds, shared

    def decide_per_modality(self, z: Tensor, present: dict[str, Tensor]) -> tuple[dict[str, Tensor], Tensor]:
        """Decision-level fusion: the MTL architecture and per-modality heads on each modality, then
        :meth:`DecisionFusion.combine <mtmm_train.fusion.base.DecisionFusion.combine>`.

        Args:
            z: per-modality representations ``(B, M, D)``.
            present: modality -> bool ``(B,)`` (after the missing-modality policy).

        Returns:
            ``(preds, shared)``; ``shared`` is the MTL architecture's shared tensor over the
            ``B * M`` (sample, modality) rows.
        """
        b, m, d = z.shape
        features, shared = self.mtl(z.reshape(b * m, d))
        decisions = {}
        for t, heads in self.heads.items():
            f = features[t].reshape(b, m, -1)  # (B, M, F)
            decisions[t] = torch.stack([heads[name](f[:, i]) for i, name in enumerate(self.fusion.modalities)], 1)
        return self.fusion.combine(decisions, present), shared

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters every task depends on: encoders, fusion and the MTL architecture's shared part."""
        params = list(self.encoders.parameters()) + self.fusion.shared_parameters()
        if self.missing == "learned":
            params += list(self.missing_embeddings.parameters())
        return params + self.mtl.shared_parameters()


class CompiledRepresentation(nn.Module):
    """A model whose encoders and fusion are compiled (``torch.compile``) and whose MTL
    architecture and heads run eagerly; ``forward`` as :class:`MultiModalModel`'s.

    A compiled graph hands back its outputs side by side: of a whole compiled model, ``shared``
    and the predictions come out as siblings, and the gradient of a task's loss with respect to
    ``shared`` is None. Balancers that differentiate there (``Balancer.uses_shared_gradient``:
    gradient aggregation, GradNorm) and the gradient-cosine log would silently see zeros; with
    the compiled part ending at the fusion, ``shared`` stays a node of the autograd graph
    between it and the losses. The encoders and fusion hold most of the compute.

    Args:
        model: the model (its parameters are this module's).
        mode: ``torch.compile``'s mode (None: the default).
    """

    def __init__(self, model: MultiModalModel, mode: str | None = None) -> None:
        super().__init__()
        self.model = model
        self.compiled_represent = torch.compile(model.represent, mode=mode)

    def forward(self, inputs: dict[str, Tensor], present: dict[str, Tensor]) -> tuple[dict[str, Tensor], Tensor]:
        z, present = self.compiled_represent(inputs, present)
        return self.model.predict(z, present)


def _fresh_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` with every layer's parameters drawn anew."""
    clone = copy.deepcopy(module)
    for layer in clone.modules():
        if hasattr(layer, "reset_parameters"):
            layer.reset_parameters()
    return clone
