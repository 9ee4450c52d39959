"""Any Hugging Face ``transformers.AutoModel`` as an encoder: text, audio or vision, one tower of a paired model."""

from __future__ import annotations

import difflib
import functools
import inspect
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mtmm_train.batch import ModalitySpec
from mtmm_train.encoders.base import Encoder, as_unit_float, check_sizes
from mtmm_train.encoders.pretrained import backbones, not_available, offline
from mtmm_train.encoders.timm import channel_stats, strip_wrappers
from mtmm_train.errors import KEY, ComponentError, SettingError
from mtmm_train.preprocessing import Preprocessing, check_same

POOLINGS = ("cls", "mean", "masked_mean", "pooler")
#: the model's main input -> the modality kind it reads
INPUTS = {"input_ids": "tokens", "pixel_values": "image", "input_values": "sequence", "input_features": "sequence"}
_LAYER = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)\.")
_FRONT = ("embed", "feature_extractor.", "feature_projection.", "masked_spec_embed", "conv1.", "conv2.")
_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}  # PIL resample ids of image processors


class HFEncoder(Encoder):
    """A ``transformers.AutoModel`` (or one tower of it), its last hidden states pooled.

    What it reads follows the model's main input: token ids (text models: BERT, RoBERTa, CLIP's text
    tower), pixels (ViT, CLIP's vision tower) or a raw waveform ``(1, L)`` (wav2vec2, HuBERT; the Whisper
    encoder and AST run the model's feature extractor on it). Token ids arrive shifted by one
    (0 = padding) and become ``input_ids`` and an ``attention_mask``; pixels are normalised with the
    image processor's mean and std on the device; waveforms as the feature extractor does. The
    reader's tokenizer, length, image size and sample rate come from the model (:meth:`preprocessing`).

    Built from a config instead (``config``: ``model_type`` and the fields to change), the model has random
    weights and reads no file and no network: a reference architecture for benchmarks (ViT-B/16, BERT-base)
    without a download. It then has no image processor or tokenizer: images are normalised with mean and
    std 0.5 (unless set), images are resized to the config's ``image_size``, and text arrives as the
    reader's own word ids (or the dataset's), which must fit the config's ``vocab_size``.

    Args:
        modality: the modality spec (passed in by the recipe).
        model_name: a local model folder, or a hub name already in the local cache (downloaded when online);
            with ``config``: only a label (logs, run names).
        config: null: the config of ``model_name``; a mapping: ``model_type`` (``bert``, ``vit``...) plus
            any fields of that model's config, built with ``AutoConfig.for_model`` and
            ``AutoModel.from_config`` (random weights, ``pretrained`` must be false).
        tower: one part of a paired or encoder-decoder model: ``vision`` or ``text`` (CLIP: ``vision_model``,
            ``text_model``), ``encoder`` (Whisper); null: the whole model (an encoder-decoder: its encoder).
        pooling: ``cls`` (first token), ``mean`` (all positions), ``masked_mean`` (positions the attention
            mask keeps; = mean for audio and images), or ``pooler`` (the model's own pooled output).
        out_dim: null: the model's hidden size; a size: a linear projection to it.
        max_length: tokens per text asked of the reader (capped at the model's maximum); null: the maximum.
        pretrained: true: the model's weights; false: random weights of the same architecture.
        mean: per-channel pixel mean; null: the image processor's.
        std: per-channel pixel std; null: the image processor's.
    """

    def __init__(self, modality: ModalitySpec, model_name: str = "bert-base-uncased",
                 config: dict[str, Any] | None = None, tower: str | None = None,
                 pooling: str = "cls", out_dim: int | None = None, max_length: int | None = 128,
                 pretrained: bool = True, mean: list[float] | None = None, std: list[float] | None = None) -> None:
        super().__init__(modality, kinds=("tokens", "image", "sequence"))
        check_sizes(out_dim=out_dim, max_length=max_length)
        if pooling not in POOLINGS:
            raise SettingError("pooling", f"must be one of {', '.join(POOLINGS)}, found {pooling!r}")
        self.model_name, self.pooling = model_name, pooling
        self.built_from_config = config is not None
        backbone, config, main = load(model_name, tower, pretrained, config)
        kind = INPUTS[main]
        if kind != modality.kind:
            raise ComponentError(f"HFEncoder with '{model_name}'{f' (tower {tower})' if tower else ''} reads {kind} "
                                 f"input ({main}), but modality '{modality.name}' is {modality.kind} with shape "
                                 f"{modality.shape}; choose a model for this modality, or another tower")
        if pooling != "pooler" and isinstance(getattr(backbone, "pooler", None), nn.Module):
            backbone.pooler = None  # unused parameters would get no gradient (and break DistributedDataParallel)
        self.backbone = backbone
        self.main_input = main
        self.kind = kind
        self._key, self._source = f"model.encoders.{modality.name}", describe(model_name, self.built_from_config)
        self._check_reader(modality, config)
        self.extractor = None
        self.normalize_wave = False
        if kind == "image":
            proc = {} if self.built_from_config else processor(model_name, "image") or {}
            channels = modality.shape[0]
            self.register_buffer("mean", channel_stats(mean, tuple(proc.get("image_mean") or (0.5,) * 3), channels,
                                                       "mean"), persistent=False)
            self.register_buffer("std", channel_stats(std, tuple(proc.get("image_std") or (0.5,) * 3), channels,
                                                      "std"), persistent=False)
            size = getattr(config, "image_size", None)
            size = tuple(size) if isinstance(size, list | tuple) else (size, size)
            takes = inspect.signature(backbone.forward).parameters
            self.interpolate = size != tuple(modality.shape[1:]) and "interpolate_pos_encoding" in takes
        elif kind == "sequence":
            extractor = None if self.built_from_config else processor(model_name, "audio", obj=True)
            if main == "input_features" or getattr(extractor, "feature_size", 1) > 1:
                if extractor is None:
                    raise ComponentError(f"'{model_name}' has no feature extractor (preprocessor_config.json), which "
                                         f"its {main} need; save one with the model (a model built from "
                                         f"{KEY}.config has none: give a model folder instead)")
                self.extractor = extractor
            else:
                self.normalize_wave = bool(getattr(extractor, "do_normalize", False))
        width = hidden_size(config)
        self.proj: nn.Module = nn.Linear(width, out_dim) if out_dim else nn.Identity()
        self.out_dim = out_dim or width
        layers = [int(m.group(1)) for n, _ in backbone.named_parameters() if (m := _LAYER.search(n))]
        self._num_blocks = max(layers, default=-1) + 2

    @classmethod
    def preprocessing(cls, settings: dict[str, Any]) -> Preprocessing:
        """The model's tokenizer and length, image size and interpolation, or sample rate.

        A model built from ``config`` has no tokenizer, image processor or feature extractor: it asks for
        the image size of its config (``image_size``), a text length capped by ``max_position_embeddings``
        (the reader keeps its own word vocabulary), or 16 kHz raw audio.
        """
        name = str(settings.get("model_name", "bert-base-uncased"))
        tower = settings.get("tower")
        given = settings.get("config")
        if given is not None:
            check_random(given, settings.get("pretrained", True))
            config = from_config(given)
        else:
            config = load_config(name)
        with torch.device("meta"):
            _, sub_config, main = pick_tower(random_model(config) if given is not None else auto_model(config),
                                             config, name, tower)
        source = describe(name, given is not None)
        kind = INPUTS[main]
        if given is not None:
            return config_preprocessing(kind, sub_config, settings.get("max_length", 128), source)
        if kind == "tokens":
            longest = model_max_length(name, sub_config)
            want = settings.get("max_length", 128)
            return Preprocessing(tokenizer=local_name(name), max_length=min(want or longest, longest),
                                 special_tokens=True, source=source)
        if kind == "image":
            proc = processor(name, "image") or {}
            size, crop_pct = image_size(proc, sub_config)
            resample = _RESAMPLE.get(proc.get("resample"), "bilinear") if "resample" in proc else None
            return Preprocessing(size=size, interpolation=resample, crop_pct=crop_pct, channels=3, source=source)
        extractor = processor(name, "audio", obj=True)
        rate = getattr(extractor, "sampling_rate", None) or 16000
        return Preprocessing(sample_rate=int(rate), features="raw", source=source)

    def _check_reader(self, modality: ModalitySpec, config: Any) -> None:
        """Refuse what the reader did that this model cannot work with (spec info; one line, both sides)."""
        info = modality.info
        if self.kind == "tokens":
            model_vocab = getattr(config, "vocab_size", None)
            too_many = bool(model_vocab and modality.vocab_size and modality.vocab_size - 1 > model_vocab)
            if self.built_from_config:  # no tokenizer of its own: the reader's word ids (or the dataset's) must fit
                if too_many:
                    raise SettingError("config", f"has vocab_size {model_vocab}, but modality '{modality.name}' "
                                       f"has {modality.vocab_size - 1} token ids (padding aside); set "
                                       f"{KEY}.config.vocab_size={modality.vocab_size - 1} or more, or give the "
                                       "data a smaller vocabulary")
            elif "tokenizer" in info and info["tokenizer"] is None:
                check_same("tokenizer", None, local_name(self.model_name), self._key, self._source)
            if not self.built_from_config and too_many:
                check_same("tokenizer", info.get("tokenizer"), f"{local_name(self.model_name)} (ids below "
                           f"{model_vocab}, found {modality.vocab_size - 1})", self._key, self._source)
            longest = getattr(config, "max_position_embeddings", None)
            if longest and modality.shape[0] > longest:
                check_same("max_length", modality.shape[0], f"at most {longest}", self._key, self._source)
        elif self.kind == "sequence" and info:
            if "features" in info:
                check_same("features", info["features"], "raw", self._key, self._source)
            rate = None if self.built_from_config else getattr(processor(self.model_name, "audio", obj=True),
                                                         "sampling_rate", None)
            if rate and "sample_rate" in info:
                check_same("sample_rate", info["sample_rate"], int(rate), self._key, self._source)

    def hidden(self, x: Tensor) -> tuple[Tensor, Tensor | None, Any]:
        """The last hidden states ``(B, L, D)``, the token mask ``(B, L)`` (text only) and the model output."""
        mask = None
        if self.kind == "tokens":
            mask = x != 0
            out = self.backbone(input_ids=(x - 1).clamp_min(0), attention_mask=mask.long())
        elif self.kind == "image":
            pixels = (as_unit_float(x) - self.mean) / self.std
            extra = {"interpolate_pos_encoding": True} if self.interpolate else {}
            out = self.backbone(pixel_values=pixels, **extra)
        else:
            wave = as_unit_float(x).mean(1)  # (B, L) mono
            if self.extractor is not None:  # Whisper, AST: the model's own features (on the host)
                rate = getattr(self.extractor, "sampling_rate", 16000)
                feats = self.extractor(list(wave.detach().float().cpu().numpy()), sampling_rate=rate,
                                       return_tensors="pt")[self.main_input]
                out = self.backbone(**{self.main_input: feats.to(x.device, self.proj_dtype())})
            else:
                if self.normalize_wave:  # as Wav2Vec2FeatureExtractor(do_normalize=True): zero mean, unit variance
                    wave = (wave - wave.mean(1, keepdim=True)) / torch.sqrt(wave.var(1, keepdim=True) + 1e-7)
                out = self.backbone(**{self.main_input: wave})
        states = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        return states, mask, out

    def proj_dtype(self) -> torch.dtype:
        return next(self.backbone.parameters()).dtype

    def forward(self, x: Tensor) -> Tensor:
        states, mask, out = self.hidden(x)
        if self.pooling == "cls":
            pooled = states[:, 0]
        elif self.pooling == "pooler":
            pooled = getattr(out, "pooler_output", None)
            if pooled is None:
                raise ComponentError(f"'{self.model_name}' gives no pooled output; use another pooling, e.g. "
                                     f"{KEY}.pooling=cls", source=self)
        elif self.pooling == "masked_mean" and mask is not None:
            keep = mask.unsqueeze(-1).to(states.dtype)
            pooled = (states * keep).sum(1) / keep.sum(1).clamp_min(1)
        else:
            pooled = states.mean(1)
        return self.proj(pooled)

    def tokens(self, x: Tensor) -> Tensor:
        return self.proj(self.hidden(x)[0])

    def block_index(self, name: str) -> int | None:
        """Embeddings and the audio front end: 0; layer N: N + 1; final norms, pooler, projection: None."""
        name = strip_wrappers(name)
        if name.startswith("proj."):
            return None
        m = _LAYER.search(name)
        if m:
            return int(m.group(1)) + 1
        return 0 if any(f in name for f in _FRONT) else None

    @property
    def num_blocks(self) -> int:
        return self._num_blocks

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        transformers = backbones("transformers", "encoder hf")
        func = functools.partial(torch.utils.checkpoint.checkpoint, use_reentrant=False)
        try:  # works on a tower too (a plain module of a paired model)
            transformers.PreTrainedModel._set_gradient_checkpointing(self.backbone, enabled, func)
        except ValueError:
            raise SettingError("gradient_checkpointing", f"is not available for '{self.model_name}'; set it to "
                               "false") from None


def local_name(name: str) -> str:
    """A local folder as an absolute path (the reader and the cache key see one spelling); a hub name as it is."""
    p = Path(name).expanduser()
    return str(p.resolve()) if p.is_dir() else name


def load_config(name: str) -> Any:
    """The model's config from a local folder or the cache; from the hub only when online.

    Raises:
        SettingError: about ``model_name``: no such folder, or not cached when offline (or not downloadable).
    """
    transformers = backbones("transformers", "encoder hf")
    path = Path(name).expanduser()
    if path.is_dir() or name.startswith((".", "/", "~")):
        if not (path / "config.json").is_file():
            raise SettingError("model_name", f"is '{name}', which is not a model folder (no config.json); give a "
                               "folder written by save_pretrained, or a hub name")
        return transformers.AutoConfig.from_pretrained(str(path))
    how = (f"download it once where the network is reachable (huggingface-cli download {name}), or give a local "
           f"folder: {KEY}.model_name=/path/to/folder")
    try:
        return transformers.AutoConfig.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError) as e:
        if offline():
            raise not_available(name, "model_name", how) from None
        try:
            return transformers.AutoConfig.from_pretrained(name)
        except Exception:
            raise not_available(name, "model_name", how, e) from None


def auto_model(config: Any, name: str | None = None) -> nn.Module:
    """``AutoModel`` of ``config``: random weights, or the weights of ``name`` (local first)."""
    transformers = backbones("transformers", "encoder hf")
    if name is None:
        return transformers.AutoModel.from_config(config)
    local = Path(name).expanduser().is_dir() or offline()
    try:
        return transformers.AutoModel.from_pretrained(local_name(name), local_files_only=True)
    except (OSError, ValueError) as e:
        how = (f"download it once where the network is reachable, give a local folder "
               f"({KEY}.model_name=/path/to/folder), or set {KEY}.pretrained=false for random weights")
        if local:
            raise not_available(name, "model_name", how, None if offline() else e) from None
        try:
            return transformers.AutoModel.from_pretrained(name)
        except Exception as e2:
            raise not_available(name, "model_name", how, e2) from None


def pick_tower(model: nn.Module, config: Any, name: str, tower: str | None) -> tuple[nn.Module, Any, str]:
    """The part of ``model`` that encodes (``tower``, or the encoder of an encoder-decoder), its config and
    its main input name.

    Raises:
        SettingError: about ``tower``: no such part, or a paired model without one.
    """
    towers = [t[:-len("_model")] for t in ("vision_model", "text_model", "audio_model")
              if isinstance(getattr(model, t, None), nn.Module)]
    if tower:
        sub = getattr(model, f"{tower}_model", None)
        sub = sub if isinstance(sub, nn.Module) else getattr(model, tower, None)
        if not isinstance(sub, nn.Module):
            raise SettingError("tower", f"is '{tower}', which '{name}' does not have; choose one of "
                               f"{', '.join(towers + (['encoder'] if config.is_encoder_decoder else [])) or 'null'}")
        sub_config = getattr(config, f"{tower}_config", None) or getattr(sub, "config", config)
    elif len(towers) > 1:
        raise SettingError("tower", f"is null, but '{name}' is a paired model; choose one tower, e.g. "
                           f"{KEY}.tower={towers[0]}")
    elif getattr(config, "is_encoder_decoder", False) and hasattr(model, "get_encoder"):
        sub, sub_config = model.get_encoder(), config
    else:
        sub, sub_config = model, config
    takes = inspect.signature(sub.forward).parameters
    main = next((p for p in INPUTS if p in takes), None)
    if main is None:
        raise SettingError("model_name", f"is '{name}', whose {type(sub).__name__} takes none of {', '.join(INPUTS)}; "
                           "choose a text, audio or vision model (or a tower)")
    return sub, sub_config, main


def load(name: str, tower: str | None, pretrained: bool,
         given: dict[str, Any] | None = None) -> tuple[nn.Module, Any, str]:
    """The encoding part of model ``name`` (or of a model built from the config mapping ``given``), its config
    and its main input name."""
    if given is not None:
        check_random(given, pretrained)
        config = from_config(given)
        return pick_tower(random_model(config), config, name, tower)
    config = load_config(name)
    model = auto_model(config, name if pretrained else None)
    return pick_tower(model, config, name, tower)


def describe(name: str, from_config: bool) -> str:
    """How messages name the model: ``hf <model_name>``, plus ``(built from config)`` for a config-built one."""
    return f"hf {name}" + (" (built from config)" if from_config else "")


def show(value: Any) -> str:
    """A config mapping as it is written on the command line: ``{model_type: bert, hidden_size: 768}``."""
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {show(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(show(v) for v in value) + "]"
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def check_random(given: Any, pretrained: Any) -> None:
    """Refuse ``config`` together with ``pretrained: true`` (a config gives random weights only).

    Raises:
        SettingError: about ``config``.
    """
    if pretrained is not False:
        raise SettingError("config", f"is {show(given)}, which builds a model with random weights, but "
                           f"{KEY}.pretrained is {show(pretrained)}; set {KEY}.pretrained=false, or "
                           f"{KEY}.config=null to load the weights of {KEY}.model_name")


def config_fields(cls: type) -> set[str]:
    """The fields a ``transformers`` config class takes: its (and its bases') constructor parameters and the
    attributes of a default instance."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None:
            names |= {n for n, p in inspect.signature(init).parameters.items()
                      if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n != "self"}
    try:
        names |= set(cls().to_dict())
    except Exception:  # a config without defaults for every field: the parameters above must do
        pass
    return names | {"attn_implementation"}


def from_config(given: Any) -> Any:
    """A ``transformers`` config built from the mapping ``given`` (``model_type`` plus fields to change) with
    ``AutoConfig.for_model``: no file and no network.

    Raises:
        SettingError: about ``config``: not a mapping, no or unknown ``model_type``, a field that model type's
            config does not have (a typo would otherwise pass unnoticed), or a value it refuses.
    """
    transformers = backbones("transformers", "encoder hf")
    example = f"e.g. {KEY}.config={{model_type: bert, hidden_size: 768, num_hidden_layers: 12}}"
    if not isinstance(given, Mapping) or not given.get("model_type"):
        raise SettingError("config", f"is {show(given)}, which names no model_type; give the model type and the "
                           f"fields to change, {example}")
    fields = dict(given)
    model_type = str(fields.pop("model_type"))
    known = list(transformers.CONFIG_MAPPING.keys())
    if model_type not in known:
        close = difflib.get_close_matches(model_type, known, n=3)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise SettingError("config", f"has model_type '{model_type}', which transformers {transformers.__version__} "
                           f"does not know; {hint}choose one of transformers.CONFIG_MAPPING (bert, vit, roberta, "
                           "clip, wav2vec2, ...)")
    cls = transformers.CONFIG_MAPPING[model_type]
    allowed = config_fields(cls)
    for field in fields:
        if field not in allowed:
            close = difflib.get_close_matches(field, sorted(allowed), n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise SettingError("config", f"has {field}: {show(fields[field])}, which is not a field of "
                               f"{cls.__name__} ({model_type}); {hint}remove it or correct its name")
    try:
        return transformers.AutoConfig.for_model(model_type, **fields)
    except Exception as e:  # a value of the wrong kind (transformers' validation)
        raise SettingError("config", f"is {show(given)}, which {cls.__name__} refuses ({one_line(e)}); correct "
                           "that field") from None


def random_model(config: Any) -> nn.Module:
    """``AutoModel.from_config``: random weights of a config built by :func:`from_config`.

    Raises:
        SettingError: about ``config``: fields that do not make a model (e.g. a hidden size that is not a
            multiple of the number of heads).
    """
    transformers = backbones("transformers", "encoder hf")
    try:
        return transformers.AutoModel.from_config(config)
    except Exception as e:
        raise SettingError("config", f"is a {getattr(config, 'model_type', '')} config that builds no model "
                           f"({one_line(e)}); correct those fields") from None


def config_preprocessing(kind: str, config: Any, want: int | None, src: str) -> Preprocessing:
    """What a model built from a config asks of its reader: no tokenizer, image processor or feature extractor.

    Text: ``max_length`` (``want``, capped by ``max_position_embeddings``); images: the config's
    ``image_size`` and ``num_channels``; audio: 16 kHz raw waveforms.
    """
    if kind == "tokens":
        longest = getattr(config, "max_position_embeddings", None)
        length = min(want or longest, longest) if longest else want
        return Preprocessing(max_length=length, source=src)
    if kind == "image":
        size, _ = image_size({}, config)
        return Preprocessing(size=size, channels=int(getattr(config, "num_channels", 3) or 3), source=src)
    return Preprocessing(sample_rate=16000, features="raw", source=src)


def one_line(e: BaseException) -> str:
    """An exception's message on one line, at most 200 characters."""
    return " ".join(str(e).split())[:200]


def processor(name: str, kind: str, obj: bool = False) -> Any:
    """The model's image processor settings (a dict) or feature extractor (``obj``), local only; None if none."""
    transformers = backbones("transformers", "encoder hf")
    try:
        if kind == "image":
            proc = transformers.AutoImageProcessor.from_pretrained(local_name(name), local_files_only=True)
            return proc if obj else proc.to_dict()
        return transformers.AutoFeatureExtractor.from_pretrained(local_name(name), local_files_only=True)
    except (OSError, ValueError, KeyError):
        return None


def image_size(proc: dict[str, Any], config: Any) -> tuple[tuple[int, int], float | None]:
    """The input size ``(H, W)`` and crop fraction from an image processor's settings (else the config's)."""
    def hw(s: Any) -> tuple[int, int] | None:
        if isinstance(s, dict) and "height" in s:
            return int(s["height"]), int(s["width"])
        if isinstance(s, dict) and "shortest_edge" in s:
            return int(s["shortest_edge"]), int(s["shortest_edge"])
        return (int(s), int(s)) if isinstance(s, int) else None

    size, crop = hw(proc.get("size")), hw(proc.get("crop_size")) if proc.get("do_center_crop") else None
    if crop:
        return crop, (crop[0] / size[0] if size else None)
    if size:
        return size, None
    s = getattr(config, "image_size", 224)
    return (tuple(s) if isinstance(s, list | tuple) else (int(s), int(s))), None


def model_max_length(name: str, config: Any) -> int:
    """Most tokens the model takes: its position embeddings (or the tokenizer's limit)."""
    longest = getattr(config, "max_position_embeddings", None)
    if longest:
        return int(longest)
    transformers = backbones("transformers", "encoder hf")
    try:
        tok = transformers.AutoTokenizer.from_pretrained(local_name(name), local_files_only=True)
        return int(tok.model_max_length) if tok.model_max_length < 1_000_000 else 512
    except (OSError, ValueError):
        return 512


def hidden_size(config: Any) -> int:
    """The width of the model's hidden states."""
    for attr in ("hidden_size", "d_model", "dim", "embed_dim"):
        value = getattr(config, attr, None)
        if isinstance(value, int):
            return value
    sizes = getattr(config, "hidden_sizes", None)
    if sizes:
        return int(sizes[-1])
    raise ComponentError(f"cannot tell the hidden size of {type(config).__name__}; set {KEY}.out_dim")
