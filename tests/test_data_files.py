"""The manifest dataset: formats, readers, masks, splits, validation errors, the disk cache."""

from __future__ import annotations

import json
import logging
import math
import os
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import CONFIGS, compose_cfg, run_cli
from omegaconf import OmegaConf
from PIL import Image

from mtmm_train.data.audio import log_mel, mel_filterbank, read_wav, resample
from mtmm_train.data.files import files
from mtmm_train.data.optional import require
from mtmm_train.data.readers.image import ImageReader
from mtmm_train.errors import UserError
from mtmm_train.recipe import TrainRecipe

CLASSES = ("red", "green", "blue")
SPLIT_OF = ("train", "train", "train", "train", "val", "test")  # by row % 6
TONE_HZ = (300.0, 700.0, 1500.0)


def write_wav(path: Path, x: np.ndarray, rate: int, width: int = 2) -> None:
    """Write a mono PCM WAV of ``width`` bytes per sample from floats in [-1, 1]."""
    if width == 1:
        raw = (x * 127 + 128).astype(np.uint8).tobytes()
    elif width == 3:
        v = (x * (2**23 - 1)).astype(np.int32)
        raw = np.stack([v & 255, (v >> 8) & 255, (v >> 16) & 255], 1).astype(np.uint8).tobytes()
    else:
        raw = (x * 32767).astype(np.int16).tobytes()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(raw)


def make_rows(root: Path, n: int = 36, seed: int = 0) -> list[dict[str, Any]]:
    """Files for ``n`` samples under ``root`` and their manifest rows (class = row % 3).

    Row 5k has no audio, row 7k has no label, row 11k has an empty ``b``; row 0 is a JPEG.
    """
    rng = np.random.default_rng(seed)
    for sub in ("img", "wav", "npy"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        c = i % 3
        img = rng.integers(0, 40, (12, 10, 3)).astype(np.uint8)
        img[:, :, c] = 220  # the class is the image's dominant colour
        image = f"img/{i}.{'jpg' if i == 0 else 'png'}"
        Image.fromarray(img).save(root / image)
        t = np.arange(2000) / 8000
        write_wav(root / f"wav/{i}.wav", 0.5 * np.sin(2 * np.pi * TONE_HZ[c] * t), 8000)
        np.save(root / f"npy/{i}.npy", np.eye(3, dtype=np.float32)[c] + 0.1 * rng.standard_normal(3).astype(np.float32))
        rows.append({
            "image": image,
            "audio": "" if i % 5 == 0 else f"wav/{i}.wav",
            "embedding": f"npy/{i}.npy",
            "caption": f"a {CLASSES[c]} thing" + (" rare" if i == 4 else ""),  # 'rare' only in val (row 4)
            "a": round(float(c + 0.3 * rng.standard_normal()), 4),
            "b": "" if i % 11 == 0 else round(float(rng.standard_normal()), 4),
            "colour": "" if i % 7 == 0 else CLASSES[c],
            "odd": "yes" if i % 2 else "no",
            "tags": ["warm"] if c == 0 else ["cold", "deep"] if c == 2 else [],
            "y": round(float(10 * c + rng.standard_normal()), 4),
            "fold": SPLIT_OF[i % 6],
        })
    return rows


def write_manifest(root: Path, rows: list[dict[str, Any]], fmt: str = "csv") -> Path:
    """Write ``rows`` as a CSV (lists joined by '|', [] for none), JSONL or Parquet manifest."""
    path = root / f"manifest.{fmt}"
    if fmt == "csv":
        import csv

        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            for r in rows:
                w.writerow({**r, "tags": "|".join(r["tags"]) or "[]"})
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps({k: (None if v == "" else v) for k, v in r.items()}) + "\n" for r in rows))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        cols = {k: [None if r[k] == "" else r[k] for r in rows] for k in rows[0]}
        pq.write_table(pa.table(cols), path)
    return path


def node(name: str, **settings: Any) -> dict[str, Any]:
    """A reader or target config from configs/, with ``settings`` on top (as a user's YAML would)."""
    return {**OmegaConf.to_container(OmegaConf.load(CONFIGS / f"{name}.yaml")), **settings}


def modalities() -> dict[str, Any]:
    return {"image": node("reader/image", size=[8, 8]), "audio": node("reader/audio", max_frames=20, n_mels=16),
            "embedding": node("reader/array"), "caption": node("reader/text", max_length=4),
            "tabular": node("reader/numeric", columns=["a", "b"])}


def tasks() -> dict[str, Any]:
    return {"colour": node("target/label"), "odd": node("target/binary"), "tags": node("target/multilabel"),
            "y": node("target/regression")}


def load(manifest: Path, **kw: Any) -> Any:
    args = {"modalities": modalities(), "tasks": tasks(), "split_column": "fold", "cache": False,
            "num_workers": 0, **kw}
    return files(str(manifest), **args)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    rows = make_rows(root)
    for fmt in ("csv", "jsonl", "parquet"):
        write_manifest(root, rows, fmt)
    return root


def test_csv_jsonl_and_parquet_give_the_same_tensors(dataset_dir: Path) -> None:
    datas = [load(dataset_dir / f"manifest.{fmt}") for fmt in ("csv", "jsonl", "parquet")]
    for other in datas[1:]:
        assert other.modalities == datas[0].modalities and other.tasks == datas[0].tasks
        for name, split in datas[0].splits.items():
            for field in ("inputs", "present", "targets", "labeled"):
                for k, v in getattr(split, field).items():
                    assert torch.equal(getattr(other.splits[name], field)[k], v), (name, field, k)


def test_readers_give_the_documented_shapes_kinds_and_masks(dataset_dir: Path) -> None:
    data = load(dataset_dir / "manifest.csv", num_workers=2)
    m, t = data.modalities, data.tasks
    assert (m["image"].kind, m["image"].shape) == ("image", (3, 8, 8))
    assert (m["audio"].kind, m["audio"].shape) == ("sequence", (16, 20))
    assert (m["embedding"].kind, m["embedding"].shape) == ("vector", (3,))
    assert (m["caption"].kind, m["tabular"].shape) == ("tokens", (2,))
    assert (t["colour"].kind, t["colour"].dim) == ("multiclass", 3)
    assert (t["odd"].kind, t["tags"].dim, t["y"].kind) == ("binary", 3, "regression")
    train = data.splits["train"]
    assert {k: len(s) for k, s in data.splits.items()} == {"train": 24, "val": 6, "test": 6}
    # Rows 0, 5, 10, ... have an empty audio cell; rows 0, 7, 14, ... no colour label.
    rows = [i for i in range(36) if SPLIT_OF[i % 6] == "train"]
    assert train.present["audio"].tolist() == [i % 5 != 0 for i in rows]
    assert train.labeled["colour"].tolist() == [i % 7 != 0 for i in rows]
    assert not train.inputs["audio"][~train.present["audio"]].any()  # absent: zeros
    # The image's dominant colour is its class; classes sort alphabetically (blue, green, red).
    assert train.inputs["image"].dtype == torch.uint8  # pixels as stored; encoders make them floats
    colour = train.inputs["image"].float().mean((2, 3)).argmax(1)
    assert torch.equal(colour, torch.tensor([i % 3 for i in rows]))
    lab = train.labeled["colour"]
    assert torch.equal(train.targets["colour"][lab], torch.tensor([[2, 1, 0][i % 3] for i in rows])[lab])
    # "[]" is an empty label set (labelled), tags sorted: cold, deep, warm.
    assert train.labeled["tags"].all()
    assert train.targets["tags"][:3].tolist() == [[0, 0, 1], [0, 0, 0], [1, 1, 0]]
    assert train.targets["odd"][:2].tolist() == [0.0, 1.0]  # positive class: "yes"
    # The audio is a tone per class: its spectrum's brightest mel band rises with the class.
    band = train.inputs["audio"][:, :, 2:8].mean(2).argmax(1)
    present = train.present["audio"]
    by_class = [band[present & (torch.tensor(rows) % 3 == c)].float().mean() for c in range(3)]
    assert by_class[0] < by_class[1] < by_class[2]


def test_statistics_vocabulary_and_classes_come_from_the_training_split(dataset_dir: Path) -> None:
    data = load(dataset_dir / "manifest.csv")
    train, val = data.splits["train"], data.splits["val"]
    x = train.inputs["tabular"][:, 0]
    assert abs(float(x.mean())) < 1e-5 and abs(float(x.std(correction=0)) - 1) < 1e-4
    y = train.targets["y"][train.labeled["y"]]
    assert abs(float(y.mean())) < 1e-5 and float(val.targets["y"].abs().max()) < 5
    # 'rare' occurs in a validation row only: it maps to the unknown id 1, not a new id.
    assert data.modalities["caption"].vocab_size == 2 + 5  # pad, unknown, a, thing, red, green, blue
    assert 1 in val.inputs["caption"].tolist()[0] and 1 not in train.inputs["caption"].flatten().tolist()
    # An empty cell of 'b' is filled with the training mean (0) while the row keeps the modality.
    assert train.present["tabular"].all() and train.inputs["tabular"][0, 1] == 0


def test_ratio_splits_are_deterministic_by_seed(dataset_dir: Path) -> None:
    kw = {"split_column": None, "split_ratios": [0.5, 0.25, 0.25], "unseen_classes": "ignore"}
    a, b = load(dataset_dir / "manifest.csv", seed=1, **kw), load(dataset_dir / "manifest.csv", seed=1, **kw)
    c = load(dataset_dir / "manifest.csv", seed=2, **kw)
    assert {k: len(s) for k, s in a.splits.items()} == {"train": 18, "val": 9, "test": 9}
    assert torch.equal(a.splits["train"].inputs["image"], b.splits["train"].inputs["image"])
    assert not torch.equal(a.splits["train"].inputs["image"], c.splits["train"].inputs["image"])


def _rewrite(root: Path, change: Any) -> Path:
    rows = make_rows(root, n=12)
    change(rows, root)
    return write_manifest(root, rows)


def _missing(rows: list, root: Path) -> None:
    for i in (1, 2, 3, 4, 6):
        rows[i]["image"] = f"img/nope{i}.png"


def _unreadable_image(rows: list, root: Path) -> None:
    (root / "img/bad.png").write_bytes(b"not a png at all")
    rows[3]["image"] = "img/bad.png"


def _unreadable_audio(rows: list, root: Path) -> None:
    (root / "wav/bad.wav").write_bytes(b"RIFF....WAVEjunk")
    rows[2]["audio"] = "wav/bad.wav"


def _single_class(rows: list, root: Path) -> None:
    for r in rows:
        r["colour"] = "red"


def _empty_val(rows: list, root: Path) -> None:
    for r in rows:
        r["fold"] = "train" if r["fold"] == "val" else r["fold"]


def _unseen(rows: list, root: Path) -> None:
    rows[4]["colour"] = "purple"  # row 4 is in val


def _bad_split(rows: list, root: Path) -> None:
    rows[1]["fold"] = "training"


@pytest.mark.parametrize(("change", "overrides", "expected"), [
    (_missing, {}, r"dataset.modalities.image \(column 'image'\): 5 of 12 files not found, e.g. .*nope1.png, "
                   r".*nope2.png, .*nope3.png; paths are relative to the manifest's folder"),
    (_unreadable_image, {}, r"dataset.modalities.image: 1 of 12 files could not be read as images: .*bad.png"),
    (_unreadable_audio, {}, r"dataset.modalities.audio: 1 of 9 files could not be read as WAV audio: .*bad.wav"),
    (lambda rows, root: None, {"tasks": {"colour": node("target/label", column="color")}},
     r"dataset.tasks.colour reads column 'color', which the manifest does not have; its columns: image, audio"),
    (_single_class, {}, r"dataset.tasks.colour: column 'colour' has 1 class\(es\) in the training split \(red\)"),
    (_empty_val, {}, r"the 'val' split is empty \(from the split column 'fold'\)"),
    (_unseen, {}, r"dataset.tasks.colour: column 'colour' has classes outside the training split only: "
                  r"'purple' \(1 rows\); .*dataset.unseen_classes=ignore"),
    (_bad_split, {}, r"dataset.split_column 'fold' has the value 'training' .* allowed: train, val, test"),
], ids=["missing_files", "unreadable_image", "unreadable_audio", "no_column", "single_class", "empty_split",
        "unseen_class", "bad_split_value"])
def test_bad_data_fails_before_training_with_one_clear_line(tmp_path: Path, change: Any, overrides: dict,
                                                            expected: str) -> None:
    manifest = _rewrite(tmp_path, change)
    with pytest.raises(UserError, match=expected) as e:
        load(manifest, **overrides)
    assert "\n" not in str(e.value)


def test_unseen_classes_can_be_ignored_as_missing_labels(tmp_path: Path) -> None:
    data = load(_rewrite(tmp_path, _unseen), unseen_classes="ignore")
    val = data.splits["val"]
    assert data.tasks["colour"].dim == 3 and not val.labeled["colour"][0]  # row 4 is val's first row


def test_config_mistakes_name_the_key(dataset_dir: Path) -> None:
    with pytest.raises(UserError, match="dataset.manifest is not set"):
        files(None, modalities(), tasks())
    with pytest.raises(UserError, match=r"dataset.modalities.image.size must be \[height, width\]"):
        load(dataset_dir / "manifest.csv", modalities={"image": node("reader/image", size=[8])})
    with pytest.raises(UserError, match=r"dataset.modalities.photo must choose a reader.*reader@dataset.modalities"):
        load(dataset_dir / "manifest.csv", modalities={"photo": {"column": "image"}})
    with pytest.raises(UserError, match="dataset.tasks is empty"):
        load(dataset_dir / "manifest.csv", tasks={})


def test_cache_is_reused_and_invalidated_by_manifest_or_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    rows = make_rows(tmp_path, n=12)
    manifest = write_manifest(tmp_path, rows)
    kw = {"cache": True, "cache_dir": str(tmp_path / "cache")}
    first = load(manifest, **kw)
    entries = sorted((tmp_path / "cache" / "files").glob("*.pt"))
    assert len(entries) == 1

    def boom(self: ImageReader, path: Path) -> torch.Tensor:
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(ImageReader, "decode", boom)
    with caplog.at_level(logging.INFO, logger="mtmm_train"):
        again = load(manifest, **kw)
    assert "loaded manifest.csv from the cache" in caplog.text
    assert torch.equal(again.splits["train"].inputs["image"], first.splits["train"].inputs["image"])
    # A changed manifest or a changed preprocessing setting must decode again (and fail here).
    with pytest.raises(UserError, match="decoded although cached"):
        load(manifest, **{**kw, "modalities": {**modalities(), "image": node("reader/image", size=[4, 4])}})
    # So must an image the manifest names, edited in place (a new modification time).
    image = tmp_path / rows[2]["image"]
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(UserError, match="decoded although cached"):
        load(manifest, **kw)
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # back as it was: the entry is found again
    load(manifest, **kw)
    rows[1]["y"] = 99.0
    write_manifest(tmp_path, rows)
    with pytest.raises(UserError, match="decoded although cached"):
        load(manifest, **kw)
    monkeypatch.undo()
    assert load(manifest, **kw).splits["train"].targets["y"][1] > first.splits["train"].targets["y"][1]
    assert len(list((tmp_path / "cache" / "files").glob("*.pt"))) == 2


def test_mmap_keeps_cached_tensors_on_disk(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, make_rows(tmp_path, n=12))
    data = load(manifest, cache=True, cache_dir=str(tmp_path / "cache"), mmap=True)
    entry = next((tmp_path / "cache" / "files").glob("*.pt"))
    maps = Path("/proc/self/maps").read_text()
    assert str(entry) in maps  # the tensors are pages of the cache file, read on demand
    assert data.splits["train"].inputs["image"].shape == (8, 3, 8, 8)


def test_pretrained_tokenizer_ids_are_shifted_so_zero_stays_padding(dataset_dir: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    class CharTokenizer:  # stands in for a tokenizers.Tokenizer: ids are letters a=0 .. z=25
        def encode_batch(self) -> None: ...

        def encode(self, text: str, add_special_tokens: bool = False) -> Any:
            return type("Enc", (), {"ids": [ord(ch) - 97 for ch in text if ch.isalpha()]})

        def get_vocab_size(self) -> int:
            return 26

    monkeypatch.setattr("mtmm_train.data.readers.text.load_tokenizer", lambda name: CharTokenizer())
    data = load(dataset_dir / "manifest.csv", modalities={"caption": node("reader/text", tokenizer="chars.json")})
    assert data.modalities["caption"].vocab_size == 27
    assert data.splits["train"].inputs["caption"][0, :4].tolist() == [1, 18, 5, 4]  # "a red": a+1, r+1, e+1, d+1


def test_a_missing_optional_dependency_says_what_to_install() -> None:
    with pytest.raises(UserError, match=r"needs the Python package 'nopackage'.*pip install 'mtmm-train\[data\]'"):
        require("nopackage.sub", "data", "reading something")


def test_wav_reading_resampling_and_log_mel(tmp_path: Path) -> None:
    t = np.arange(4000) / 8000
    tone = 0.5 * np.sin(2 * np.pi * 1000 * t)
    for width in (1, 2, 3):
        write_wav(tmp_path / f"{width}.wav", tone, 8000, width)
        x, rate = read_wav(tmp_path / f"{width}.wav")
        assert rate == 8000 and float((x - torch.tensor(tone, dtype=torch.float32)).abs().max()) < 0.02
    up = resample(torch.tensor(tone, dtype=torch.float32), 8000, 16000)
    assert up.shape == (8000,)
    peak_hz = torch.fft.rfft(up).abs().argmax().item() * 16000 / len(up)
    assert abs(peak_hz - 1000) < 5 and abs(float(up.abs().max()) - 0.5) < 0.02
    fb = mel_filterbank(16, 400, 16000)
    assert fb.shape == (201, 16) and torch.all(fb.argmax(0).diff() > 0)  # bands rise in frequency
    mel = log_mel(up, 16000, 400, 160, 16, fb)
    assert mel.shape == (16, 51) and abs(float(mel.mean())) < 1e-4
    assert mel.mean(1).argmax() == int(torch.argmin((fb.argmax(0) * 40 - 1000).abs()))  # the 1 kHz band is loudest


def test_a_users_own_config_file_trains_from_the_cli(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, make_rows(tmp_path, n=36))
    conf = tmp_path / "myconf" / "dataset"
    conf.mkdir(parents=True)
    (conf / "mydata.yaml").write_text(f"""
defaults:
  - files
  - /reader@modalities.image: image
  - /reader@modalities.caption: text
  - /reader@modalities.tabular: numeric
  - /target@tasks.colour: label
  - /target@tasks.y: regression
  - /encoder@_global_.model.encoders.image: cnn
  - /encoder@_global_.model.encoders.caption: embedding_bag
  - /encoder@_global_.model.encoders.tabular: mlp
  - /head@_global_.model.heads.colour: linear
  - /head@_global_.model.heads.y: linear
  - _self_
manifest: {manifest}
split_column: fold
cache_dir: {tmp_path / "cache"}
modalities:
  image: {{size: [8, 8]}}
  tabular: {{columns: [a, b]}}
""")
    args = ["-cd", str(tmp_path / "myconf"), "dataset=mydata", "trainer.max_epochs=2", "trainer.batch_size=8",
            "logger.progress_bar=false", f"hydra.run.dir={tmp_path / 'run'}"]
    done = run_cli(args, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert math.isfinite(metrics["best"]["metrics"]["val/colour/accuracy"])
    assert list((tmp_path / "cache" / "files").glob("manifest-*.pt"))
    # The same file composed in-process: a wrong column fails in setup, before any training.
    cfg = compose_cfg([f"hydra.searchpath=[file://{tmp_path / 'myconf'}]", "dataset=mydata",
                       "dataset.tasks.colour.column=color"])
    with pytest.raises(UserError, match=r"dataset.tasks.colour reads column 'color', which the manifest does not"):
        TrainRecipe(cfg, tmp_path / "run2").setup()


def test_audio_is_stored_compactly_as_float16_or_int16_pcm(tmp_path: Path) -> None:
    # dataset.modalities.<m>.dtype: half the memory and cache; encoders widen it to float32 on the device.
    from mtmm_train.encoders.conv1d import Conv1dEncoder

    manifest = write_manifest(tmp_path, make_rows(tmp_path, n=12))
    label = {"colour": node("target/label")}
    values = {}
    for dtype, features in (("float32", "log_mel"), ("float16", "log_mel"), ("float32", "raw"), ("int16", "raw")):
        audio = node("reader/audio", max_frames=20, n_mels=16, features=features, dtype=dtype)
        data = files(str(manifest), {"audio": audio}, label, split_column="fold", cache=True,
                     cache_dir=str(tmp_path / "cache"), num_workers=0)
        again = files(str(manifest), {"audio": audio}, label, split_column="fold", cache=True,
                      cache_dir=str(tmp_path / "cache"), num_workers=0)  # from the cache: the same tensors
        x = data.splits["train"].inputs["audio"]
        assert x.dtype == getattr(torch, dtype) and torch.equal(again.splits["train"].inputs["audio"], x)
        values[dtype, features] = x
        encoder = Conv1dEncoder(data.modalities["audio"], out_dim=4)
        assert encoder(x).dtype == torch.float32  # widened by the encoder
    half, full = values["float16", "log_mel"], values["float32", "log_mel"]
    assert half.element_size() * 2 == full.element_size()
    assert torch.allclose(half.float(), full, rtol=1e-3, atol=1e-3)
    pcm, wave = values["int16", "raw"], values["float32", "raw"]
    assert (pcm.float() / 32768 - wave).abs().max() <= 1 / 32768  # 16-bit WAVs: PCM again, within one step
    with pytest.raises(UserError, match=r"dtype: int16 holds waveforms|dtype int16 holds waveforms|int16 holds"):
        files(str(manifest), {"audio": node("reader/audio", dtype="int16")}, label, split_column="fold",
              cache=False, num_workers=0)
