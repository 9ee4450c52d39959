"""Image files (PNG, JPEG, TIFF, ... whatever Pillow opens) -> ``(C, H, W)`` uint8 pixels of one fixed size."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import Tensor

from mtmm_train.batch import ModalitySpec
from mtmm_train.data import augment as aug
from mtmm_train.data.manifest import Table, is_empty
from mtmm_train.data.optional import require
from mtmm_train.data.readers.base import ModalityReader, ReadContext, ReadResult, decode_files, resolve, stack_present
from mtmm_train.errors import SettingError

log = logging.getLogger("mtmm_train")

DEFAULT_SIZE = (32, 32)
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos")
DECODES = ("host", "device")
# Pillow modes of more than 8 bits per sample -> the largest value of their range (scaled to 255).
HIGH_DEPTH = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535}


class ImageReader(ModalityReader):
    """A column of image paths -> ``(C, H, W)`` ``uint8`` pixels in ``[0, 255]``.

    Encoders turn them into floats (``as_unit_float``: ``[0, 1]``) and normalise them themselves,
    so one decoded (or cached) copy serves every backbone. Decoding, in order:

    1. EXIF orientation is applied (a phone photo stored sideways comes out upright).
    2. High bit depths are scaled by their real range, never by the image's own min/max: a
       16-bit pixel 65535 -> 255, 32768 -> 128 (16-bit grayscale PNG and TIFF; 16-bit RGB PNGs
       Pillow reduces to their high byte, the same scale). A 32-bit integer image (mode ``I``)
       is taken as 16-bit data (TIFF: its BitsPerSample tag decides); a float image (mode ``F``)
       as ``[0, 1]``, clipped.
    3. Palette, CMYK, YCbCr, LAB and 1-bit images are converted to RGB (or grayscale).
    4. Transparency (RGBA, LA, a palette's transparent colour) is composited over ``background``.
    5. Resize to ``size`` (``crop_pct`` null: both sides, the aspect ratio not kept), or as timm's
       evaluation does (``crop_pct`` set: the shorter side to ``size / crop_pct``, then a centre crop).

    ``decode=device`` (``dataset.storage=stream`` only): the DataLoader workers read each JPEG's bytes
    and the training process decodes the batch on the training device (nvjpeg on CUDA, torchvision
    on a CPU run), then orients, resizes and crops it there with the same geometry
    (:mod:`mtmm_train.data.device_decode`). Other files, and JPEGs the device cannot decode (CMYK,
    12-bit), are decoded here in the workers as with ``decode=host``.

    Args:
        name: the modality name (passed in by the dataset).
        column: the column of paths (relative to the manifest's folder); null: ``name``.
        size: ``[H, W]`` of every image; null: 32x32 (an encoder may fill it, e.g. 224x224).
        interpolation: ``bilinear``, ``bicubic``, ``nearest`` or ``lanczos`` (null: bilinear).
        crop_pct: null: plain resize; a value in ``(0, 1]``: resize then centre crop.
        channels: 1 (grayscale) or 3 (RGB); null: 3.
        background: the grey level ``0..255`` transparent pixels are composited over (255: white).
        augment: train-time augmentation (``preset`` and settings, :mod:`mtmm_train.data.augment`); the
            transform keeps ``uint8`` pixels at ``size``.
        decode: ``host`` (Pillow, in the DataLoader workers) or ``device`` (JPEGs of streamed batches
            decoded on the training device; needs ``augment.device=cuda`` or no augmentation, and an
            interpolation other than lanczos).
    """

    reads_files = True

    def __init__(self, name: str, column: str | None = None, size: Any = None, interpolation: str | None = None,
                 crop_pct: float | None = None, channels: int | None = None, background: int = 255,
                 augment: dict[str, Any] | None = None, decode: str | None = None) -> None:
        super().__init__(name, column)
        size = DEFAULT_SIZE if size is None else tuple(size) if isinstance(size, list | tuple) else (size, size)
        if not (len(size) == 2 and all(isinstance(s, int) and s >= 1 for s in size)):
            raise SettingError("size", f"must be [height, width] in pixels (or null for 32x32), found {list(size)}")
        interpolation = interpolation or "bilinear"
        if interpolation not in INTERPOLATIONS:
            raise SettingError("interpolation", f"must be one of {', '.join(INTERPOLATIONS)}, found '{interpolation}'")
        if crop_pct is not None and not (isinstance(crop_pct, int | float) and 0 < crop_pct <= 1):
            raise SettingError("crop_pct", f"must be in (0, 1] (e.g. 0.875) or null for a plain resize, found "
                               f"{crop_pct!r}")
        channels = 3 if channels is None else channels
        if channels not in (1, 3):
            raise SettingError("channels", f"must be 1 (grayscale) or 3 (RGB), found {channels}")
        if not (isinstance(background, int) and 0 <= background <= 255):
            raise SettingError("background", f"must be a grey level 0..255, found {background!r}")
        self.size = (int(size[0]), int(size[1]))
        self.interpolation, self.crop_pct = interpolation, crop_pct
        self.channels, self.background = channels, background
        self.augment = aug.settings_for("image", augment)
        self.augment_device = aug.augment_device(augment)
        decode = decode or "host"
        if decode not in DECODES:
            raise SettingError("decode", f"must be host (Pillow, in the DataLoader workers) or device (JPEGs decoded "
                               f"on the training device), found {decode!r}")
        if decode == "device" and interpolation == "lanczos":
            raise SettingError("decode", "is device, but interpolation=lanczos has no device implementation; use "
                               "interpolation=bicubic (or bilinear), or decode=host")
        if decode == "device" and self.augment_device != "cuda" and aug.has_image_ops(self.augment):
            raise SettingError("decode", "is device, so the pixels do not exist yet in the DataLoader workers where "
                               "per-sample augmentation (augment.device=cpu) runs; set augment.device=cuda (each batch "
                               "augmented on the training device after decoding), augment=none, or decode=host")
        self.decode_at = decode
        self._host_logged = False

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of every decoded image."""
        return (self.channels, *self.size)

    def decode(self, path: Path | BinaryIO) -> Tensor:
        """Open one image (a path, or its bytes as a file object) and return ``(C, H, W)`` ``uint8`` pixels
        (the steps in the class docstring)."""
        image_mod = require("PIL.Image", "data", "reading image files", package="pillow")
        ops = require("PIL.ImageOps", "data", "reading image files", package="pillow")
        with image_mod.open(path) as im:
            im = ops.exif_transpose(im)
            im = self._to_8bit(im, image_mod)
            im = self._resize(im, image_mod)
            x = np.asarray(im, dtype=np.uint8)  # (H, W) or (H, W, 3)
        x = x[None] if x.ndim == 2 else x.transpose(2, 0, 1)
        x = np.ascontiguousarray(x)
        return torch.from_numpy(x if x.flags.writeable else x.copy())  # grayscale: Pillow's read-only buffer

    def _to_8bit(self, im: Any, image_mod: Any) -> Any:
        """``L`` or ``RGB`` at 8 bits per sample, scaled by the bit depth, transparency composited."""
        mode = im.mode
        if mode in HIGH_DEPTH or mode in ("I", "F"):
            a = np.asarray(im).astype(np.float64)
            if mode == "F":
                top = 1.0
            elif mode == "I":
                bits = getattr(im, "tag_v2", {}).get(258) if hasattr(im, "tag_v2") else None
                bits = bits[0] if isinstance(bits, tuple) else bits
                top = float(2 ** int(bits) - 1) if bits else 65535.0
            else:
                top = float(HIGH_DEPTH[mode])
            a = np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8)
            im = image_mod.fromarray(a, mode="L")
        if mode == "P":
            im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        elif mode in ("1", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
            im = im.convert("RGB")
        elif mode == "PA":
            im = im.convert("RGBA")
        if im.mode in ("RGBA", "LA", "RGBa", "La"):
            rgba = im.convert("RGBA")
            back = image_mod.new("RGBA", rgba.size, (self.background,) * 3 + (255,))
            im = image_mod.alpha_composite(back, rgba).convert("RGB")
        return im.convert("L" if self.channels == 1 else "RGB")

    def resized(self, height: int, width: int) -> tuple[int, int, int, int]:
        """Where an image of ``height x width`` goes: ``(new_h, new_w, top, left)``, resized to
        ``new_h x new_w`` and then cropped to ``size`` from ``(top, left)`` (0, 0 without ``crop_pct``).

        The one geometry of both decoders (Pillow here, :mod:`mtmm_train.data.device_decode` on the device).
        """
        h, w = self.size
        if self.crop_pct is None:
            return h, w, 0, 0
        scale = (math.floor(h / self.crop_pct), math.floor(w / self.crop_pct))
        if scale[0] == scale[1]:  # as timm's eval transform: the shorter side to the scale, aspect kept
            short = scale[0]
            if width <= height:  # torchvision's Resize(int): the longer side truncated
                new_h, new_w = int(short * height / width), short
            else:
                new_h, new_w = short, int(short * width / height)
        else:
            new_h, new_w = scale
        return new_h, new_w, (new_h - h) // 2, (new_w - w) // 2

    def _resize(self, im: Any, image_mod: Any) -> Any:
        resample = getattr(image_mod.Resampling, self.interpolation.upper())
        h, w = self.size
        width, height = im.size
        new_h, new_w, top, left = self.resized(height, width)
        im = im.resize((new_w, new_h), resample) if im.size != (new_w, new_h) else im
        if self.crop_pct is None:
            return im
        return im.crop((left, top, left + w, top + h))

    def read(self, table: Table, ctx: ReadContext) -> ReadResult[ModalitySpec]:
        require("PIL.Image", "data", "reading image files", package="pillow")
        if self.decode_at == "device" and not self._host_logged:  # storage=memory|cache, mtmm-predict
            self._host_logged = True
            log.info("dataset.modalities.%s.decode=device applies to streamed batches (dataset.storage=stream); "
                     "these files are decoded once, on the host, with Pillow", self.name)
        cells = table[self.column]
        rows = [i for i, v in enumerate(cells) if not is_empty(v)]
        images = decode_files([resolve(ctx.root, cells[i]) for i in rows], self.decode, ctx, "images", rows=rows,
                              column=self.column)
        out: list[Tensor | None] = [None] * len(cells)
        for i, x in zip(rows, images, strict=True):
            out[i] = x
        return ReadResult(*stack_present(out, self.shape, torch.uint8), self.spec())

    def spec(self) -> ModalitySpec:
        """The modality's spec, known from the settings alone."""
        return ModalitySpec(self.name, self.shape, "image",
                            info={"interpolation": self.interpolation, "crop_pct": self.crop_pct})

    def augment_transform(self) -> aug.SampleTransform | None:
        """The train-time augmentation, wherever it runs (None: none)."""
        return aug.image_transform(self.augment, self.size)

    def sample_transform(self, train: bool) -> aug.SampleTransform | None:
        """Training: the augmentation, per sample (unless ``augment.device=cuda``: per batch on the device)."""
        return self.augment_transform() if train and self.augment_device != "cuda" else None
