"""JPEG images of a streamed batch decoded on the training device (``dataset.modalities.<m>.decode=device``).

With ``dataset.storage=stream`` and an image reader's ``decode: device``, the DataLoader workers
only read each file's bytes: a JPEG the device can decode (Huffman-coded, 8 bits, 1 or 3
components) travels to the training process as bytes, packed into flat NumPy arrays
(:class:`EncodedImages`: the worker protocol stays dicts of arrays); any other file (PNG, TIFF, a
CMYK or 12-bit JPEG) is decoded by the worker with Pillow, as with ``decode: host``. The training
process then decodes the batch's JPEGs in one ``torchvision.io.decode_jpeg(list, device=...)``
call (nvjpeg on CUDA; libjpeg-turbo on a CPU run, the same code path, which is how it is tested),
applies the EXIF orientation read by the worker (torchvision applies it on the CPU only), and
resizes and crops each image on the device with the reader's geometry
(:meth:`~mtmm_train.data.readers.image.ImageReader.resized`, shared with Pillow's path) and
``torchvision.transforms.v2.functional.resize`` with antialiasing.

A JPEG the device decoder rejects is decoded on the host with Pillow (logged once per modality);
a file Pillow cannot decode either stops the run with the one line of the host path, naming the
file and its manifest row.
"""

from __future__ import annotations

import io
import logging
import struct
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mtmm_train.data.optional import require

log = logging.getLogger("mtmm_train")

JPEG_MAGIC = b"\xff\xd8\xff"
# Start-of-frame markers: baseline, extended and progressive Huffman (what nvjpeg decodes); the others
# (lossless, hierarchical, arithmetic coding) go to Pillow.
DEVICE_SOF = (0xC0, 0xC1, 0xC2)
OTHER_SOF = (0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)
ARRAYS = ("data", "offsets", "slots", "orientation", "rows", "index")
_fallback_logged: set[str] = set()  # modalities whose host fallback was logged (once per process)


@dataclass(frozen=True)
class JpegHeader:
    """What the worker learns from a JPEG's markers before its scan data.

    Attributes:
        orientation: the EXIF orientation, 1 (as stored) to 8.
        device_ok: the device decoder takes it (Huffman-coded, 8 bits, 1 or 3 components).
    """

    orientation: int
    device_ok: bool


def jpeg_header(data: bytes) -> JpegHeader | None:
    """Parse a file's JPEG markers up to its first scan; None when the bytes are not a JPEG.

    A truncated or odd header gives ``device_ok=False``: the host decoder then decides (and names
    the file if it cannot decode it either).
    """
    if not data.startswith(JPEG_MAGIC):
        return None
    orientation, sof, precision, components = 1, None, 0, 0
    i, n = 2, len(data)
    try:
        while i + 4 <= n:
            if data[i] != 0xFF:
                return JpegHeader(orientation, False)
            marker = data[i + 1]
            if marker == 0xFF:  # fill byte
                i += 1
                continue
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length
                i += 2
                continue
            if marker in (0xDA, 0xD9):  # start of scan, end of image
                break
            length = struct.unpack(">H", data[i + 2:i + 4])[0]
            segment = data[i + 4:i + 2 + length]
            if marker == 0xE1 and segment.startswith(b"Exif\x00\x00"):
                orientation = exif_orientation(segment[6:])
            elif marker in DEVICE_SOF or marker in OTHER_SOF:
                sof, precision, components = marker, segment[0], segment[5]
            i += 2 + length
    except (struct.error, IndexError):
        return JpegHeader(orientation, False)
    return JpegHeader(orientation, sof in DEVICE_SOF and precision == 8 and components in (1, 3))


def exif_orientation(tiff: bytes) -> int:
    """The Orientation tag (0x0112) of an EXIF block's first IFD; 1 when absent or unreadable."""
    try:
        order = {b"II": "<", b"MM": ">"}[tiff[:2]]
        ifd = struct.unpack(order + "I", tiff[4:8])[0]
        count = struct.unpack(order + "H", tiff[ifd:ifd + 2])[0]
        for k in range(count):
            entry = ifd + 2 + 12 * k
            if struct.unpack(order + "H", tiff[entry:entry + 2])[0] == 0x0112:
                value = struct.unpack(order + "H", tiff[entry + 8:entry + 10])[0]
                return value if 1 <= value <= 8 else 1
    except (KeyError, struct.error):
        pass
    return 1


def orient(x: Tensor, orientation: int) -> Tensor:
    """``(C, H, W)`` pixels as stored -> upright, as ``PIL.ImageOps.exif_transpose`` gives them."""
    if orientation == 2:
        return x.flip(-1)
    if orientation == 3:
        return x.flip(-1).flip(-2)
    if orientation == 4:
        return x.flip(-2)
    if orientation == 5:
        return x.transpose(-1, -2)
    if orientation == 6:
        return x.transpose(-1, -2).flip(-1)
    if orientation == 7:
        return x.transpose(-1, -2).flip(-1).flip(-2)
    if orientation == 8:
        return x.transpose(-1, -2).flip(-2)
    return x


@dataclass
class EncodedImages:
    """One modality's JPEGs of a batch, as the workers send them: flat NumPy arrays.

    Attributes:
        data: ``uint8`` the files' bytes, one after the other.
        offsets: ``int64`` ``(k + 1,)``: file ``i`` is ``data[offsets[i]:offsets[i + 1]]``.
        slots: ``int64`` ``(k,)`` each file's position in the batch.
        orientation: ``uint8`` ``(k,)`` EXIF orientations (1: as stored).
        rows: ``int64`` ``(k,)`` manifest rows, and ``index`` the positions in the split (for messages).
    """

    data: np.ndarray
    offsets: np.ndarray
    slots: np.ndarray
    orientation: np.ndarray
    rows: np.ndarray
    index: np.ndarray

    def __len__(self) -> int:
        return len(self.slots)

    def arrays(self, modality: str) -> dict[str, np.ndarray]:
        """The flat ``{"<modality>/<field>": array}`` the worker protocol carries."""
        return {f"{modality}/{k}": getattr(self, k) for k in ARRAYS}

    @staticmethod
    def unpack(arrays: dict[str, Any]) -> dict[str, EncodedImages]:
        """modality -> its images, from :meth:`arrays` of every modality (NumPy arrays or tensors)."""
        names = sorted({k.rsplit("/", 1)[0] for k in arrays})
        return {m: EncodedImages(*(np.asarray(arrays[f"{m}/{k}"]) for k in ARRAYS)) for m in names}


@dataclass
class Packer:
    """Collects a modality's JPEGs while a worker walks a batch (:meth:`add`), then packs them (:meth:`pack`)."""

    chunks: list[bytes] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)
    orientation: list[int] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    index: list[int] = field(default_factory=list)

    def add(self, data: bytes, slot: int, orientation: int, row: int, index: int) -> None:
        self.chunks.append(data)
        self.slots.append(slot)
        self.orientation.append(orientation)
        self.rows.append(row)
        self.index.append(index)

    def pack(self) -> EncodedImages:
        sizes = np.array([len(c) for c in self.chunks], dtype=np.int64)
        offsets = np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(sizes)])
        return EncodedImages(np.frombuffer(b"".join(self.chunks), dtype=np.uint8).copy(), offsets,
                             np.array(self.slots, dtype=np.int64), np.array(self.orientation, dtype=np.uint8),
                             np.array(self.rows, dtype=np.int64), np.array(self.index, dtype=np.int64))


def decode_into(inputs: dict[str, Tensor], encoded: dict[str, EncodedImages], split: Any,
                device: torch.device | str) -> None:
    """Decode each modality's JPEGs on ``device`` and write them into ``inputs[m]`` at their slots, in place.

    Args:
        inputs: the batch's inputs; ``inputs[m]`` ``(B, C, H, W)`` ``uint8`` on ``device`` (the rows the
            workers decoded already filled, absent rows zeros).
        encoded: modality -> its JPEGs (:class:`EncodedImages`).
        split: the :class:`~mtmm_train.data.base.FileSplit` (readers, paths, columns, manifest: for messages).
        device: where to decode (the training device).
    """
    device = torch.device(device)
    for m, enc in encoded.items():
        if not len(enc):
            continue
        images = decode_images(enc, split.readers[m], m, split, device)
        slots = torch.from_numpy(enc.slots).to(inputs[m].device, non_blocking=True)
        inputs[m].index_copy_(0, slots, images.to(inputs[m].device))


def decode_images(enc: EncodedImages, reader: Any, modality: str, split: Any, device: torch.device) -> Tensor:
    """``(k, C, H, W)`` ``uint8`` on ``device``: decoded, oriented, resized and cropped as the reader says."""
    io_mod = require("torchvision.io", "backbones", "decoding JPEG images on the device (decode=device)",
                     package="torchvision")
    mode = io_mod.ImageReadMode.GRAY if reader.channels == 1 else io_mod.ImageReadMode.RGB
    data = torch.from_numpy(enc.data)
    files = [data[int(a):int(b)] for a, b in zip(enc.offsets[:-1], enc.offsets[1:], strict=True)]
    with warnings.catch_warnings():  # torchvision 0.29 announces its decoders' move to torchcodec on every call
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            decoded = [(x, False) for x in io_mod.decode_jpeg(files, mode=mode, device=device)]
        except (RuntimeError, ValueError):  # the batch call returns nothing on any error: one by one, then Pillow
            decoded = [decode_one(io_mod, f, mode, device, reader, modality, split, enc, j)
                       for j, f in enumerate(files)]
    return torch.stack([x if final else resize(orient(x, o), reader)
                        for (x, final), o in zip(decoded, enc.orientation.tolist(), strict=True)])


def decode_one(io_mod: Any, data: Tensor, mode: Any, device: torch.device, reader: Any, modality: str,
               split: Any, enc: EncodedImages, j: int) -> tuple[Tensor, bool]:
    """The ``j``-th JPEG on the device (``(pixels as stored, False)``), or, when the device decoder rejects it,
    the host path's pixels (``(pixels at the reader's size, True)``: Pillow oriented and resized them).

    Raises:
        ComponentError: Pillow cannot decode it either; the host path's line, naming the file and its row.
    """
    try:
        return io_mod.decode_jpeg(data, mode=mode, device=device), False
    except (RuntimeError, ValueError) as e:
        reason = " ".join(str(e).split())[:120]
    path, at = source(split, modality, enc, j)
    if modality not in _fallback_logged:
        _fallback_logged.add(modality)
        log.warning("dataset.modalities.%s.decode=device: the device decoder rejected %s (%s); such files are "
                    "decoded on the host with Pillow (logged once)", modality, path, reason)
    try:
        x = reader.decode(io.BytesIO(data.numpy().tobytes()))
    except Exception as e:  # the host path's one line
        from mtmm_train.errors import ComponentError

        raise ComponentError(f"dataset.modalities.{modality}: {path} ({at}) could not be decoded: "
                             f"{type(e).__name__}: {' '.join(str(e).split())[:160]}; fix or replace the file, or "
                             "empty the cell") from None
    return x.to(device), True


def source(split: Any, modality: str, enc: EncodedImages, j: int) -> tuple[str, str]:
    """The file of the ``j``-th JPEG of ``enc`` and where the manifest names it, for messages."""
    from mtmm_train.data.readers.base import where

    path = split.paths[modality][int(enc.index[j])]
    return str(path), where(split.columns.get(modality, modality), int(enc.rows[j]), split.manifest)


def resize(x: Tensor, reader: Any) -> Tensor:
    """``(C, h, w)`` ``uint8`` -> the reader's ``(C, H, W)``: resized with antialiasing and its interpolation,
    then centre-cropped (``crop_pct``), with :meth:`ImageReader.resized`'s geometry."""
    tf = require("torchvision.transforms.v2.functional", "backbones", "resizing images on the device",
                 package="torchvision")
    modes = require("torchvision.transforms", "backbones", "resizing images on the device",
                    package="torchvision").InterpolationMode
    new_h, new_w, top, left = reader.resized(int(x.shape[-2]), int(x.shape[-1]))
    if (new_h, new_w) != tuple(x.shape[-2:]):
        # nearest: NEAREST_EXACT samples pixel centres, as Pillow does (torch's "nearest" is shifted by half a pixel).
        mode = {"bilinear": modes.BILINEAR, "bicubic": modes.BICUBIC, "nearest": modes.NEAREST_EXACT}[
            reader.interpolation]
        x = tf.resize(x, [new_h, new_w], interpolation=mode, antialias=True)
    h, w = reader.size
    return x[:, top:top + h, left:left + w]
