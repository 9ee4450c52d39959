"""1-D convolutional encoder for sequences (C, L), e.g. audio features or sensor streams."""

from __future__ import annotations

from torch import Tensor, nn

from mtmm_train.batch import ModalitySpec
from mtmm_train.encoders.base import Encoder, as_unit_float, check_sizes


class Conv1dEncoder(Encoder):
    """Blocks of (conv1d, BatchNorm, ReLU), each halving the length after the first.

    Args:
        modality: the modality spec (passed in by the recipe).
        out_dim: output size D.
        channels: output channels of each block.
        kernel_size: odd kernel size.
        batch_norm: use BatchNorm after each convolution.
    """

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
            layers += [nn.BatchNorm1d(c_out)] if batch_norm else []
            layers += [nn.ReLU(inplace=True)]
            c_in = c_out
        self.net = nn.Sequential(*layers)
        self.proj = nn.Linear(c_in, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.net(as_unit_float(x)).mean(2))  # (B, D); int16/float16 audio -> float32

    def tokens(self, x: Tensor) -> Tensor:
        return self.proj(self.net(as_unit_float(x)).transpose(1, 2))  # (B, L', D)
