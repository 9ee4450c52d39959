"""Image files (PNG, JPEG, ... whatever Pillow opens), resized to a fixed size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mtmm_train.batch import ModalitySpec
from mtmm_train.data.manifest import Table, is_empty
from mtmm_train.data.optional import require
from mtmm_train.data.readers.base import ModalityReader, ReadContext, ReadResult, decode_files, resolve, stack_present
from mtmm_train.errors import SettingError


class ImageReader(ModalityReader):
    """A column of image paths -> ``(C, H, W)`` floats in [0, 1].

    Args:
        name: the modality name (passed in by the dataset).
        column: the column of paths (relative to the manifest's folder); null: ``name``.
        size: ``[H, W]`` after resizing (bilinear; the aspect ratio is not kept).
        channels: 1 (grayscale) or 3 (RGB).
    """

    reads_files = True

    def __init__(self, name: str, column: str | None = None, size: tuple[int, int] = (32, 32),
                 channels: int = 3) -> None:
        super().__init__(name, column)
        size = tuple(size)
        if not (len(size) == 2 and all(int(s) >= 1 for s in size)):
            raise SettingError("size", f"must be [height, width] in pixels, found {list(size)}")
        if channels not in (1, 3):
            raise SettingError("channels", f"must be 1 (grayscale) or 3 (RGB), found {channels}")
        self.size = (int(size[0]), int(size[1]))
        self.channels = channels

    def decode(self, path: Path) -> Tensor:
        """Open, convert and resize one image: ``(C, H, W)`` in [0, 1]."""
        image_mod = require("PIL.Image", "data", "reading image files", package="pillow")
        with image_mod.open(path) as im:
            im = im.convert("L" if self.channels == 1 else "RGB")
            im = im.resize((self.size[1], self.size[0]), image_mod.Resampling.BILINEAR)
            x = np.asarray(im, dtype=np.float32) / 255.0  # (H, W) or (H, W, 3)
        x = x[None] if x.ndim == 2 else x.transpose(2, 0, 1)
        return torch.from_numpy(np.ascontiguousarray(x))

    def read(self, table: Table, ctx: ReadContext) -> ReadResult[ModalitySpec]:
        require("PIL.Image", "data", "reading image files", package="pillow")
        cells = table[self.column]
        rows = [i for i, v in enumerate(cells) if not is_empty(v)]
        images = decode_files([resolve(ctx.root, cells[i]) for i in rows], self.decode, ctx, "images")
        out: list[Tensor | None] = [None] * len(cells)
        for i, x in zip(rows, images, strict=True):
            out[i] = x
        shape = (self.channels, *self.size)
        return ReadResult(*stack_present(out, shape), ModalitySpec(self.name, shape, "image"))
