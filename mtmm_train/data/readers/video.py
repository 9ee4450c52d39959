"""Video files (anything FFmpeg decodes: MP4, MKV, AVI, WebM, ...) through PyAV -> a few frames per clip."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mtmm_train.batch import ModalitySpec
from mtmm_train.data import augment as aug
from mtmm_train.data.manifest import Table, is_empty
from mtmm_train.data.optional import require
from mtmm_train.data.readers.base import ModalityReader, ReadContext, ReadResult, decode_files, resolve, stack_present
from mtmm_train.errors import SettingError


class VideoReader(ModalityReader):
    """A column of video paths -> ``(frames * pool, C, H, W)`` ``uint8`` clips of ``frames`` frames each.

    Each clip is decoded with PyAV (the ``video`` extra; torchcodec is not used), every frame
    resized to ``size``, and ``frames * pool`` frames spread evenly over the clip are kept: ``pool``
    candidates for each of ``frames`` equal segments. The per-sample transform then chooses one
    frame per segment, a random one in training (drawn from ``(seed, epoch, row)``, see
    :mod:`mtmm_train.data.augment`) and the middle one in evaluation, and repeats it ``pool`` times
    so the shape stays; the ``frames`` encoder reads every ``pool``-th frame (``spec.info``). With
    ``pool: 1`` the frames are the same every epoch. The train-time image augmentation (``augment``)
    is drawn once per clip and applied to all its frames.

    Args:
        name: the modality name (passed in by the dataset).
        column: the column of paths (relative to the manifest's folder); null: ``name``.
        frames: frames the model sees per clip.
        pool: candidate frames per segment (training chooses among them).
        size: ``[H, W]`` of every frame (bilinear; the aspect ratio is not kept).
        channels: 1 (grayscale) or 3 (RGB).
        augment: train-time augmentation (``preset`` and image settings; :func:`~mtmm_train.data.augment.settings_for`).
    """

    reads_files = True

    def __init__(self, name: str, column: str | None = None, frames: int = 8, pool: int = 2,
                 size: tuple[int, int] = (32, 32), channels: int = 3, augment: dict[str, Any] | None = None) -> None:
        super().__init__(name, column)
        for setting, value in (("frames", frames), ("pool", pool)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SettingError(setting, f"must be a positive integer, found {value!r}")
        size = tuple(size)
        if not (len(size) == 2 and all(isinstance(s, int) and s >= 1 for s in size)):
            raise SettingError("size", f"must be [height, width] in pixels, found {list(size)}")
        if channels not in (1, 3):
            raise SettingError("channels", f"must be 1 (grayscale) or 3 (RGB), found {channels}")
        self.frames, self.pool, self.size, self.channels = frames, pool, (int(size[0]), int(size[1])), channels
        self.augment = aug.settings_for("video", augment)
        self.augment_device = aug.augment_device(augment)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(frames * pool, C, H, W)``: one decoded clip."""
        return (self.frames * self.pool, self.channels, *self.size)

    def decode(self, path: Path) -> Tensor:
        """Decode one clip: ``frames * pool`` frames spread evenly over it, ``(P, C, H, W)`` ``uint8``."""
        av = require("av", "video", "reading video files", package="av")
        height, width = self.size
        fmt = "gray" if self.channels == 1 else "rgb24"
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError("the file has no video stream")
            stream = container.streams.video[0]
            decoded = [f.reformat(width=width, height=height, format=fmt).to_ndarray()
                       for f in container.decode(stream)]
        if not decoded:
            raise ValueError("the file holds no video frames")
        keep = aug.frame_indices(len(decoded), self.shape[0], None).tolist()
        x = np.stack([decoded[i] for i in keep])  # (P, H, W) or (P, H, W, 3)
        x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
        return torch.from_numpy(np.ascontiguousarray(x))

    def read(self, table: Table, ctx: ReadContext) -> ReadResult[ModalitySpec]:
        require("av", "video", "reading video files", package="av")
        cells = table[self.column]
        rows = [i for i, v in enumerate(cells) if not is_empty(v)]
        clips = decode_files([resolve(ctx.root, cells[i]) for i in rows], self.decode, ctx, "video", rows=rows,
                             column=self.column)
        out: list[Tensor | None] = [None] * len(cells)
        for i, x in zip(rows, clips, strict=True):
            out[i] = x
        return ReadResult(*stack_present(out, self.shape, torch.uint8), self.spec())

    def spec(self) -> ModalitySpec:
        """The modality: kind ``video``, ``info`` says how to read the clip (``frames``, ``pool``)."""
        return ModalitySpec(self.name, self.shape, "video", info={"frames": self.frames, "pool": self.pool})

    def augment_transform(self) -> aug.SampleTransform | None:
        """The train-time transform (frame choice and image augmentation), wherever it runs."""
        if self.pool == 1 and not aug.has_image_ops(self.augment):
            return None
        return aug.VideoOps(self.augment, self.size, self.frames, self.pool, train=True)

    def sample_transform(self, train: bool) -> aug.SampleTransform | None:
        """Training: the frame choice, and the image augmentation unless ``augment.device=cuda`` (then per
        batch on the device); evaluation: the middle frame of each segment."""
        if train and self.augment_device != "cuda":
            return self.augment_transform()
        if self.pool == 1:
            return None
        return aug.VideoOps(None, self.size, self.frames, self.pool, train=train)
