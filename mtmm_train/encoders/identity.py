"""Identity encoder: a vector modality passes through unchanged (e.g. MMoE's experts on the raw input)."""

from __future__ import annotations

import math

from torch import Tensor

from mtmm_train.batch import ModalitySpec
from mtmm_train.encoders.base import Encoder, check_sizes
from mtmm_train.errors import KEY, SettingError


class IdentityEncoder(Encoder):
    """No parameters: the modality's values are its encoding.

    ``out_dim`` is the modality's size (a vector of ``F`` numbers gives ``F``); :meth:`tokens` is
    that vector as one token. With ``fusion=concat`` and ``mtl=mmoe``, the experts then see the raw
    input, as in the MMoE paper. A missing modality is zeros here too (the fusion masks it).

    Args:
        modality: the modality spec (passed in by the recipe); a vector.
        out_dim: null (the modality's size); a number is only accepted when it equals that size.
    """

    def __init__(self, modality: ModalitySpec, out_dim: int | None = None) -> None:
        super().__init__(modality, kinds=("vector",))
        check_sizes(out_dim=out_dim)
        size = math.prod(modality.shape)
        if out_dim is not None and out_dim != size:
            raise SettingError("out_dim", f"is {out_dim}, but the identity encoder passes modality '{modality.name}' "
                               f"through, so its size is the modality's {size}; set {KEY}.out_dim=null, or use "
                               f"encoder@{KEY}=mlp to project it")
        self.out_dim = size

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1).float()  # (B, F)

    def tokens(self, x: Tensor) -> Tensor:
        return self.forward(x).unsqueeze(1)  # (B, 1, F)
