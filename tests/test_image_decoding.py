"""Images decode as they look: bit depth, EXIF orientation, CMYK, palette, alpha, resize, crop; bad files say where."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mtmm_train.batch import ModalitySpec
from mtmm_train.data.files import files
from mtmm_train.data.readers.image import ImageReader
from mtmm_train.encoders.base import as_unit_float
from mtmm_train.encoders.cnn import CNNEncoder
from mtmm_train.errors import UserError

SIXTEEN = np.array([[0, 2700, 32768, 65535]], dtype=np.uint16)  # (H=1, W=4)
EIGHT = [0, 11, 128, 255]  # round(v * 255 / 65535): by the bit depth, not by the image's min/max


def decode(path: Path, **settings: object) -> torch.Tensor:
    return ImageReader("image", **settings).decode(path)


def png16_rgb(path: Path, rgb: np.ndarray) -> None:
    """Write a 16-bit-per-channel RGB PNG (Pillow cannot write one) from ``(H, W, 3)`` uint16."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\0" + rgb[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))


@pytest.mark.parametrize("suffix", ["png", "tif"])
def test_16_bit_grayscale_scales_by_bit_depth(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"x.{suffix}"
    Image.fromarray(SIXTEEN).save(path)
    x = decode(path, size=[1, 4], channels=1)
    assert x.dtype == torch.uint8 and x.shape == (1, 1, 4)
    assert x.flatten().tolist() == EIGHT  # 2,700 is dark, not white; 32,768 mid-grey
    unit = as_unit_float(x).flatten()
    assert unit[3] == 1.0 and abs(float(unit[2]) - 0.5) < 0.01
    assert decode(path, size=[1, 4]).shape == (3, 1, 4)  # grey -> RGB repeats the level
    assert decode(path, size=[1, 4])[:, 0, 2].tolist() == [128, 128, 128]


def test_16_bit_rgb_png_scales_by_bit_depth(tmp_path: Path) -> None:
    rgb = np.zeros((1, 4, 3), dtype=np.uint16)
    rgb[0, :, 0] = SIXTEEN[0]
    rgb[0, :, 2] = 65535 - SIXTEEN[0]
    png16_rgb(tmp_path / "rgb.png", rgb)
    x = decode(tmp_path / "rgb.png", size=[1, 4])
    assert x[0, 0].tolist() == [0, 10, 128, 255]  # the high byte: 65535 -> 255, 32768 -> 128
    assert x[2, 0].tolist() == [255, 245, 127, 0]


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    a = np.zeros((2, 4, 3), dtype=np.uint8)  # stored 4 wide, 2 high; a red top-left pixel
    a[0, 0] = (255, 0, 0)
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    im.save(tmp_path / "phone.png", exif=exif.tobytes())
    x = decode(tmp_path / "phone.png", size=[4, 2], interpolation="nearest")  # displayed 2 wide, 4 high
    assert x.shape == (3, 4, 2)
    assert x[:, 0, 1].tolist() == [255, 0, 0] and x[0].sum() == 255  # top-left went to the top-right


def test_cmyk_palette_and_alpha(tmp_path: Path) -> None:
    Image.new("CMYK", (2, 2), (0, 255, 255, 0)).save(tmp_path / "cmyk.tif")
    assert decode(tmp_path / "cmyk.tif", size=[2, 2])[:, 0, 0].tolist() == [255, 0, 0]
    p = Image.new("P", (2, 2), 1)
    p.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    p.save(tmp_path / "palette.png")
    assert decode(tmp_path / "palette.png", size=[2, 2])[:, 1, 1].tolist() == [10, 200, 30]
    rgba = np.zeros((1, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (255, 0, 0, 0)  # fully transparent red: the background shows
    rgba[0, 1] = (0, 0, 0, 128)  # half-transparent black over white: mid grey
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    x = decode(tmp_path / "alpha.png", size=[1, 2])
    assert x[:, 0, 0].tolist() == [255, 255, 255] and all(abs(v - 127) <= 1 for v in x[:, 0, 1].tolist())
    assert decode(tmp_path / "alpha.png", size=[1, 2], background=0)[:, 0, 0].tolist() == [0, 0, 0]
    p.info["transparency"] = 1  # a palette's transparent colour counts as alpha too
    p.save(tmp_path / "palette_t.png", transparency=1)
    assert decode(tmp_path / "palette_t.png", size=[2, 2], background=0)[:, 0, 0].tolist() == [0, 0, 0]


def test_resize_interpolation_and_centre_crop(tmp_path: Path) -> None:
    a = np.arange(4 * 8, dtype=np.uint8).reshape(4, 8) * 7  # 8 wide, 4 high
    Image.fromarray(a).save(tmp_path / "g.png")
    # crop_pct: the shorter side to floor(2 / 0.5) = 4 (no resize here), then the centre 2x2.
    x = decode(tmp_path / "g.png", size=[2, 2], channels=1, crop_pct=0.5)
    assert x[0].tolist() == a[1:3, 3:5].tolist()
    plain = decode(tmp_path / "g.png", size=[2, 2], channels=1)  # both sides: the whole image, squeezed
    assert plain[0].tolist() != x[0].tolist()
    near = decode(tmp_path / "g.png", size=[3, 5], channels=1, interpolation="nearest")
    assert set(near.flatten().tolist()) <= set(a.flatten().tolist())  # nearest only copies pixels
    assert decode(tmp_path / "g.png", size=[3, 5], channels=1, interpolation="bicubic").shape == (1, 3, 5)
    assert ImageReader("image").size == (32, 32)  # size null: today's default
    for setting, value, match in (("interpolation", "cubic", "interpolation must be one of"),
                                  ("crop_pct", 1.5, r"crop_pct must be in \(0, 1\]"),
                                  ("size", [0, 3], "size must be")):
        with pytest.raises(UserError, match=match):
            ImageReader("image", **{setting: value})


def test_an_undecodable_image_names_the_file_and_the_row(tmp_path: Path) -> None:
    for i in range(3):
        Image.new("RGB", (4, 4), (i * 60, 0, 0)).save(tmp_path / f"{i}.png")
    (tmp_path / "2.png").write_bytes(b"not an image")
    (tmp_path / "m.csv").write_text("image,label,fold\n0.png,a,train\n1.png,b,val\n2.png,a,train\n")
    node = {"_target_": "mtmm_train.data.readers.image.ImageReader", "size": [4, 4]}
    kw = {"modalities": {"image": node}, "tasks": {"label": {"_target_": "mtmm_train.data.readers.label.ClassLabel"}},
          "split_column": "fold", "cache": False, "num_workers": 0}
    with pytest.raises(UserError, match=r"dataset.modalities.image: 1 of 3 files could not be read as images: "
                                        r".*2.png \(column 'image' row 3 of .*m.csv"):
        files(str(tmp_path / "m.csv"), **kw)


def test_encoders_take_uint8_pixels_as_unit_floats() -> None:
    torch.manual_seed(0)
    enc = CNNEncoder(ModalitySpec("image", (3, 8, 8), "image")).eval()
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(enc(x), enc(x.float() / 255))
