"""JPEGs of streamed batches decoded on the training device (``dataset.modalities.<m>.decode=device``).

On the CPU the device path runs with torchvision on the CPU: the same code (bytes read by the
workers, one ``decode_jpeg`` call per batch, EXIF orientation, resize and crop with the reader's
geometry) that runs with nvjpeg on CUDA. The pixels are held to the host path's (Pillow).
"""

from __future__ import annotations

import gc
import json
import math
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import compose_cfg, run_cli
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mtmm_train.data import StreamingLoader
from mtmm_train.data.device_decode import EncodedImages, decode_into, jpeg_header
from mtmm_train.data.files import files
from mtmm_train.data.readers.image import ImageReader
from mtmm_train.errors import ComponentError, UserError
from mtmm_train.recipe import TrainRecipe
from mtmm_train.tensorboard import event_dir

IMAGE = "mtmm_train.data.readers.image.ImageReader"
LABEL = {"_target_": "mtmm_train.data.readers.label.ClassLabel"}


def photo(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth, photo-like RGB image with some noise (JPEG-friendly, not flat)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    a = np.stack([128 + 100 * np.sin(xx / (7 + c) + yy / (11 + 2 * c) + seed) for c in range(3)], -1)
    return np.clip(a + rng.normal(0, 8, a.shape), 0, 255).astype(np.uint8)


def write_images(root: Path) -> list[str | None]:
    """Files of several kinds; the manifest's image column (None: an empty cell)."""
    cells: list[str | None] = []
    for k, (h, w) in enumerate([(48, 64), (75, 50), (33, 97), (64, 64)]):  # several sizes, RGB JPEG
        Image.fromarray(photo(h, w, k)).save(root / f"rgb{k}.jpg", quality=90)
        cells.append(f"rgb{k}.jpg")
    Image.fromarray(photo(40, 56, 9)).convert("L").save(root / "gray.jpg", quality=90)
    Image.fromarray(photo(40, 56, 10)).save(root / "prog.jpg", quality=85, progressive=True)
    Image.fromarray(photo(40, 56, 11)).convert("CMYK").save(root / "cmyk.jpg", quality=90)  # the worker's Pillow
    Image.fromarray(photo(30, 44, 12)).save(root / "plain.png")  # not a JPEG: the worker's Pillow
    cells += ["gray.jpg", "prog.jpg", "cmyk.jpg", "plain.png", None]
    for o in range(2, 9):  # EXIF orientations 2..8 on a 30x52 image (sideways ones display 52x30)
        im = Image.fromarray(photo(30, 52, 20 + o))
        exif = im.getexif()
        exif[0x0112] = o
        im.save(root / f"exif{o}.jpg", quality=90, exif=exif.tobytes())
        cells.append(f"exif{o}.jpg")
    return cells


def write_manifest(root: Path) -> Path:
    cells = write_images(root)
    lines = ["image,v,label,fold"] + [f"{c or ''},{i / 3:.3f},{'ab'[i % 2]},{'train' if i % 4 else 'val'}"
                                      for i, c in enumerate(cells)]
    (root / "m.csv").write_text("\n".join(lines) + "\n")
    return root / "m.csv"


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_manifest(tmp_path_factory.mktemp("device_decode"))


def load(manifest: Path, storage: str = "stream", **reader: Any) -> Any:
    node = {"_target_": IMAGE, "size": [24, 32], **reader}
    numeric = {"_target_": "mtmm_train.data.readers.numeric.NumericReader"}  # keeps the row without an image
    return files(str(manifest), modalities={"image": node, "v": numeric}, tasks={"label": LABEL},
                 split_column="fold", cache=False, num_workers=0, storage=storage)


def every(split: Any) -> Any:
    return split.batch(torch.arange(len(split)))


@pytest.mark.parametrize("settings", [{}, {"interpolation": "bicubic"}, {"crop_pct": 0.875},
                                      {"channels": 1, "interpolation": "bicubic", "crop_pct": 0.9}])
def test_device_pixels_match_the_host_path(manifest: Path, settings: dict, one_thread: None) -> None:
    for name in ("train", "val"):
        host = every(load(manifest, **settings).splits[name])
        split = load(manifest, decode="device", **settings).splits[name]
        b, encoded = split.parts(torch.arange(len(split)))
        # The JPEGs the device decodes travel as bytes (their rows still zeros); the rest was decoded.
        assert set(encoded) == {"image"} and len(encoded["image"]) >= 3
        assert not b.inputs["image"][torch.from_numpy(encoded["image"].slots)].any()
        dev = every(split)
        assert torch.equal(dev.present["image"], host.present["image"])
        assert name == "train" or not dev.present["image"].all()  # the empty cell (row 9) is in val
        assert not dev.inputs["image"][~dev.present["image"]].any()  # absent rows stay zeros
        x, y = dev.inputs["image"].float(), host.inputs["image"].float()
        assert x.shape == y.shape and dev.inputs["image"].dtype == torch.uint8
        per_image = (x - y).abs().flatten(1).mean(1)
        assert per_image.max() < 1.0, per_image  # libjpeg decodes alike; resizes differ by rounding only
        assert (x - y).abs().max() <= 40  # a one-pixel shift at a sharp edge at most


def test_what_the_worker_sends_to_the_device(manifest: Path) -> None:
    root = manifest.parent
    heads = {p.name: jpeg_header(p.read_bytes()) for p in root.iterdir() if p.suffix in (".jpg", ".png")}
    assert heads["plain.png"] is None  # not a JPEG: decoded by the worker
    assert not heads["cmyk.jpg"].device_ok  # 4 components: the worker's Pillow
    assert heads["gray.jpg"].device_ok and heads["prog.jpg"].device_ok and heads["rgb0.jpg"].device_ok
    assert [heads[f"exif{o}.jpg"].orientation for o in range(2, 9)] == list(range(2, 9))
    assert heads["rgb0.jpg"].orientation == 1
    assert not jpeg_header(b"\xff\xd8\xff\xe0\x00").device_ok  # truncated: the host decides


def test_exif_orientations_come_out_upright(manifest: Path) -> None:
    root = manifest.parent
    reader = ImageReader("image", size=[52, 52], interpolation="nearest")
    splits = load(manifest, decode="device", size=[52, 52], interpolation="nearest").splits
    seen = []
    for o in range(2, 9):
        path = str(root / f"exif{o}.jpg")
        split = next(s for s in splits.values() if path in s.paths["image"])
        dev = split.batch(torch.tensor([split.paths["image"].index(path)])).inputs["image"][0]
        host = reader.decode(Path(path))
        assert (dev.float() - host.float()).abs().mean() < 1.0, o
        seen.append(o)
    assert seen == list(range(2, 9))


def test_the_streaming_loader_decodes_in_the_training_process(manifest: Path) -> None:
    data = load(manifest, decode="device")
    host = load(manifest)
    for workers in (0, 1):
        got = StreamingLoader(data.splits["train"], 5, shuffle=True, seed=1, num_workers=workers,
                              persistent_workers=False, train=True)
        want = StreamingLoader(host.splits["train"], 5, shuffle=True, seed=1, num_workers=0, train=True)
        for g, w in zip(got.epoch(0), want.epoch(0), strict=True):
            assert torch.equal(g.present["image"], w.present["image"])
            assert (g.inputs["image"].float() - w.inputs["image"].float()).abs().mean() < 1.0


def test_a_corrupt_jpeg_gives_the_host_paths_line(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path)
    good = (tmp_path / "rgb1.jpg").read_bytes()
    (tmp_path / "rgb1.jpg").write_bytes(good[: len(good) // 3])  # header intact, scan cut: row 2
    split = load(manifest, decode="device").splits["train"]
    for workers in (0, 1):
        loader = StreamingLoader(split, 4, num_workers=workers, persistent_workers=False)
        with pytest.raises(UserError, match=r"^dataset.modalities.image: .*rgb1.jpg \(column 'image' row 2 of "
                                            r"'.*m.csv'\) could not be decoded: .*; fix or replace the file"):
            list(loader.epoch(0))


def test_a_jpeg_the_device_rejects_is_decoded_on_the_host(manifest: Path, caplog: pytest.LogCaptureFixture,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.io

    split = load(manifest, decode="device").splits["train"]
    host = every(load(manifest).splits["train"])
    real = torchvision.io.decode_jpeg

    def picky(data: Any, **kw: Any) -> Any:  # a device decoder that rejects one of the files
        if isinstance(data, list) or data.numel() == len((manifest.parent / "rgb2.jpg").read_bytes()):
            raise RuntimeError("nvjpeg: unsupported")
        return real(data, **kw)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", picky)
    monkeypatch.setattr("mtmm_train.data.device_decode._fallback_logged", set())  # logged once per process
    with caplog.at_level("WARNING", logger="mtmm_train"):
        dev = every(split)
    assert (dev.inputs["image"].float() - host.inputs["image"].float()).abs().mean() < 1.0
    assert "rgb2.jpg (nvjpeg: unsupported); such files are decoded on the host with Pillow" in caplog.text


def test_settings_that_cannot_work_are_refused_in_one_line(manifest: Path, caplog: pytest.LogCaptureFixture) -> None:
    for kw, match in (({"decode": "gpu"}, "decode must be host .* or device"),
                      ({"decode": "device", "interpolation": "lanczos"}, "lanczos has no device implementation"),
                      ({"decode": "device", "augment": {"preset": "light"}},
                       "augment.device=cuda .*, augment=none, or decode=host")):
        with pytest.raises(UserError, match=match):
            ImageReader("image", **kw)
    ImageReader("image", decode="device", augment={"preset": "light", "device": "cuda"})  # per batch: fine
    # storage=memory decodes every file once, on the host: the same tensors, and a log line says so.
    with caplog.at_level("INFO", logger="mtmm_train"):
        memory = load(manifest, storage="memory", decode="device").splits["train"]
    assert torch.equal(memory.inputs["image"], load(manifest, storage="memory").splits["train"].inputs["image"])
    assert "decode=device applies to streamed batches (dataset.storage=stream)" in caplog.text


def test_decode_into_writes_each_image_at_its_slot(manifest: Path) -> None:
    split = load(manifest, decode="device").splits["train"]
    _, encoded = split.parts(torch.arange(len(split)))
    enc = encoded["image"]
    inputs = {"image": torch.zeros(len(split), 3, 24, 32, dtype=torch.uint8)}
    decode_into(inputs, EncodedImages.unpack(enc.arrays("image")), split, "cpu")
    filled = inputs["image"].flatten(1).any(1)
    assert filled.nonzero().flatten().tolist() == sorted(enc.slots.tolist())


def test_training_with_device_decoding(manifest: Path, tmp_path: Path, one_thread: None) -> None:
    cfg = compose_cfg(["dataset=files", f"dataset.manifest={manifest}", "dataset.split_column=fold",
                       "dataset.storage=stream", "dataset.num_workers=1", "+reader@dataset.modalities.image=image",
                       "dataset.modalities.image.size=[16,16]", "dataset.modalities.image.decode=device",
                       "augment=light", "augment.device=cuda", "+target@dataset.tasks.label=label",
                       "+encoder@model.encoders.image=cnn", "+head@model.heads.label=linear",
                       "trainer.max_epochs=1", "trainer.batch_size=4", "logger.progress_bar=false",
                       "logger.log_every_n_steps=1", "trainer.monitor=val/label/accuracy",
                       "trainer.monitor_mode=max"])
    recipe = TrainRecipe(cfg, tmp_path / "run")
    recipe.setup()
    recipe.train()
    assert recipe.step == 3 and recipe.eval_loaders  # 11 training rows in batches of 4; evaluation streamed too
    assert math.isfinite(recipe.best["value"])
    # Where the time goes: the loop's wait for batches, per log point in TensorBoard and for the run.
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0.0 < metrics["train_data_wait_frac"] < 1.0
    events = EventAccumulator(str(event_dir(tmp_path / "run")), size_guidance={"scalars": 0})
    events.Reload()
    waits = [e.value for e in events.Scalars("train/data_wait")]
    assert [e.step for e in events.Scalars("train/data_wait")] == [1, 2, 3]
    assert all(0.0 < w < 1.0 for w in waits)
    # mtmm-eval and mtmm-predict of the run decode on the host: the model's outputs on the device-decoded
    # validation batches are those on the host-decoded pixels, within the resize's rounding.
    from mtmm_train.evaluate import EvalConfig, evaluate_checkpoint
    from mtmm_train.predict import NewManifest, PredictConfig, predict

    best = tmp_path / "run" / "checkpoints" / "best.pt"
    report = evaluate_checkpoint(EvalConfig(checkpoint=str(best), split="val", plot=False, device="cpu", noise=[],
                                            zero=[1.0], drop=[]), tmp_path / "eval")
    assert report["clean"]["label/accuracy"] == pytest.approx(recipe.best["value"], abs=1e-6)
    new = manifest.parent / "predict_rows.csv"  # beside the images: paths are relative to the manifest
    new.write_text("".join(line + "\n" for line in manifest.read_text().splitlines()
                           if line.endswith(",val") or line.startswith("image,")))
    out = predict(PredictConfig(checkpoint=str(best), dataset=NewManifest(manifest=str(new)),
                                output=str(tmp_path / "p.csv")))
    rows = out.read_text().splitlines()
    assert len(rows) == len(new.read_text().splitlines()) and "label" in rows[0]  # a header and a row per row


def test_cli_refuses_device_decoding_with_per_sample_augmentation(manifest: Path, tmp_path: Path) -> None:
    r = run_cli(["dataset=files", f"dataset.manifest={manifest}", "dataset.split_column=fold",
                 "dataset.storage=stream", "+reader@dataset.modalities.image=image",
                 "dataset.modalities.image.decode=device", "augment=light", "+target@dataset.tasks.label=label",
                 "+encoder@model.encoders.image=cnn", "+head@model.heads.label=linear",
                 f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert "dataset.modalities.image.decode is device" in last and "augment.device=cuda" in last
    assert "Traceback" not in r.stderr


# ---------------------------------------------------------------------- decode-ahead (loader.decode_ahead)
FIELDS = ("inputs", "present", "targets", "labeled")


def ahead_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "mtmm-decode-ahead"]


def tensors(batches: Any) -> list[dict[str, torch.Tensor]]:
    """Each batch's tensors by ``field/name``, cloned where they are (on CUDA: on the consumer's stream, with no
    host synchronisation, so a batch whose memory were reused too early would show it)."""
    return [{f"{f}/{k}": v.clone() for f in FIELDS for k, v in getattr(b, f).items()} for b in batches]


def assert_same(got: list[dict[str, torch.Tensor]], want: list[dict[str, torch.Tensor]]) -> None:
    assert len(got) == len(want) > 0
    for g, w in zip(got, want, strict=True):
        assert g.keys() == w.keys()
        for k in g:
            assert g[k].dtype == w[k].dtype and torch.equal(g[k].cpu(), w[k].cpu()), k


@pytest.mark.parametrize("device", [pytest.param("cpu", id="cpu"),
                                    pytest.param("cuda", id="cuda", marks=pytest.mark.gpu)])
def test_decode_ahead_gives_the_batches_of_the_training_thread(manifest: Path, device: str, one_thread: None) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        pytest.fail("tests marked gpu need a CUDA device", pytrace=False)
    split = load(manifest, decode="device").splits["train"]

    def batches(ahead: int, workers: int, epoch: int, start: int) -> list[dict[str, torch.Tensor]]:
        loader = StreamingLoader(split, 3, shuffle=True, seed=3, device=device, num_workers=workers,
                                 persistent_workers=False, train=True, decode_ahead=ahead)
        assert loader.decode_ahead == ahead
        out = []
        for b in loader.epoch(epoch, start):
            assert b.inputs["image"].device.type == device
            assert (loader._ahead is not None) == bool(ahead)  # made by the decode-ahead thread, or not
            if device == "cuda":  # a long step on the consumer's stream, then the read: the thread runs ahead meanwhile
                torch.cuda._sleep(50_000_000)
            out += tensors([b])
        assert not ahead_threads()  # stopped at the end of the epoch
        return out

    # Same tensors, same order, with and without the thread, with and without a worker, resumed or not.
    for epoch, start in ((0, 0), (1, 2)):
        want = batches(0, 0, epoch, start)
        assert len(want) == 4 - start  # 12 training rows in batches of 3
        assert_same(batches(1, 0, epoch, start), want)
        assert_same(batches(2, 1, epoch, start), want)
    assert not torch.equal(batches(0, 0, 0, 0)[0]["inputs/image"], batches(0, 0, 1, 0)[0]["inputs/image"])


def test_decode_ahead_stops_its_thread(manifest: Path, one_thread: None) -> None:
    split = load(manifest, decode="device").splits["train"]
    want = {e: tensors(StreamingLoader(split, 3, shuffle=True, seed=3, num_workers=0, train=True,
                                       decode_ahead=0).epoch(e)) for e in (0, 1)}
    # Persistent workers: the thread reads the one pool of workers that every epoch shares.
    loader = StreamingLoader(split, 3, shuffle=True, seed=3, num_workers=1, persistent_workers=True, train=True)
    abandoned = loader.epoch(0)
    assert_same(tensors([next(abandoned)]), want[0][:1])
    assert len(ahead_threads()) == 1
    assert_same(tensors(loader.epoch(1)), want[1])  # a new epoch stops the abandoned one's thread first
    assert not ahead_threads()
    del abandoned
    for b in loader.epoch(0):  # a break (epoch_batches, a signal, early stopping): the loop drops the iterator
        assert_same(tensors([b]), want[0][:1])
        break
    gc.collect()
    assert not ahead_threads()
    # An unfinished iterator garbage-collected with its loader.
    it = loader.epoch(1)
    next(it)
    del it, loader
    gc.collect()
    assert not ahead_threads()
    # Turned off, or not needed (no decode=device modality): no thread.
    assert StreamingLoader(load(manifest).splits["train"], 3, num_workers=0).decode_ahead == 0
    with pytest.raises(UserError, match=r"^loader.decode_ahead must be an integer >= 0 .*, found -1$"):
        StreamingLoader(split, 3, num_workers=0, decode_ahead=-1)


def test_a_decode_error_in_the_third_batch_reaches_the_training_thread(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path)
    paths = load(manifest, decode="device").splits["train"].paths["image"]
    bad = next(Path(p) for p in paths[6:9] if jpeg_header(Path(p).read_bytes()).device_ok)  # in batch 3 of 3
    good = bad.read_bytes()
    bad.write_bytes(good[: len(good) // 3])  # header intact, scan cut
    split = load(manifest, decode="device").splits["train"]
    errors = []
    for ahead in (0, 1):
        loader = StreamingLoader(split, 3, num_workers=1, persistent_workers=False, decode_ahead=ahead)
        got = []
        with pytest.raises(ComponentError) as e:
            for b in loader.epoch(0):
                got.append(b)
        assert len(got) == 2 and not ahead_threads()
        errors.append(e.value)
    assert type(errors[0]) is type(errors[1]) and str(errors[0]) == str(errors[1])  # the same one line
    assert f"{bad.name} (column 'image' row " in str(errors[1]) and "could not be decoded" in str(errors[1])


def test_training_stops_on_a_decode_error_with_decode_ahead(tmp_path: Path, one_thread: None) -> None:
    manifest = write_manifest(tmp_path)
    good = (tmp_path / "rgb2.jpg").read_bytes()
    (tmp_path / "rgb2.jpg").write_bytes(good[: len(good) // 3])
    cfg = compose_cfg(["dataset=files", f"dataset.manifest={manifest}", "dataset.split_column=fold",
                       "dataset.storage=stream", "+reader@dataset.modalities.image=image",
                       "dataset.modalities.image.size=[16,16]", "dataset.modalities.image.decode=device",
                       "loader=dataloader", "loader.num_workers=0", "loader.decode_ahead=2",
                       "+target@dataset.tasks.label=label", "+encoder@model.encoders.image=cnn",
                       "+head@model.heads.label=linear", "trainer.max_epochs=1", "trainer.batch_size=4",
                       "logger.progress_bar=false"])
    recipe = TrainRecipe(cfg, tmp_path / "run")
    recipe.setup()
    assert recipe.train_loader.decode_ahead == 2  # loader.decode_ahead reaches the loader
    with pytest.raises(ComponentError, match=r"^dataset.modalities.image: .*rgb2.jpg \(column 'image' row 3 of "
                                             r"'.*m.csv'\) could not be decoded: .*; fix or replace the file"):
        recipe.train()
    gc.collect()
    assert not ahead_threads()


def test_an_epoch_cut_short_stops_the_thread_before_evaluation(manifest: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                one_thread: None) -> None:
    cfg = compose_cfg(["dataset=files", f"dataset.manifest={manifest}", "dataset.split_column=fold",
                       "dataset.storage=stream", "dataset.num_workers=0", "+reader@dataset.modalities.image=image",
                       "dataset.modalities.image.size=[16,16]", "dataset.modalities.image.decode=device",
                       "+target@dataset.tasks.label=label", "+encoder@model.encoders.image=cnn",
                       "+head@model.heads.label=linear", "trainer.max_epochs=2", "trainer.limit_train_batches=1",
                       "trainer.batch_size=4", "logger.progress_bar=false"])
    alive = []
    end_of_epoch = TrainRecipe.end_of_epoch

    def record(self: TrainRecipe) -> bool:
        alive.append(len(ahead_threads()))
        return end_of_epoch(self)

    monkeypatch.setattr(TrainRecipe, "end_of_epoch", record)
    recipe = TrainRecipe(cfg, tmp_path / "run")
    recipe.setup()
    assert recipe.train_loader.decode_ahead == 1  # the default without a loader config
    recipe.train()
    assert recipe.step == 2 and alive == [0, 0]  # 1 of 3 batches per epoch; no thread left holding a batch


def test_the_files_suite_measures_decode_ahead_on_and_off(tmp_path: Path, one_thread: None) -> None:
    from mtmm_train import benchmarking_files as fb

    manifest = fb.write_dataset(tmp_path, 12, (40, 48), (56, 64), workers=1)
    rows = fb.files_bench("tiny", fb.config_overrides("tiny", []), manifest, tmp_path, workers=0, batches=1,
                          warmup=0, decode_ahead=(1, 0))
    by = {r["path"]: r for r in rows}
    assert list(by)[:4] == ["memory", "stream_host", "stream_device", "stream_device_ahead0"]
    assert all(by[p]["train_samples_s"] > 0 and 0 <= by[p]["data_wait"] <= 1 for p in list(by)[:4])


@pytest.mark.gpu
def test_gpu_decoded_batch_matches_the_host_pixels(manifest: Path) -> None:
    if not torch.cuda.is_available():
        pytest.fail("tests marked gpu need a CUDA device", pytrace=False)
    split = load(manifest, decode="device", interpolation="bicubic", crop_pct=0.875).splits["train"]
    host = every(load(manifest, interpolation="bicubic", crop_pct=0.875).splits["train"])
    loader = StreamingLoader(split, len(split), device="cuda", num_workers=1, persistent_workers=False)
    got = next(iter(loader.epoch(0)))
    assert got.inputs["image"].device.type == "cuda" and got.inputs["image"].dtype == torch.uint8
    diff = (got.inputs["image"].cpu().float() - host.inputs["image"].float()).abs()
    print(f"nvjpeg vs Pillow: mean abs difference {diff.mean():.3f}, max {diff.max():.0f}")  # for docs/files.md
    assert diff.flatten(1).mean(1).max() < 3.0  # nvjpeg's IDCT and upsampling differ from libjpeg's slightly
