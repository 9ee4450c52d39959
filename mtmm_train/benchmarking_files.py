"""The ``files`` suite of ``scripts/benchmark.py``: one model trained from files, three ways, and where the time goes.

    python scripts/benchmark.py --suite files --configs backbone_reference --rows 4096 --batches 40

On a manifest it writes once (:func:`write_dataset`: photo-like JPEGs, texts of 60-120 words, 16
numbers and the reference tasks ``cls``, ``bin``, ``reg``; cached in ``--out``), one run measures, on
the same model (one recipe, built and compiled once, fed by each loader in turn):

* ``memory``: ``dataset.storage=memory``, every image decoded once and the split held on the
  training device (the GPU-resident figure every other path is compared with);
* ``stream_host``: ``dataset.storage=stream``, DataLoader workers (``--workers``, default all cores
  but one) decode each batch with Pillow;
* ``stream_device``: ``dataset.storage=stream`` with ``decode=device``: the workers read the JPEGs'
  bytes, the training process decodes each batch on the device (:mod:`mtmm_train.data.device_decode`),
  one batch ahead of the step in a thread (``loader.decode_ahead=1``); with ``--decode-ahead 1 0`` also
  ``stream_device_ahead0``: decoded in the training thread right before each step (what the thread saves).

For each: samples/s of training (the loader's batches through the loop's own step), its ratio to
``memory``, and the share of that time the loop waited for the next batch (``data_wait``, as
``train/data_wait`` in a run); samples/s of the loader alone (its batches, no step: what the input
pipeline can give). Two more rows say what decoding costs: ``host_decode_1core`` (Pillow, decode and
resize, one process) and ``device_decode`` (the device decoder and resize alone, on batches whose bytes
were read before). The paths run one after the other (each owns a pool of workers), so a drift of the
machine's speed is not averaged out as in the alternating suites.
"""

from __future__ import annotations

import csv
import inspect
import os
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, open_dict

from mtmm_train import builders
from mtmm_train.batch import Batch
from mtmm_train.benchmarking import QUIET, compose_cfg, preset, sync
from mtmm_train.data import StreamingLoader
from mtmm_train.recipe import TrainRecipe

# A small model on the same files, for a CPU (and the tests): the reference_files dataset's own encoders.
TINY = ["dataset.modalities.image.size=[32,32]", "dataset.modalities.text.max_length=32",
        "model.encoders.image.channels=[8,16]", "model.encoders.text.out_dim=32", "model.encoders.text.num_layers=1",
        "model.encoders.vector.out_dim=32", "trainer.batch_size=8", "trainer.eval_batch_size=8"]
PATHS = ("memory", "stream_host", "stream_device")
WORDS = 2000  # the texts' vocabulary


# ---------------------------------------------------------------------- the data
def _image(args: tuple[Path, int, int, int, int]) -> None:
    """One photo-like JPEG: a smooth gradient, a few soft shapes, sensor-like noise (about 40 KB at 400x300)."""
    from PIL import Image, ImageDraw, ImageFilter

    path, h, w, seed, quality = args
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([rng.uniform(40, 200) + rng.uniform(-60, 60) * (xx / w) + rng.uniform(-60, 60) * (yy / h)
                     for _ in range(3)], -1)
    im = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(4, 9))):
        x0, y0 = int(rng.integers(-w // 4, w)), int(rng.integers(-h // 4, h))
        x1, y1 = x0 + int(rng.integers(w // 8, w // 2)), y0 + int(rng.integers(h // 8, h // 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    im = im.filter(ImageFilter.GaussianBlur(float(rng.uniform(1.0, 3.0))))
    a = np.asarray(im).astype(np.float32) + rng.normal(0, 7, (h, w, 3)).astype(np.float32)
    Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(path, quality=quality)


def write_dataset(out: Path, rows: int, min_size: tuple[int, int] = (240, 320), max_size: tuple[int, int] = (375, 500),
                  quality: int = 90, seed: int = 0, workers: int | None = None) -> Path:
    """Write (once: kept in ``out``) a manifest of ``rows`` samples for ``dataset=reference_files``.

    Columns: ``image`` (a JPEG of ``min_size..max_size`` pixels, ``[H, W]``, at ``quality``), ``text``
    (60-120 words), ``v0..v15``, ``cls`` (10 classes), ``bin`` (0/1), ``reg`` and ``fold`` (one row in 10
    ``val``). The targets are noise: the suite measures speed, not learning.

    Returns:
        The manifest's path.
    """
    folder = Path(out) / f"files-{rows}-{min_size[0]}x{min_size[1]}-{max_size[0]}x{max_size[1]}-q{quality}-s{seed}"
    manifest = folder / "manifest.csv"
    if manifest.is_file():
        return manifest
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sizes = [(int(rng.integers(min_size[0], max_size[0] + 1)), int(rng.integers(min_size[1], max_size[1] + 1)))
             for _ in range(rows)]
    jobs = [(folder / "img" / f"{i}.jpg", h, w, seed * 1_000_003 + i, quality) for i, (h, w) in enumerate(sizes)]
    workers = workers or max(1, (os.cpu_count() or 2) - 1)
    if workers > 1 and rows > 64:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_image, jobs, chunksize=16))
    else:
        for job in jobs:
            _image(job)
    vocab = [f"w{k}" for k in range(WORDS)]
    tmp = manifest.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "text", *[f"v{k}" for k in range(16)], "cls", "bin", "reg", "fold"])
        classes = rng.integers(10, size=rows)
        for i in range(rows):
            words = rng.choice(vocab, int(rng.integers(60, 121)))
            val = i % 10 == 9
            cls = int(classes[i - 1] if val else classes[i])  # a val row's class is one training has
            writer.writerow([f"img/{i}.jpg", " ".join(words), *np.round(rng.normal(size=16), 4).tolist(), cls,
                             int(rng.integers(2)), round(float(rng.normal()), 4), "val" if val else "train"])
    tmp.replace(manifest)  # written last: a manifest means the folder is complete
    return manifest


# ---------------------------------------------------------------------- configs
def files_cfg(overrides: list[str], manifest: Path, storage: str, decode: str, workers: int,
              cache_dir: Path) -> DictConfig:
    """The run's config on the suite's manifest: ``dataset=reference_files`` after ``overrides``, and the
    dataset keys of ``dataset=reference`` an experiment sets (``num_train``...) dropped (``files`` has none)."""
    from mtmm_train.data.files import files

    cfg = compose_cfg(QUIET + overrides + [
        "trainer.drop_last=true",  # every path's batches of one shape: a compiled model compiles once
        "dataset=reference_files", f"dataset.manifest={manifest}", f"dataset.storage={storage}",
        f"dataset.modalities.image.decode={decode}", f"dataset.num_workers={workers}",
        f"dataset.cache_dir={cache_dir}"])
    accepted = set(inspect.signature(files).parameters) | {"_target_", "_recursive_"}
    with open_dict(cfg):
        for key in [k for k in cfg.dataset if k not in accepted]:
            del cfg.dataset[key]
    return cfg


# ---------------------------------------------------------------------- timing
def batches_of(loader: Any, first_epoch: int = 0) -> Iterator[Batch]:
    """The loader's batches, epoch after epoch, without end."""
    epoch = first_epoch
    while True:
        yield from loader.epoch(epoch)
        epoch += 1


def timed(recipe: TrainRecipe, batches: Iterator[Batch], count: int, train: bool) -> tuple[float, float]:
    """Samples/s of ``count`` batches (through the loop's step when ``train``), and the share of the time
    spent waiting for batches (``next()``), as the training loop measures ``train/data_wait``."""
    sync(recipe.device)
    wait, samples, t0 = 0.0, 0, time.perf_counter()
    for _ in range(count):
        t = time.perf_counter()
        batch = next(batches)
        wait += time.perf_counter() - t
        samples += batch.size
        if train:
            recipe.train_step([batch])
    sync(recipe.device)
    seconds = time.perf_counter() - t0
    return samples / seconds, wait / seconds


def decode_rates(cfg_host: DictConfig, cfg_device: DictConfig, device: torch.device, batch_size: int,
                 count: int) -> dict[str, float]:
    """Samples/s of Pillow decoding in one process (decode and resize) and of the device decoder alone
    (bytes read before the clock starts)."""
    from mtmm_train.data.device_decode import decode_into

    host = builders.build_data(cfg_host).splits["train"]
    dev = builders.build_data(cfg_device).splits["train"]
    n = min(len(host), batch_size * count)
    index = [torch.arange(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    reader = host.readers["image"]
    t0 = time.perf_counter()
    for i in range(n):
        reader.decode(host.paths["image"][i])
    host_rate = n / (time.perf_counter() - t0)
    parts = [dev.parts(idx) for idx in index]
    shape = (dev.readers["image"].channels, *dev.readers["image"].size)
    buffers = [{"image": torch.zeros(len(idx), *shape, dtype=torch.uint8, device=device)} for idx in index]
    decode_into(buffers[0], parts[0][1], dev, device)  # warm-up (nvjpeg's handles, CUDA kernels)
    sync(device)
    t0 = time.perf_counter()
    for (_, encoded), buf in zip(parts, buffers, strict=True):
        decode_into(buf, encoded, dev, device)
    sync(device)
    decoded = sum(len(e["image"]) for _, e in parts if "image" in e)
    return {"host_decode_1core": host_rate, "device_decode": decoded / (time.perf_counter() - t0)}


def device_path(ahead: int) -> str:
    """The row of ``decode=device`` with ``decode_ahead=ahead``: ``stream_device`` for the default (1)."""
    return "stream_device" if ahead == 1 else f"stream_device_ahead{ahead}"


def files_bench(name: str, overrides: list[str], manifest: Path, out: Path, workers: int | None = None,
                batches: int = 20, warmup: int = 3, decode_ahead: tuple[int, ...] = (1,)) -> list[dict[str, Any]]:
    """The suite's rows for one config (see the module docstring).

    Args:
        name: the config's name (a preset of :mod:`mtmm_train.benchmarking`, or ``tiny``), for the rows.
        overrides: the model's overrides (the preset's, the mode's and any extra).
        manifest: from :func:`write_dataset`.
        out: the scratch folder (runs, the decoded cache of ``memory``).
        workers: DataLoader workers of the streamed paths (default: all cores but one).
        batches: timed batches per path (training, and the loader alone).
        warmup: untimed training steps first (and compilation), and untimed loader batches.
        decode_ahead: the ``decode=device`` path once per value of the loader's ``decode_ahead``.
    """
    workers = max(1, (os.cpu_count() or 2) - 1) if workers is None else workers
    cache = Path(out) / "cache"
    cfgs = {"memory": files_cfg(overrides, manifest, "memory", "host", workers, cache),
            "stream_host": files_cfg(overrides, manifest, "stream", "host", workers, cache),
            "stream_device": files_cfg(overrides, manifest, "stream", "device", workers, cache)}
    recipe = TrainRecipe(cfgs["memory"], Path(out) / f"files-{name}")
    recipe.setup()
    t, device = recipe.trainer, recipe.device
    loaders: dict[str, Any] = {"memory": recipe.train_loader}
    splits = {p: builders.build_data(cfgs[p]).splits["train"] for p in PATHS[1:]}
    for path, split, ahead in [("stream_host", splits["stream_host"], 1),
                               *[(device_path(a), splits["stream_device"], a) for a in decode_ahead]]:
        loaders[path] = StreamingLoader(split, t.batch_size, shuffle=True, drop_last=True, seed=recipe.seed,
                                        device=device, num_workers=workers, train=True, decode_ahead=ahead)
    rows: list[dict[str, Any]] = []
    base = {"config": name, "device": str(device), "batch_size": t.batch_size, "workers": workers,
            "rows": len(recipe.data.splits["train"])}
    for path in list(loaders):
        it = batches_of(loaders[path])
        timed(recipe, it, warmup, train=True)
        train_rate, wait = timed(recipe, it, batches, train=True)
        alone, _ = timed(recipe, it, batches, train=False)
        rows.append({**base, "path": path, "train_samples_s": train_rate, "data_wait": wait,
                     "loader_samples_s": alone})
        print(f"  {path}: {train_rate:,.1f} samples/s training, {alone:,.1f} loader alone, data wait {wait:.2f}",
              flush=True)
        if path != "memory":
            loaders[path] = None  # its workers end
    for row in rows:
        row["ratio"] = row["train_samples_s"] / rows[0]["train_samples_s"]
    rates = decode_rates(cfgs["stream_host"], cfgs["stream_device"], device, t.batch_size, max(2, min(batches, 8)))
    rows += [{**base, "path": k, "decode_samples_s": v} for k, v in rates.items()]
    return rows


def print_files_table(rows: list[dict[str, Any]]) -> None:
    """One line per path of :func:`files_bench`'s rows: training samples/s, ratio to memory, data wait,
    the loader alone; then the decoders' rates."""
    head = (f"{'config':<20} {'path':<20} {'train/s':>10} {'vs memory':>9} {'data wait':>9} {'loader/s':>10} "
            f"{'decode/s':>10}")
    print(head)
    print("-" * len(head))
    for r in rows:
        if "error" in r:
            print(f"{r.get('config', ''):<20} error: {r['error'][:90]}")
            continue
        cells = [f"{r['train_samples_s']:>10,.1f}" if "train_samples_s" in r else f"{'':>10}",
                 f"{r['ratio']:>9.3f}" if "ratio" in r else f"{'':>9}",
                 f"{r['data_wait']:>9.2f}" if "data_wait" in r else f"{'':>9}",
                 f"{r['loader_samples_s']:>10,.1f}" if "loader_samples_s" in r else f"{'':>10}",
                 f"{r['decode_samples_s']:>10,.1f}" if "decode_samples_s" in r else f"{'':>10}"]
        print(f"{r['config']:<20} {r['path']:<20} " + " ".join(cells))


def config_overrides(name: str, modes: list[str]) -> list[str]:
    """The model's overrides for a ``--configs`` name: ``tiny`` (:data:`TINY`), or a preset of
    :mod:`mtmm_train.benchmarking`, plus the first mode's (:data:`mtmm_train.benchmarking.MODES`)."""
    from mtmm_train.benchmarking import MODES

    model = list(TINY) if name == "tiny" else preset(name)
    return model + (MODES[modes[0]] if modes else [])
