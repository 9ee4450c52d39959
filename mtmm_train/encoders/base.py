"""The encoder contract."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from mtmm_train.batch import ModalitySpec
from mtmm_train.errors import KEY, ComponentError, SettingError
from mtmm_train.preprocessing import Preprocessing


class Encoder(nn.Module):
    """Base of all encoders.

    Subclasses set ``out_dim`` and implement :meth:`tokens`; :meth:`forward` pools the tokens
    by their mean (override it when a cheaper pooled path exists). A bad setting is refused in
    the constructor with a :class:`~mtmm_train.errors.SettingError` (:func:`check_sizes` for
    sizes); the builder names the config key.

    **Presence.** Absent rows of a batch hold zeros. An encoder whose layers must know which rows hold the
    modality (a BatchNorm that learns from the present rows only, :mod:`mtmm_train.encoders.norm`) sets
    :attr:`uses_presence` and accepts ``present`` (bool ``(B,)``, True where the row has the modality;
    None, the default: every row) as an extra argument of :meth:`forward` and :meth:`tokens`. The model
    (:meth:`MultiModalModel.embed <mtmm_train.model.MultiModalModel.embed>`) passes it the modality's mask
    after modality dropout; every other caller (the frozen-feature cache, which encodes present rows only,
    export, tests) may call ``forward(x)`` as for any encoder. An encoder without the flag is called with
    ``x`` alone and keeps the one-argument signature. The builder turns the flag off on an encoder whose
    modality no training batch can lack (:func:`mtmm_train.builders.can_be_absent`), where the plain path
    is the same and faster.

    Args:
        modality: the spec of the modality this encoder reads.
        kinds: the modality kinds the encoder accepts.

    Raises:
        ComponentError: the modality is of a kind the encoder cannot read.
    """

    out_dim: int

    @property
    def backbone(self) -> nn.Module | None:
        """The pretrained network inside, if any: the module that ``adapter: lora`` wraps and that ``freeze`` /
        ``layer_decay`` / ``gradient_checkpointing`` act on (None: a from-scratch encoder, whose whole self is
        the "backbone" for freezing). A subclass sets it as ``self.backbone = module`` (a registered
        submodule, which this property reads: a plain class attribute would shadow it)."""
        return self._modules.get("backbone")

    #: Encode only the rows where the modality is present (absent rows: zeros, masked by the fusion), at the
    #: cost of one host read per step (:func:`mtmm_train.model.encode_present`). None: True for a backbone
    #: encoder (``backbone`` set), False otherwise.
    skip_absent: bool | None = None

    #: :meth:`forward` and :meth:`tokens` accept ``present`` (bool ``(B,)`` or None) as a second argument, and
    #: the model passes the modality's mask (see the class docstring). False: they take ``x`` alone.
    uses_presence: bool = False

    @classmethod
    def preprocessing(cls, settings: dict[str, Any]) -> Preprocessing:
        """The reader settings this encoder needs, from its own config ``settings`` (before any data
        exists; see :mod:`mtmm_train.preprocessing`). Default: none.

        Raises:
            SettingError: the settings cannot give a preprocessing (e.g. a model not available offline).
        """
        return Preprocessing()

    def block_index(self, name: str) -> int | None:
        """The depth (0 = nearest the input) of the block that the parameter ``name`` (relative to this
        encoder) belongs to, for layer-wise learning-rate decay; None: the head end (no decay).
        Default: None for every parameter."""
        return None

    @property
    def num_blocks(self) -> int:
        """How many blocks :meth:`block_index` counts (0: no layer-wise decay possible)."""
        return 0

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute activations in the backward pass to save memory.

        Raises:
            SettingError: the encoder cannot (the default).
        """
        raise SettingError("gradient_checkpointing", f"is not available for {type(self).__name__}; use a backbone "
                           "encoder (timm, hf) or set it to false")

    def __init__(self, modality: ModalitySpec, kinds: tuple[str, ...]) -> None:
        super().__init__()
        if modality.kind not in kinds:
            raise ComponentError(
                f"{type(self).__name__} reads {' or '.join(kinds)} input, but modality '{modality.name}' is "
                f"{modality.kind} with shape {modality.shape}; choose another encoder, e.g. "
                f"encoder@{KEY}={SUGGESTED[modality.kind]}"
            )
        self.modality = modality.name

    def tokens(self, x: Tensor) -> Tensor:
        """Encode ``x`` ``(B, *shape)`` into tokens ``(B, L, D)``."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """Encode ``x`` ``(B, *shape)`` into one vector per sample ``(B, D)``."""
        return self.tokens(x).mean(1)

    def extra_repr(self) -> str:
        return f"modality={self.modality!r}, out_dim={self.out_dim}"


def check_sizes(**sizes: Any) -> None:
    """Refuse sizes (widths, channels, layers, heads) below 1 before a layer is allocated; None passes.

    Shared by encoders, fusions and MTL architectures.

    Args:
        sizes: setting name -> an integer, a list of integers, or None.

    Raises:
        SettingError: ``<name> must be ... >= 1, found <value>; ...`` for the first bad setting.
    """
    for name, value in sizes.items():
        many = isinstance(value, list | tuple)
        values = list(value) if many else [value]
        if all(v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 1) for v in values):
            continue
        fix = f"give positive integers, e.g. {KEY}.{name}=[64]" if many else f"give a positive integer, e.g. " \
            f"{KEY}.{name}=64"
        raise SettingError(name, f"must be {'sizes' if many else 'a size'} >= 1, found {value!r}; {fix}")


def as_unit_float(x: Tensor) -> Tensor:
    """Pixels or samples as float32: ``uint8`` -> ``[0, 1]``, ``int16`` -> ``[-1, 1)``, 16-bit floats widened,
    float32 unchanged.

    Readers may deliver images as ``uint8`` and audio as ``int16`` (compact caches, fast loaders);
    every encoder of images, audio and video calls this first.
    """
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    if x.dtype == torch.int16:
        return x.float().div_(32768.0)
    if x.dtype in (torch.float16, torch.bfloat16):  # a compact audio cache (dataset.modalities.<m>.dtype)
        return x.float()
    return x


SUGGESTED = {"image": "cnn", "sequence": "conv1d", "tokens": "embedding_bag", "vector": "mlp", "video": "frames"}


def mlp(dims: list[int], dropout: float = 0.0, last_activation: bool = True) -> nn.Sequential:
    """Linear layers of sizes ``dims[0] -> dims[1] -> ...`` with GELU (and dropout) between them."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=False)):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2 or last_activation:
            layers.append(nn.GELU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)
