"""Loader throughput next to training throughput, for any config; streaming from image files; memory.

    python scripts/bench_loader.py                                  # synthetic data, default models
    python scripts/bench_loader.py --batches 100 experiment=diamonds  # any Hydra overrides
    python scripts/bench_loader.py --suite files --images 512       # 224x224 JPEGs: loader vs ResNet-18
    python scripts/bench_loader.py --suite rss --images 2000 20000  # main-process memory when streaming

``recipe`` (the default): for each loader (in-memory batching on the device, and
``loader=dataloader`` streaming with workers) it times an epoch's batches alone, then training
steps on the same batches, and prints samples/s of each and their ratio. The loader should not be
what limits training: the ratio is the headroom (at least 5x for the default models on CPU).

``files``: writes a manifest of 224x224 JPEGs, streams it (``dataset.storage=stream``: decoding
in 2 DataLoader workers, uint8 batches) and times it against training steps of a ResNet-18
(torchvision, random weights) on the same batches, side by side.

``rss``: for each image count, writes the JPEGs, streams one epoch with 2 workers and prints the
training process's resident memory after building the data and at its peak. Nothing of the
images is held in it, so it does not grow with the dataset.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mtmm_train.batch import Batch
from mtmm_train.benchmarking import make_recipe, recipe_step, sync
from mtmm_train.data import StreamingLoader
from mtmm_train.data.files import files
from mtmm_train.recipe import TrainRecipe

LOADERS = {"in_memory": [], "dataloader": ["loader=dataloader"]}


def batches(recipe: TrainRecipe, count: int) -> Iterator[Batch]:
    """``count`` training batches, running through as many epochs as needed."""
    epoch, seen = 0, 0
    while seen < count:
        for batch in recipe.train_loader.epoch(epoch):
            yield batch
            seen += 1
            if seen == count:
                return
        epoch += 1


def measure(recipe: TrainRecipe, count: int) -> tuple[float, float]:
    """``(loader samples/s, training samples/s)`` over ``count`` batches after one warm-up batch."""
    next(batches(recipe, 1))
    sync(recipe.device)
    start, samples = time.perf_counter(), 0
    for batch in batches(recipe, count):
        samples += batch.size
    sync(recipe.device)
    loader_rate = samples / (time.perf_counter() - start)

    recipe.model.train()
    recipe_step(recipe, next(batches(recipe, 1)))  # warm-up: first calls allocate and pick kernels
    sync(recipe.device)
    start, samples = time.perf_counter(), 0
    for batch in batches(recipe, count):
        recipe_step(recipe, batch)  # the loop's step: forward, backward, update, log on the device
        samples += batch.size
    sync(recipe.device)
    return loader_rate, samples / (time.perf_counter() - start)


def run(overrides: list[str], count: int) -> list[dict[str, object]]:
    """Measure every loader for one config; returns one row per loader."""
    rows = []
    for name, extra in LOADERS.items():
        recipe = make_recipe([*overrides, *extra], "/tmp/bench_loader")
        loader_rate, train_rate = measure(recipe, count)
        rows.append({"loader": name, "device": str(recipe.device), "batch_size": recipe.cfg.trainer.batch_size,
                     "loader_samples_per_s": loader_rate, "train_samples_per_s": train_rate,
                     "ratio": loader_rate / train_rate})
    return rows


def write_jpegs(root: Path, count: int, size: int = 224, classes: int = 10) -> Path:
    """``count`` JPEGs of ``size`` x ``size`` under ``root`` (from a few noise bases, shifted) and their manifest."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    bases = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(8)]
    lines = ["image,label,fold"]
    for i in range(count):
        path = root / f"{i}.jpg"
        if not path.exists():
            Image.fromarray(np.roll(bases[i % 8], i % size, axis=1)).save(path, quality=85)
        lines.append(f"{i}.jpg,c{i % classes},{'val' if i % 7 == 0 else 'train'}")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root / "manifest.csv"


def stream_split(manifest: Path, size: int = 224) -> Any:
    """The training split of ``manifest``, streamed (a FileSplit of 224x224 uint8 images)."""
    node = {"_target_": "mtmm_train.data.readers.image.ImageReader", "size": [size, size]}
    target = {"_target_": "mtmm_train.data.readers.label.ClassLabel", "column": "label"}
    data = files(str(manifest), {"image": node}, {"label": target}, split_column="fold", storage="stream")
    return data.splits["train"]


def rss_mb() -> tuple[float, float]:
    """This process's resident memory now and at its peak, in MB (Linux /proc)."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024


def files_suite(root: Path, images: int, batch_size: int, batches: int) -> None:
    """Streamed 224x224 JPEGs (2 workers) against ResNet-18 training steps on the CPU, side by side."""
    torchvision = __import__("torchvision")
    manifest = write_jpegs(root / f"jpeg{images}", images)
    loader = StreamingLoader(stream_split(manifest), batch_size, shuffle=True, drop_last=True, num_workers=2,
                             train=True)
    count = min(batches, len(loader) - 1)
    it = loader.epoch(0)
    first = next(it)  # workers started, first batch decoded
    start, samples = time.perf_counter(), 0
    for _, batch in zip(range(count), it, strict=False):
        samples += batch.size
    loader_rate = samples / (time.perf_counter() - start)

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = first.inputs["image"], first.targets["label"]

    def step() -> None:
        loss = nn.functional.cross_entropy(model(x.float().div_(255)), y)  # as_unit_float, as the encoders do
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up
    train_steps = max(2, count // 4)
    start = time.perf_counter()
    for _ in range(train_steps):
        step()
    train_rate = train_steps * len(y) / (time.perf_counter() - start)
    print(f"{images} JPEGs 224x224, batches of {batch_size}, torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads, {os.cpu_count()} CPUs")
    print(f"{'loader (2 workers) samples/s':<32}{'ResNet-18 train samples/s':>28}{'ratio':>9}")
    print(f"{loader_rate:<32,.0f}{train_rate:>28,.1f}{loader_rate / train_rate:>8.1f}x")


def rss_suite(root: Path, counts: list[int], batch_size: int) -> None:
    """The training process's memory while streaming one epoch of each image count (2 workers)."""
    print(f"{'images':>8}{'RSS after setup MB':>20}{'peak RSS MB':>14}{'epoch s':>10}{'samples/s':>11}")
    for n in counts:
        manifest = write_jpegs(root / f"jpeg{n}", n)
        split = stream_split(manifest)
        after_setup = rss_mb()[0]
        loader = StreamingLoader(split, batch_size, shuffle=True, drop_last=True, num_workers=2, train=True)
        start, samples = time.perf_counter(), 0
        for batch in loader.epoch(0):
            samples += batch.size
        seconds = time.perf_counter() - start
        print(f"{n:>8}{after_setup:>20.0f}{rss_mb()[1]:>14.0f}{seconds:>10.1f}{samples / seconds:>11.0f}")
        del loader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--suite", choices=("recipe", "files", "rss"), default="recipe")
    parser.add_argument("--batches", type=int, default=50, help="batches timed per measurement")
    parser.add_argument("--images", type=int, nargs="+", default=[512], help="files/rss: JPEGs to generate")
    parser.add_argument("--batch-size", type=int, default=32, help="files/rss: images per batch")
    parser.add_argument("--root", default="/tmp/mtmm_bench_loader", help="files/rss: where the JPEGs are written")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. experiment=diamonds")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.suite == "files":
        files_suite(Path(args.root), args.images[0], args.batch_size, args.batches)
        return
    if args.suite == "rss":
        rss_suite(Path(args.root), args.images, args.batch_size)
        return
    rows = run(args.overrides, args.batches)
    print(f"config: {' '.join(args.overrides) or '(defaults)'}; {args.batches} batches of {rows[0]['batch_size']} "
          f"on {rows[0]['device']}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'loader':<12}{'loader samples/s':>18}{'train samples/s':>18}{'ratio':>9}")
    for r in rows:
        print(f"{r['loader']:<12}{r['loader_samples_per_s']:>18,.0f}{r['train_samples_per_s']:>18,.0f}"
              f"{r['ratio']:>8.1f}x")


if __name__ == "__main__":
    main()
