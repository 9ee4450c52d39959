"""Any timm image model as an encoder: pretrained weights (hub cache or a local file), pooled features or tokens."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mtmm_train.batch import ModalitySpec
from mtmm_train.encoders.base import Encoder, as_unit_float, check_sizes
from mtmm_train.encoders.pretrained import (
    backbones,
    cached_hub_file,
    load_state_dict,
    not_available,
    offline,
    weight_file,
)
from mtmm_train.errors import KEY, ComponentError, SettingError
from mtmm_train.preprocessing import Preprocessing

_BLOCK = re.compile(r"(?:^|\.)(?:blocks|layers|stages|layer)\.?(\d+)\.")


class TimmEncoder(Encoder):
    """A timm model (``timm.create_model(model_name)``) without its classifier.

    ``forward`` returns the model's pooled features (``forward_head(..., pre_logits=True)``);
    ``tokens`` the patch tokens of a ViT (prefix tokens such as ``[CLS]`` left out) or the
    flattened last feature map ``(B, H*W, C)`` of a CNN. Pixels arrive as the reader made them
    (``uint8`` or floats in [0, 1]) and are normalised here, on the device, with the model's
    mean and std. The reader's size, interpolation and crop come from the model's data config
    (:meth:`preprocessing`).

    Args:
        modality: the image modality spec (passed in by the recipe); its channels become ``in_chans``.
        model_name: any name of ``timm.list_models()``, with or without a tag (``vit_small_patch16_224.augreg_in21k``).
        pretrained: true (timm's weights from the hub cache; downloaded when online), false (random
            weights), or a local ``.safetensors``/``.pth``/``.bin`` file or model folder.
        out_dim: null: the model's own feature width; a size: a linear projection to it.
        mean: per-channel mean for normalisation; null: the model's.
        std: per-channel std; null: the model's.
        drop_path_rate: stochastic depth of the model (0: none).
    """

    def __init__(self, modality: ModalitySpec, model_name: str = "resnet18", pretrained: bool | str = True,
                 out_dim: int | None = None, mean: list[float] | None = None, std: list[float] | None = None,
                 drop_path_rate: float = 0.0) -> None:
        super().__init__(modality, kinds=("image",))
        check_sizes(out_dim=out_dim)
        channels, height, width = modality.shape
        model = create(model_name, pretrained, in_chans=channels, drop_path_rate=drop_path_rate)
        cfg = dict(model.pretrained_cfg or {})
        if tuple(cfg.get("input_size", (0, height, width))[1:]) != (height, width) and cfg.get("fixed_input_size"):
            if not hasattr(model, "set_input_size"):
                raise ComponentError(f"timm model '{model_name}' takes {list(cfg['input_size'][1:])} pixels only, but "
                                     f"modality '{modality.name}' is {[height, width]}; set its reader's size to "
                                     f"null (the model's) or {list(cfg['input_size'][1:])}")
            model.set_input_size(img_size=(height, width))  # ViTs: resample the position embeddings
        self.backbone = model
        self.model_name = model_name
        self.register_buffer("mean", channel_stats(mean, cfg.get("mean", (0.485, 0.456, 0.406)), channels, "mean"),
                             persistent=False)
        self.register_buffer("std", channel_stats(std, cfg.get("std", (0.229, 0.224, 0.225)), channels, "std"),
                             persistent=False)
        self.prefix_tokens = int(getattr(model, "num_prefix_tokens", 0) or 0)
        width_ = int(model.num_features)
        self.proj: nn.Module = nn.Linear(width_, out_dim) if out_dim else nn.Identity()
        self.out_dim = out_dim or width_
        self._groups = block_groups(model)

    @classmethod
    def preprocessing(cls, settings: dict[str, Any]) -> Preprocessing:
        """Input size, interpolation, crop and channels from timm's data config of ``model_name``."""
        name = settings.get("model_name", "resnet18")
        cfg = data_config(name)
        _, height, width = cfg["input_size"]
        return Preprocessing(size=(int(height), int(width)), interpolation=cfg.get("interpolation"),
                             crop_pct=cfg.get("crop_pct"), channels=int(cfg["input_size"][0]), source=f"timm {name}")

    def features(self, x: Tensor) -> Tensor:
        """The model's last features: ``(B, L, D)`` tokens (ViT) or ``(B, C, H, W)`` maps (CNN)."""
        x = (as_unit_float(x) - self.mean) / self.std
        return self.backbone.forward_features(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.backbone.forward_head(self.features(x), pre_logits=True))

    def tokens(self, x: Tensor) -> Tensor:
        f = self.features(x)
        f = f.flatten(2).transpose(1, 2) if f.dim() == 4 else f[:, self.prefix_tokens:]
        return self.proj(f)

    def block_index(self, name: str) -> int | None:
        """The timm group (``group_matcher``: 0 = stem and embeddings) of a backbone parameter; None otherwise."""
        return self._groups.get(strip_wrappers(name))

    @property
    def num_blocks(self) -> int:
        return max(self._groups.values(), default=-1) + 1

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        try:
            self.backbone.set_grad_checkpointing(enabled)
        except (AssertionError, NotImplementedError, AttributeError):
            raise SettingError("gradient_checkpointing", f"is not available for timm model '{self.model_name}'; set "
                               "it to false") from None


def create(name: str, pretrained: bool | str, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, num_classes=0)`` with weights from ``pretrained`` (see :class:`TimmEncoder`).

    A local file is read here with ``weights_only=True`` and handed to timm as a state dict, so timm
    still adapts the first convolution to ``in_chans`` and drops the classifier.

    Raises:
        SettingError: unknown model, unreadable file, or weights neither local nor cached when offline.
    """
    timm = backbones("timm", "encoder timm")
    if not timm.is_model(name.split(".")[0]):
        raise SettingError("model_name", f"is '{name}', which timm does not know; pick one of timm.list_models(), "
                           f"e.g. {KEY}.model_name=resnet18")
    if pretrained is False or pretrained is None:
        return timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    if pretrained is True:
        sd = cached_weights(name)
        if sd is None:
            how = (f"download it once where the network is reachable, or give a local file: "
                   f"{KEY}.pretrained=/path/to/model.safetensors (or false for random weights)")
            if offline():
                raise not_available(name, "pretrained", how)
            try:
                return timm.create_model(name, pretrained=True, num_classes=0, **kwargs)
            except Exception as e:  # no network, no such weights, a timeout: one line
                raise not_available(name, "pretrained", how, e) from None
    elif isinstance(pretrained, str):
        sd = load_state_dict(weight_file(pretrained))
    else:
        raise SettingError("pretrained", f"must be true, false or a path, found {pretrained!r}")
    try:
        return timm.create_model(name, pretrained=True, num_classes=0, pretrained_cfg_overlay={"state_dict": sd},
                                 **kwargs)
    except RuntimeError as e:  # missing or mis-shaped keys: these weights are another model's
        raise SettingError("pretrained", f"holds weights that do not fit timm model '{name}' "
                           f"({' '.join(str(e).split())[:160]}); check {KEY}.model_name") from None


def cached_weights(name: str) -> dict[str, Tensor] | None:
    """The weights of ``name`` from the Hugging Face or torch hub cache (never the network), or None."""
    timm = backbones("timm", "encoder timm")
    cfg = timm.models.get_pretrained_cfg(name) or {}
    cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    found = None
    if cfg.get("hf_hub_id"):
        repo = cfg["hf_hub_id"]
        filename = cfg.get("hf_hub_filename")
        found = cached_hub_file(repo, (filename,) if filename else ("model.safetensors", "pytorch_model.bin",
                                                                  "open_clip_pytorch_model.bin"))
    if found is None and cfg.get("url"):
        candidate = Path(torch.hub.get_dir()) / "checkpoints" / Path(cfg["url"]).name
        found = str(candidate) if candidate.is_file() else None
    return load_state_dict(Path(found)) if found else None


def data_config(name: str) -> dict[str, Any]:
    """timm's data config of ``name`` (``input_size``, ``interpolation``, ``crop_pct``, ``mean``, ``std``).

    The model is built on the meta device (no memory, no weights) for ``resolve_model_data_config``.
    """
    timm = backbones("timm", "encoder timm")
    if not timm.is_model(name.split(".")[0]):
        raise SettingError("model_name", f"is '{name}', which timm does not know; pick one of timm.list_models(), "
                           f"e.g. {KEY}.model_name=resnet18")
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, num_classes=0)
    return timm.data.resolve_model_data_config(model)


def channel_stats(given: list[float] | None, model: tuple[float, ...], channels: int, setting: str) -> Tensor:
    """``(1, C, 1, 1)`` mean or std: the given one, else the model's (averaged for a grayscale input)."""
    values = list(given) if given is not None else list(model)
    if given is None and len(values) != channels:
        values = [sum(values) / len(values)] * channels
    if len(values) not in (1, channels) or (setting == "std" and min(values) <= 0):
        raise SettingError(setting, f"must be {channels} {'positive ' if setting == 'std' else ''}numbers (one per "
                           f"channel), found {values}; or null for the model's")
    return torch.tensor(values, dtype=torch.float32).expand(channels).reshape(1, channels, 1, 1).clone()


def strip_wrappers(name: str) -> str:
    """A parameter name relative to the backbone: ``backbone.`` and LoRA/compile wrappers taken off."""
    for prefix in ("backbone.", "_orig_mod.", "base_model.model."):
        while name.startswith(prefix):
            name = name[len(prefix):]
    return name


def block_groups(model: nn.Module) -> dict[str, int]:
    """Backbone parameter name -> its timm group (``group_matcher(coarse=False)``; 0: stem/embeddings)."""
    names = [n for n, _ in model.named_parameters()]
    if hasattr(model, "group_matcher"):
        timm = backbones("timm", "encoder timm")
        groups = timm.models.group_parameters(model, model.group_matcher(coarse=False), reverse=True)
        ids = sorted(set(groups.values()))
        dense = {g: i for i, g in enumerate(ids)}  # timm may leave gaps (the head's group is large)
        return {n: dense[g] for n, g in groups.items()}
    out = {}
    for n in names:
        m = _BLOCK.search(n)
        out[n] = int(m.group(1)) + 1 if m else 0
    return out
