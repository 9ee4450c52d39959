"""What an encoder asks of its modality's reader: the one interface between backbones and the data pipeline.

A pretrained backbone was trained on inputs of one shape: a ViT on 224x224 pixels resized with
bicubic interpolation, BERT on its own word pieces with ``[CLS]`` and ``[SEP]``, wav2vec2 on 16 kHz
audio. The user should not have to repeat that in the reader's config. So an encoder class may
declare, from its own settings and before any data is read, a :class:`Preprocessing`: the reader
settings it needs. :func:`apply_preprocessing` copies them into ``dataset.modalities.<name>``
before the dataset is built, where the user left the setting unset (null); a setting the user
gave explicitly wins, and is logged. What cannot work (a tokenizer whose ids the model cannot
embed, a sample rate the model was not trained at) is refused by the encoder when it is built,
from what the reader recorded in :attr:`~mtmm_train.batch.ModalitySpec.info`.

Division of labour (docs/design.md, "Preprocessing"):

- the **reader** decodes, resizes, crops, tokenizes, resamples and augments, in DataLoader workers
  when streaming; images reach the model as ``uint8`` ``[0, 255]`` or float ``[0, 1]``, audio as
  float ``[-1, 1]`` or ``int16``, text as token ids shifted by one (0 is padding);
- the **encoder** turns pixels into its own numbers: :func:`mtmm_train.encoders.base.as_unit_float`,
  then its own mean/std normalisation on the device. So one compact cache serves every backbone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from mtmm_train.errors import UserError

log = logging.getLogger("mtmm_train")


@dataclass(frozen=True)
class Preprocessing:
    """The reader settings an encoder needs; None: no requirement (the reader's own default).

    Each field is the name of a reader setting: image readers take ``size``, ``interpolation``,
    ``crop_pct`` and ``channels``; text readers ``tokenizer``, ``max_length`` and
    ``special_tokens``; audio readers ``sample_rate`` and ``features``. A field a reader does not have is skipped.

    Attributes:
        size: ``[H, W]`` the backbone's input size.
        interpolation: ``bilinear``, ``bicubic`` or ``nearest``.
        crop_pct: evaluation resizes to ``size / crop_pct`` then centre-crops ``size``.
        channels: 1 or 3.
        tokenizer: a ``tokenizer.json`` file, or a local Hugging Face model folder or cached name.
        max_length: tokens per text, special tokens included.
        special_tokens: add the model's special tokens (``[CLS]``, ``[SEP]``, ``<s>``...).
        sample_rate: audio samples per second.
        features: what audio readers deliver: ``raw`` (the waveform) or ``log_mel``.
        source: where these come from, for messages, e.g. ``timm resnet18``.
    """

    size: tuple[int, int] | None = None
    interpolation: str | None = None
    crop_pct: float | None = None
    channels: int | None = None
    tokenizer: str | None = None
    max_length: int | None = None
    special_tokens: bool | None = None
    sample_rate: int | None = None
    features: str | None = None
    source: str = ""

    def settings(self) -> dict[str, Any]:
        """The required reader settings (the fields that are not None), as plain config values."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "source" and value is not None:
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


def encoder_preprocessing(node: DictConfig, key: str) -> Preprocessing:
    """The :class:`Preprocessing` the encoder configured at ``key`` asks for (empty for a plain encoder).

    Calls the encoder class's ``preprocessing(settings)`` class method (the
    :class:`~mtmm_train.encoders.base.Encoder` default asks for nothing) with the config's
    settings, ``_target_`` and runtime arguments left out. Only checked ``_target_`` values are
    resolved (:mod:`mtmm_train.registry`).
    """
    from mtmm_train.instantiate import located, resolve_target  # local: instantiate imports the registry

    cls = resolve_target(node, key)
    ask = getattr(cls, "preprocessing", None)
    if ask is None:
        return Preprocessing()
    from mtmm_train.finetune import KEYS as FINE_TUNING  # freeze, adapter...: not the encoder's own settings

    settings = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items()
                if not k.startswith("_") and k not in FINE_TUNING}
    with located(key):  # a SettingError of the class names the key: model.encoders.<m>.<setting> ...
        return ask(settings)


def apply_preprocessing(cfg: DictConfig) -> list[str]:
    """Fill each modality reader's unset settings with what its encoder asks for (in place).

    Only datasets built from reader configs (``dataset.modalities.<name>`` with a ``_target_``:
    ``dataset=files`` and the built-in tables) take settings; a built-in dataset that makes its own
    tensors is left alone, and its encoder checks the shapes it gets.

    Returns:
        One line per setting that was filled or that the user's explicit value overrode (also logged).

    Raises:
        UserError: from the encoder class, when its settings cannot give a preprocessing (e.g. a
            model that is not available offline).
    """
    modalities = OmegaConf.select(cfg, "dataset.modalities")
    encoders = OmegaConf.select(cfg, "model.encoders")
    if not isinstance(modalities, DictConfig) or not isinstance(encoders, DictConfig):
        return []
    lines = []
    for name, reader in modalities.items():
        if not isinstance(reader, DictConfig) or "_target_" not in reader or name not in encoders:
            continue
        want = encoder_preprocessing(encoders[name], f"model.encoders.{name}")
        for setting, value in want.settings().items():
            if setting not in reader:
                continue  # not a setting of this reader (e.g. size for a text reader)
            given = reader[setting]
            given = OmegaConf.to_container(given) if OmegaConf.is_config(given) else given
            where = f"dataset.modalities.{name}.{setting}"
            if given is None:
                with open_dict(reader):
                    reader[setting] = value
                lines.append(f"{where}={value} from the encoder ({want.source or 'model.encoders.' + name})")
            elif given != value:
                lines.append(f"{where}={given} as given (the encoder {want.source} would use {value})")
    for line in lines:
        log.info("preprocessing: %s", line)
    return lines


def check_same(setting: str, reader_value: Any, model_value: Any, key: str, source: str) -> None:
    """Refuse, with one line naming both sides, a reader setting that the encoder cannot work with.

    Raises:
        UserError: ``dataset.modalities.<m>.<setting> is X but <key> (<source>) needs Y; ...``.
    """
    if reader_value != model_value:
        modality = key.rsplit(".", 1)[-1]
        raise UserError(f"dataset.modalities.{modality}.{setting} is {reader_value!r} but {key} ({source}) needs "
                        f"{model_value!r}; set dataset.modalities.{modality}.{setting}=null to take the model's")
