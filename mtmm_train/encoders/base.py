"""The encoder contract."""

from __future__ import annotations

from torch import Tensor, nn

from mtmm_train.batch import ModalitySpec
from mtmm_train.errors import UserError


class Encoder(nn.Module):
    """Base of all encoders.

    Subclasses set ``out_dim`` and implement :meth:`tokens`; :meth:`forward` pools the tokens
    by their mean (override it when a cheaper pooled path exists).

    Args:
        modality: the spec of the modality this encoder reads.
        kinds: the modality kinds the encoder accepts.
    """

    out_dim: int

    def __init__(self, modality: ModalitySpec, kinds: tuple[str, ...]) -> None:
        super().__init__()
        if modality.kind not in kinds:
            raise UserError(
                f"model.encoders.{modality.name}: {type(self).__name__} reads {' or '.join(kinds)} input, but "
                f"modality '{modality.name}' is {modality.kind} with shape {modality.shape}; choose another "
                f"encoder, e.g. encoder@model.encoders.{modality.name}={SUGGESTED[modality.kind]}"
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


SUGGESTED = {"image": "cnn", "sequence": "conv1d", "tokens": "embedding_bag", "vector": "mlp"}


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
