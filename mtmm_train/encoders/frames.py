"""Video clips ``(T, C, H, W)``: any image encoder on each frame, then temporal pooling or a small transformer."""

from __future__ import annotations

from importlib import resources
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from mtmm_train.batch import ModalitySpec
from mtmm_train.encoders.base import Encoder, as_unit_float, check_sizes
from mtmm_train.errors import KEY, ComponentError, SettingError, UserError

TEMPORAL = ("mean", "transformer")


class FramesEncoder(Encoder):
    """Runs an image encoder on every frame of a clip; tokens are the per-frame embeddings.

    The clip's frames go through the ``frame`` encoder as one batch of images (built with a
    per-frame image :class:`~mtmm_train.batch.ModalitySpec` ``(C, H, W)``), are projected to
    ``out_dim``, and then either averaged (``temporal: mean``) or passed through a small transformer
    with learned frame positions before the average (``temporal: transformer``). A clip from the
    ``video`` reader holds ``frames * pool`` frames, each chosen frame repeated ``pool`` times
    (``spec.info``); the encoder reads every ``pool``-th one.

    Args:
        modality: the modality spec (passed in by the recipe); kind ``video``.
        frame: the image encoder: a config with a ``_target_`` (``{_target_: ...CNNEncoder, out_dim: 32}``),
            the name of an encoder config (``cnn``, ``timm``, ...), or null (``cnn`` with its defaults).
        temporal: ``mean`` or ``transformer``.
        out_dim: output size D.
        num_layers: transformer layers (``temporal: transformer``).
        num_heads: attention heads (must divide ``out_dim``).
        dropout: dropout inside the transformer.
    """

    def __init__(self, modality: ModalitySpec, frame: Any = None, temporal: str = "mean", out_dim: int = 64,
                 num_layers: int = 1, num_heads: int = 4, dropout: float = 0.0) -> None:
        super().__init__(modality, kinds=("video",))
        check_sizes(out_dim=out_dim, num_layers=num_layers, num_heads=num_heads)
        if temporal not in TEMPORAL:
            raise SettingError("temporal", f"must be one of {', '.join(TEMPORAL)}, found {temporal!r}")
        if temporal == "transformer" and out_dim % num_heads:
            raise SettingError("num_heads", f"must divide out_dim={out_dim}, found {num_heads}; e.g. "
                               f"{KEY}.num_heads=4")
        stored = int(modality.shape[0])
        self.pool = int(modality.info.get("pool", 1)) if stored % int(modality.info.get("pool", 1)) == 0 else 1
        self.num_frames = stored // self.pool
        self.out_dim, self.temporal = out_dim, temporal
        frame_spec = ModalitySpec(f"{modality.name}.frame", tuple(modality.shape[1:]), "image", info=modality.info)
        self.frame = build_frame_encoder(frame, frame_spec)
        # A frame encoder whose BatchNorm learns from present rows only (cnn) gets the clips' mask, per frame.
        self.uses_presence = bool(getattr(self.frame, "uses_presence", False))
        self.proj = nn.Linear(self.frame.out_dim, out_dim)
        if temporal == "transformer":
            self.pos = nn.Parameter(torch.randn(1, self.num_frames, out_dim) * 0.02)
            layer = nn.TransformerEncoderLayer(out_dim, num_heads, 4 * out_dim, dropout=dropout, batch_first=True,
                                               norm_first=True)
            self.layers = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(out_dim)

    @property
    def backbone(self) -> nn.Module | None:  # the frame encoder's pretrained network, if any
        return getattr(self.frame, "backbone", None)

    def forward(self, x: Tensor, present: Tensor | None = None) -> Tensor:
        """``(B, T, C, H, W)`` -> ``(B, D)``: the mean of :meth:`tokens`."""
        return self.tokens(x, present).mean(1)

    def tokens(self, x: Tensor, present: Tensor | None = None) -> Tensor:
        """``(B, T, C, H, W)`` -> per-frame embeddings ``(B, frames, D)``; ``present``: bool ``(B,)``, passed
        on per frame to a frame encoder that uses it (None: every clip)."""
        if self.pool > 1:
            x = x[:, :: self.pool]
        b, t = x.shape[:2]
        frames = as_unit_float(x).flatten(0, 1)  # (B * T, C, H, W): all frames as one image batch
        if present is not None and getattr(self.frame, "uses_presence", False):
            h = self.frame(frames, present.repeat_interleave(t))
        else:
            h = self.frame(frames)
        h = self.proj(h).view(b, t, self.out_dim)
        if self.temporal == "transformer":
            h = self.norm(self.layers(h + self.pos[:, :t]))
        return h


def build_frame_encoder(frame: Any, spec: ModalitySpec) -> Encoder:
    """The per-frame image encoder from a config, an encoder config's name, or null (``cnn``).

    Raises:
        ComponentError: the config cannot be built (its message names ``<key>.frame``).
    """
    from mtmm_train.instantiate import build  # local: instantiate imports the registry

    if frame is None:
        frame = "cnn"
    if isinstance(frame, str):
        path = resources.files("mtmm_train.configs") / "encoder" / f"{frame}.yaml"
        if not path.is_file():
            names = sorted(p.name[:-5] for p in (resources.files("mtmm_train.configs") / "encoder").iterdir()
                           if p.name.endswith(".yaml"))
            raise SettingError("frame", f"names no encoder config, found {frame!r}; choose one of {', '.join(names)} "
                               f"or give a config, e.g. {KEY}.frame._target_=mtmm_train.encoders.cnn.CNNEncoder")
        node = OmegaConf.create(path.read_text())
    else:
        node = frame if isinstance(frame, DictConfig) else OmegaConf.create(dict(frame))
    try:
        return build(node, f"{KEY}.frame", modality=spec)
    except UserError as e:  # built at "<key>.frame": the outer builder puts the key in
        raise ComponentError(str(e)) from None
