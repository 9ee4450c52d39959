"""The DataLoader-based loader matches the in-memory one batch for batch, trains, and is fast enough."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY, compose_cfg

from mtmm_train.data import InMemoryLoader, StreamingLoader
from mtmm_train.data.synthetic import synthetic
from mtmm_train.errors import UserError
from mtmm_train.recipe import TrainRecipe


def _same(a: object, b: object) -> bool:
    return all(torch.equal(getattr(a, f)[k], getattr(b, f)[k])
               for f in ("inputs", "present", "targets", "labeled") for k in getattr(a, f))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_streaming_batches_equal_in_memory_batches_including_resume(num_workers: int) -> None:
    split = synthetic(num_train=150, num_val=10, num_test=10).splits["train"]
    ref = InMemoryLoader(split, 32, shuffle=True, drop_last=True, seed=3)
    stream = StreamingLoader(split, 32, shuffle=True, drop_last=True, seed=3, num_workers=num_workers)
    assert len(stream) == len(ref) == 4
    for epoch, start in ((0, 0), (1, 0), (1, 2)):
        got, want = list(stream.epoch(epoch, start)), list(ref.epoch(epoch, start))
        assert len(got) == len(want) == 4 - start
        assert all(_same(g, w) for g, w in zip(got, want, strict=True))
    assert not _same(list(stream.epoch(0))[0], list(stream.epoch(1))[0])  # a new order each epoch


def test_streaming_loader_refuses_bad_settings() -> None:
    split = synthetic(num_train=20, num_val=10, num_test=10).splits["train"]
    with pytest.raises(UserError, match="loader.num_workers must be an integer >= 0, found -1"):
        StreamingLoader(split, 8, num_workers=-1)


def test_training_with_the_dataloader_config_matches_in_memory_training(tmp_path: Path) -> None:
    results = []
    for extra in ([], ["loader=dataloader", "loader.num_workers=1"]):
        recipe = TrainRecipe(compose_cfg(TINY + extra), tmp_path / str(len(extra)))
        recipe.setup()
        results.append((recipe, recipe.train()))
    (mem, mem_value), (stream, stream_value) = results
    assert isinstance(mem.train_loader, InMemoryLoader) and isinstance(stream.train_loader, StreamingLoader)
    assert stream.splits["train"] is stream.data.splits["train"]  # left in host memory, not moved
    # Same batches, same seed: the same model, up to float summation order.
    assert stream_value == pytest.approx(mem_value, rel=1e-5)


def test_the_loader_benchmark_measures_both_rates(tmp_path: Path) -> None:
    # The speed claim itself (the in-memory loader is far faster than training) is measured side by
    # side by scripts/bench_loader.py, not asserted here: a test must not depend on the machine's speed.
    spec = importlib.util.spec_from_file_location("bench_loader", ROOT / "scripts" / "bench_loader.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    recipe = TrainRecipe(compose_cfg(TINY), tmp_path)
    recipe.setup()
    loader_rate, train_rate = bench.measure(recipe, 4)
    assert math.isfinite(loader_rate) and math.isfinite(train_rate) and loader_rate > 0 and train_rate > 0
