"""The multi-modal, multi-task model: encoders -> fusion -> MTL architecture -> heads."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

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
        #: Modalities whose inputs are already their encoder's outputs (the frozen-feature cache,
        #: :mod:`mtmm_train.feature_cache`): ``(B, D)``, or ``(B, L, D)`` for a fusion that wants tokens.
        self.precomputed: set[str] = set()
        if missing == "learned":
            self.missing_embeddings = nn.ParameterDict({
                m: nn.Parameter(torch.zeros(e.out_dim)) for m, e in encoders.items()
            })

    def train(self, mode: bool = True) -> MultiModalModel:
        """Training or eval mode, as ``nn.Module.train``; a frozen encoder part (``model.encoders.<m>.freeze``,
        :mod:`mtmm_train.finetune`: marked ``keep_eval``) stays in eval mode, so its BatchNorm statistics do not
        change and its dropout stays off."""
        super().train(mode)
        if mode:
            for module in self.modules():
                if getattr(module, "keep_eval", False):
                    module.eval()
        return self

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
        """Encode every modality; apply the missing-modality policy.

        A modality in :attr:`precomputed` is taken as it is. An encoder that skips absent rows
        (:func:`skips_absent`: backbones) sees only the present rows (:func:`encode_present`); otherwise an
        encoder that declares ``uses_presence`` (``cnn``, ``conv1d``: BatchNorm statistics of the present rows)
        gets the modality's mask, ``present[m]`` (after modality dropout), as its second argument.
        """
        tokens = self.fusion.wants_tokens
        embs = {}
        for m, enc in self.encoders.items():
            if m in self.precomputed:
                embs[m] = inputs[m]
            elif skips_absent(enc) and not torch.compiler.is_compiling():
                embs[m] = encode_present(enc, inputs[m], present[m], tokens)
            else:
                args = (inputs[m], present[m]) if getattr(enc, "uses_presence", False) else (inputs[m],)
                embs[m] = enc.tokens(*args) if tokens else enc(*args)
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


def skips_absent(encoder: nn.Module) -> bool:
    """Whether ``encoder`` sees only the present rows: its ``skip_absent`` attribute, where it sets one (True or
    False), else True for a backbone encoder (``encoder.backbone`` is not None), whose forward is costly."""
    flag = getattr(encoder, "skip_absent", None)
    return bool(flag) if flag is not None else getattr(encoder, "backbone", None) is not None


def encode_present(encoder: nn.Module, x: Tensor, present: Tensor, tokens: bool) -> Tensor:
    """Run ``encoder`` on the present rows of ``x`` only; absent rows of the output are zeros (the fusion masks
    them, ``missing=learned`` replaces them).

    Finding the rows is one host synchronisation per call (``nonzero``), which is why only backbone
    encoders opt in: their forward costs far more. When every row is present, the whole batch goes
    through as usual; when none is, :func:`encode_none` stands in.

    Args:
        encoder: the modality's encoder.
        x: its inputs ``(B, *shape)`` (absent rows hold zeros).
        present: bool ``(B,)``, True where the sample has the modality.
        tokens: return the encoder's tokens ``(B, L, D)`` instead of one vector per sample ``(B, D)``.

    Returns:
        The encoder's output for every row of ``x``, zeros where absent.
    """
    rows = present.nonzero().squeeze(1)  # the one host read: the number of present rows
    if rows.numel() == present.shape[0]:
        return encoder.tokens(x) if tokens else encoder(x)
    if rows.numel() == 0:
        return encode_none(encoder, x, tokens)
    part = x.index_select(0, rows)
    out = encoder.tokens(part) if tokens else encoder(part)
    return out.new_zeros((x.shape[0], *out.shape[1:])).index_copy(0, rows, out)


def encode_none(encoder: nn.Module, x: Tensor, tokens: bool) -> Tensor:
    """The encoder's output for a batch in which no row has the modality: zeros ``(B, ...)`` that still depend,
    with a zero weight, on every parameter the encoder uses.

    The encoder runs on the first two rows of ``x`` (the only one of a batch of one), inside
    :func:`frozen_statistics`, so that no normalisation layer learns running statistics from rows that hold no
    data; the output is zeros to which the sum of an empty slice of the encoder's output is added. The
    parameters thus stay in the autograd graph and get gradients of exactly zero (not None: under torchrun,
    DistributedDataParallel needs every parameter it registered to receive one on every rank), whatever the
    gradient arriving from the fusion, and no NaN of the two rows can reach the zeros. No host synchronisation.

    Args:
        encoder: the modality's encoder.
        x: its inputs ``(B, *shape)``, none present.
        tokens: return tokens ``(B, L, D)`` instead of one vector per sample ``(B, D)``.

    Returns:
        Zeros of the shape and dtype the encoder gives for ``B`` rows.
    """
    with frozen_statistics(encoder):
        part = x[:2]  # BatchNorm in training mode refuses one value per channel (vectors, pooled features)
        out = encoder.tokens(part) if tokens else encoder(part)
    return out.new_zeros((x.shape[0], *out.shape[1:])) + out.reshape(-1)[:0].sum()


@contextlib.contextmanager
def frozen_statistics(module: nn.Module) -> Iterator[None]:
    """Within the block, no normalisation layer of ``module`` in training mode updates its running statistics.

    A layer with a ``running_mean`` buffer (BatchNorm*, InstanceNorm* with ``track_running_stats``, timm's
    BatchNorm variants) runs in eval mode, i.e. normalises with its running statistics; a
    :class:`~torch.nn.SyncBatchNorm` stays in training mode, since under torchrun its forward is a collective
    that every rank must join, with a momentum of 0 (its running statistics are kept as they are). Each
    layer's training flag, momentum and ``num_batches_tracked`` are restored on leaving, on an exception too.

    Args:
        module: the module (an encoder) whose layers to freeze.
    """
    saved = []
    for layer in module.modules():
        if not layer.training or getattr(layer, "running_mean", None) is None:
            continue
        tracked = getattr(layer, "num_batches_tracked", None)
        saved.append((layer, getattr(layer, "momentum", None), None if tracked is None else tracked.clone()))
    try:
        for layer, _, _ in saved:
            if isinstance(layer, nn.SyncBatchNorm):
                layer.momentum = 0.0
            else:
                layer.training = False
        yield
    finally:
        for layer, momentum, tracked in saved:
            layer.training = True
            if isinstance(layer, nn.SyncBatchNorm):
                layer.momentum = momentum
            if tracked is not None:
                layer.num_batches_tracked.copy_(tracked)


def _fresh_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` with every layer's parameters drawn anew."""
    clone = copy.deepcopy(module)
    for layer in clone.modules():
        if hasattr(layer, "reset_parameters"):
            layer.reset_parameters()
    return clone
