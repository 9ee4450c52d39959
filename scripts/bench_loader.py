"""Loader throughput next to training throughput, for any config.

    python scripts/bench_loader.py                                  # synthetic data, default models
    python scripts/bench_loader.py --batches 100 experiment=diamonds  # any Hydra overrides

For each loader (in-memory batching on the device, and ``loader=dataloader`` streaming with
workers) it times an epoch's batches alone, then training steps on the same batches, and
prints samples/s of each and their ratio. The loader should not be what limits training:
the ratio is the headroom (at least 5x for the default models on CPU).
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Iterator

import torch

from mtmm_train.batch import Batch
from mtmm_train.benchmarking import make_recipe, recipe_step, sync
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=50, help="batches timed per measurement")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. experiment=diamonds")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = run(args.overrides, args.batches)
    print(f"config: {' '.join(args.overrides) or '(defaults)'}; {args.batches} batches of {rows[0]['batch_size']} "
          f"on {rows[0]['device']}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'loader':<12}{'loader samples/s':>18}{'train samples/s':>18}{'ratio':>9}")
    for r in rows:
        print(f"{r['loader']:<12}{r['loader_samples_per_s']:>18,.0f}{r['train_samples_per_s']:>18,.0f}"
              f"{r['ratio']:>8.1f}x")


if __name__ == "__main__":
    main()
