"""Small CNN encoder for image-like tensors (C, H, W)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mtmm_train.batch import ModalitySpec
from mtmm_train.encoders.base import Encoder, as_unit_float, check_sizes
from mtmm_train.encoders.norm import MaskedBatchNorm2d, run_layers


class CNNEncoder(Encoder):
    """Blocks of (conv 3x3, BatchNorm, ReLU) x ``convs_per_block``, then 2x2 max-pool.

    Tokens are the positions of the last feature map, projected to ``out_dim``. The BatchNorm layers take
    their batch statistics, and learn their running statistics, from the rows where the modality is present
    (``present``, :attr:`~mtmm_train.encoders.base.Encoder.uses_presence`; no host read).

    Args:
        modality: the modality spec (passed in by the recipe).
        out_dim: output size D.
        channels: output channels of each block.
        convs_per_block: convolutions per block.
        batch_norm: use BatchNorm after each convolution (presence-aware:
            :class:`~mtmm_train.encoders.norm.MaskedBatchNorm2d`).
        channels_last: run the convolutions in channels-last memory format (NHWC), which
            tensor-core convolution kernels prefer under bf16/fp16 on GPUs.
    """

    uses_presence = True

    def __init__(self, modality: ModalitySpec, out_dim: int = 64, channels: tuple[int, ...] = (16, 32),
                 convs_per_block: int = 1, batch_norm: bool = True, channels_last: bool = False) -> None:
        super().__init__(modality, kinds=("image",))
        check_sizes(out_dim=out_dim, channels=channels, convs_per_block=convs_per_block)
        self.out_dim = out_dim
        layers: list[nn.Module] = []
        c_in = modality.shape[0]
        for c_out in channels:
            for _ in range(convs_per_block):
                layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batch_norm)]
                layers += [MaskedBatchNorm2d(c_out)] if batch_norm else []
                layers += [nn.ReLU(inplace=True)]
                c_in = c_out
            layers.append(nn.MaxPool2d(2))
        self.net = nn.Sequential(*layers)
        self.proj = nn.Linear(c_in, out_dim)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            self.net.to(memory_format=torch.channels_last)

    def features(self, x: Tensor, present: Tensor | None = None) -> Tensor:
        """The last feature map ``(B, C', H', W')``; ``present``: bool ``(B,)`` for the BatchNorm statistics
        (None: every row)."""
        # uint8 pixels (files, compact caches) -> [0, 1] floats first, on the device
        return run_layers(self.net, as_unit_float(x).contiguous(memory_format=self.memory_format), present)

    def forward(self, x: Tensor, present: Tensor | None = None) -> Tensor:
        return self.proj(self.features(x, present).mean((2, 3)))  # (B, D): pooling commutes with the projection

    def tokens(self, x: Tensor, present: Tensor | None = None) -> Tensor:
        return self.proj(self.features(x, present).flatten(2).transpose(1, 2))  # (B, H'W', D)
