"""1-D convolutional encoder for sequences (C, L), e.g. audio features or sensor streams."""

from __future__ import annotations

from torch import Tensor, nn

from mtmm_train.batch import ModalitySpec
from mtmm_train.encoders.base import Encoder, as_unit_float, check_sizes
from mtmm_train.encoders.norm import MaskedBatchNorm1d, run_layers


class Conv1dEncoder(Encoder):
    """Blocks of (conv1d, BatchNorm, ReLU), each halving the length after the first.

    The BatchNorm layers take their batch statistics, and learn their running statistics, from the rows
    where the modality is present (``present``, :attr:`~mtmm_train.encoders.base.Encoder.uses_presence`;
    no host read).

    Args:
        modality: the modality spec (passed in by the recipe).
        out_dim: output size D.
        channels: output channels of each block.
        kernel_size: odd kernel size.
        batch_norm: use BatchNorm after each convolution (presence-aware:
            :class:`~mtmm_train.encoders.norm.MaskedBatchNorm1d`).
    """

    uses_presence = True

    def __init__(self, modality: ModalitySpec, out_dim: int = 64, channels: tuple[int, ...] = (32, 32),
                 kernel_size: int = 5, batch_norm: bool = True) -> None:
        super().__init__(modality, kinds=("sequence",))
        check_sizes(out_dim=out_dim, channels=channels, kernel_size=kernel_size)
        self.out_dim = out_dim
        layers: list[nn.Module] = []
        c_in = modality.shape[0]
        for i, c_out in enumerate(channels):
            stride = 1 if i == 0 else 2
            layers += [nn.Conv1d(c_in, c_out, kernel_size, stride=stride, padding=kernel_size // 2,
                                 bias=not batch_norm)]
            layers += [MaskedBatchNorm1d(c_out)] if batch_norm else []
            layers += [nn.ReLU(inplace=True)]
            c_in = c_out
        self.net = nn.Sequential(*layers)
        self.proj = nn.Linear(c_in, out_dim)

    def forward(self, x: Tensor, present: Tensor | None = None) -> Tensor:
        # (B, D); int16/float16 audio -> float32
        return self.proj(run_layers(self.net, as_unit_float(x), present).mean(2))

    def tokens(self, x: Tensor, present: Tensor | None = None) -> Tensor:
        return self.proj(run_layers(self.net, as_unit_float(x), present).transpose(1, 2))  # (B, L', D)
