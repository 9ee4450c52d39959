"""Streaming from files (dataset.storage=stream), the compact memory-mapped cache (storage=cache), the
per-sample transform hook, and a cache that changes nothing: the same results as decoding, bit for bit."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import compose_cfg, run_cli
from test_data_files import make_rows, modalities, tasks, write_manifest

from mtmm_train.data import FileSplit, InMemoryLoader, StreamingLoader, TensorSplit
from mtmm_train.data.base import sample_seed
from mtmm_train.data.files import files
from mtmm_train.data.readers.image import ImageReader
from mtmm_train.errors import UserError
from mtmm_train.recipe import TrainRecipe

FIELDS = ("inputs", "present", "targets", "labeled")


def same(a: Any, b: Any) -> bool:
    return all(torch.equal(getattr(a, f)[k], getattr(b, f)[k]) for f in FIELDS for k in getattr(a, f))


def load(manifest: Path, **kw: Any) -> Any:
    mods = {k: v for k, v in modalities().items() if k != "caption"}  # text: the backbone engineer's reader
    args = {"modalities": mods, "tasks": tasks(), "split_column": "fold", "cache": False, "num_workers": 0, **kw}
    return files(str(manifest), **args)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("stream")
    return write_manifest(root, make_rows(root, n=36))


def test_streamed_batches_equal_decoded_batches(manifest: Path) -> None:
    memory, stream = load(manifest), load(manifest, storage="stream")
    assert stream.storage == "stream" and stream.modalities == memory.modalities
    split = stream.splits["train"]
    assert isinstance(split, FileSplit) and set(split.readers) == {"image", "audio", "embedding"}
    assert "image" not in split.tensors.inputs  # only paths are held, not pixels
    for name, ref in memory.splits.items():
        index = torch.randperm(len(ref))[:7]
        assert same(stream.splits[name].batch(index), ref.batch(index)), name
    assert memory.splits["train"].inputs["image"].dtype == torch.uint8
    # Through DataLoader workers (the loaders' shared epoch order), batch for batch.
    got = StreamingLoader(split, 8, shuffle=True, drop_last=True, seed=3, num_workers=2, train=True)
    want = InMemoryLoader(memory.splits["train"], 8, shuffle=True, drop_last=True, seed=3, train=True)
    assert all(same(g, w) for g, w in zip(got.epoch(1), want.epoch(1), strict=True))


def test_a_file_that_breaks_while_streaming_names_the_file_and_row(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, make_rows(tmp_path, n=12))
    split = load(manifest, storage="stream").splits["train"]
    (tmp_path / "img" / "1.png").write_bytes(b"broken")  # row 2 of the manifest, in training
    for workers in (0, 1):
        loader = StreamingLoader(split, 8, num_workers=workers, persistent_workers=False)
        with pytest.raises(UserError, match=r"^dataset.modalities.image: .*img/1.png \(column 'image' row 2 of "
                                            r"'.*manifest.csv'\) could not be decoded: .*; fix or replace"):
            list(loader.epoch(0))


class FlipSometimes:
    """A stand-in augmentation: flips an image left-right with p=0.5 from the given generator."""

    def __init__(self, train: bool, calls: list) -> None:
        self.train, self.calls = train, calls

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        self.calls.append(self.train)
        flip = self.train and bool(torch.rand((), generator=gen) < 0.5)
        return x.flip(-1) if flip else x


def test_sample_transforms_are_seeded_by_seed_epoch_and_row_only(manifest: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bool] = []
    monkeypatch.setattr(ImageReader, "sample_transform", lambda self, train: FlipSometimes(train, calls))
    plain = load(manifest).splits["train"]
    for storage in ("memory", "stream"):
        split = load(manifest, storage=storage, seed=5).splits["train"]
        n = len(split)
        whole = split.batch(torch.arange(n), epoch=2).inputs["image"]
        # The same sample, alone or in another batch, with or without workers: the same draw.
        parts = torch.cat([split.batch(torch.arange(i, min(i + 5, n)), epoch=2).inputs["image"]
                           for i in range(0, n, 5)])
        assert torch.equal(whole, parts)
        loader = StreamingLoader(split, n, num_workers=1, persistent_workers=False, train=True)
        assert torch.equal(next(iter(loader.epoch(2))).inputs["image"], whole)
        flipped = [not torch.equal(whole[i], plain.inputs["image"][i]) for i in range(n)]
        assert 0 < sum(flipped) < n  # some flipped, some not
        assert not torch.equal(split.batch(torch.arange(n), epoch=3).inputs["image"], whole)  # a new epoch
        assert torch.equal(split.batch(torch.arange(n)).inputs["image"], plain.inputs["image"])  # evaluation
        rows = split.rows if isinstance(split, TensorSplit) else split.tensors.rows
        expect = [bool(torch.rand((), generator=torch.Generator().manual_seed(sample_seed(5, 2, int(r), "image")))
                       < 0.5) for r in rows]
        assert [f for f, p in zip(flipped, split.present["image"].tolist(), strict=True) if p] == \
            [e for e, p in zip(expect, split.present["image"].tolist(), strict=True) if p]
    assert True in calls and False in calls


def recipe_cfg(manifest: Path, cache_dir: Path, *extra: str) -> Any:
    return compose_cfg([
        "dataset=files", f"dataset.manifest={manifest}", "dataset.split_column=fold", f"dataset.cache_dir={cache_dir}",
        "+reader@dataset.modalities.image=image", "dataset.modalities.image.size=[8,8]",
        "+reader@dataset.modalities.audio=audio", "dataset.modalities.audio.n_mels=16",
        "dataset.modalities.audio.max_frames=20", "+target@dataset.tasks.colour=label",
        "+encoder@model.encoders.image=cnn", "+encoder@model.encoders.audio=conv1d", "+head@model.heads.colour=linear",
        "trainer.max_epochs=2", "trainer.batch_size=8", "logger.progress_bar=false", "dataset.num_workers=1",
        "model.modality_dropout=0.3", *extra])


def test_cache_stream_and_memory_train_to_identical_results(manifest: Path, tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    # The reproducibility setting the docs promise: one process, the CPU, the same thread count.
    # Modality dropout draws from the global random state, so anything that moved it would show.
    results = {}
    cache = tmp_path / "cache"
    runs = {"decoded": [], "cached": [], "no cache": ["dataset.cache=false"], "stream": ["dataset.storage=stream"],
            "mmap": ["dataset.storage=cache"]}
    for name, extra in runs.items():
        with caplog.at_level(logging.INFO, logger="mtmm_train"):
            recipe = TrainRecipe(recipe_cfg(manifest, cache, *extra), tmp_path / name)
            recipe.setup()
            value = recipe.train()
        weights = torch.cat([p.detach().flatten() for p in recipe.model.parameters()])
        results[name] = (value, recipe.best["metrics"], weights)
        if name == "stream":
            assert isinstance(recipe.train_loader, StreamingLoader) and recipe.eval_loaders
            assert all(isinstance(s, FileSplit) for s in recipe.splits.values())
        if name == "mmap":
            entry = str(next((cache / "files").glob("*.pt")))
            assert entry in Path("/proc/self/maps").read_text()  # pages of the cache file, not a copy
            assert isinstance(recipe.train_loader, StreamingLoader)
    assert "decoded manifest.csv and cached it in" in caplog.text and " MB)" in caplog.text
    assert "loaded manifest.csv from the cache" in caplog.text
    ref_value, ref_metrics, ref_weights = results["decoded"]
    for name, (value, metrics, weights) in results.items():
        assert value == ref_value and metrics == ref_metrics, name  # bit for bit, not approximately
        assert torch.equal(weights, ref_weights), name


def test_reading_leaves_the_random_state_alone(manifest: Path) -> None:
    # The cause of "the cache changes results": decoding iterated a DataLoader, which draws its
    # workers' base seed from torch's global generator, so the model was then initialised differently.
    def draws() -> tuple:
        return torch.rand(3).tolist(), float(np.random.rand()), random.random()

    for kw in ({}, {"storage": "stream"}, {"num_workers": 2}):
        for reseed in (torch.manual_seed, np.random.seed, random.seed):
            reseed(1)
        want = draws()
        for reseed in (torch.manual_seed, np.random.seed, random.seed):
            reseed(1)
        load(manifest, **kw)
        assert draws() == want, kw


def test_the_cache_key_covers_exactly_what_changes_the_data(manifest: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    kw = {"cache": True, "cache_dir": str(tmp_path / "cache")}
    load(manifest, seed=0, **kw)
    monkeypatch.setattr(ImageReader, "decode", lambda self, path: (_ for _ in ()).throw(AssertionError("decoded")))
    load(manifest, seed=1, **kw)  # a fixed split column: the seed changes nothing, the entry is reused
    load(manifest, seed=1, storage="cache", **kw)  # memory-mapped: the same entry
    ratios = {"split_column": None, "split_ratios": [0.5, 0.25, 0.25], "unseen_classes": "ignore"}
    monkeypatch.undo()
    load(manifest, seed=0, **ratios, **kw)
    monkeypatch.setattr(ImageReader, "decode", lambda self, path: (_ for _ in ()).throw(AssertionError("decoded")))
    with pytest.raises(UserError, match="decoded"):  # ratios: the seed draws the split, a new entry
        load(manifest, seed=1, **ratios, **kw)
    assert len(list((tmp_path / "cache" / "files").glob("*.pt"))) == 2
    assert not list((tmp_path / "cache" / "files").glob("*.tmp*"))  # written atomically, nothing left over


def test_storage_settings_are_checked(manifest: Path) -> None:
    with pytest.raises(UserError, match="dataset.storage must be one of memory, stream, cache, found 'disk'"):
        load(manifest, storage="disk")
    with pytest.raises(UserError, match="dataset.storage=cache memory-maps the disk cache, but dataset.cache=false"):
        load(manifest, storage="cache", cache=False)


def test_streaming_from_the_cli(manifest: Path, tmp_path: Path) -> None:
    args = ["dataset=files", f"dataset.manifest={manifest}", "dataset.split_column=fold", "dataset.storage=stream",
            "+reader@dataset.modalities.image=image", "dataset.modalities.image.size=[8,8]",
            "+target@dataset.tasks.colour=label", "+encoder@model.encoders.image=cnn",
            "+head@model.heads.colour=linear", "trainer.max_epochs=1", "trainer.batch_size=8",
            "logger.progress_bar=false", f"hydra.run.dir={tmp_path / 'run'}"]
    done = run_cli(args, tmp_path, env={"MTMM_CACHE_DIR": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0 <= metrics["best"]["metrics"]["val/colour/accuracy"] <= 1
    assert not (tmp_path / "cache").exists()  # streamed: nothing decoded up front, nothing cached


def test_mtmm_eval_of_a_streamed_run_gives_the_memory_runs_results(manifest: Path, tmp_path: Path) -> None:
    # mtmm-eval's subsets and corruptions need whole tensors: a streamed split is decoded into memory for them.
    from mtmm_train.evaluate import EvalConfig, evaluate_checkpoint

    results = {}
    for name, extra in (("memory", []), ("stream", ["dataset.storage=stream"])):
        recipe = TrainRecipe(recipe_cfg(manifest, tmp_path / "cache", "trainer.max_epochs=1", *extra), tmp_path / name)
        recipe.setup()
        recipe.train()
        results[name] = evaluate_checkpoint(EvalConfig(
            checkpoint=str(tmp_path / name / "checkpoints" / "best.pt"), split="val", plot=False, device="cpu",
            noise=[0.5], zero=[1.0], drop=[]), tmp_path / f"eval-{name}")
    memory, stream = results["memory"], results["stream"]
    assert len(stream["subsets"]) == 3 and len(stream["corruptions"]) == 4  # {image, audio} x {noise, zero}
    assert stream["clean"] == memory["clean"] and stream["subsets"] == memory["subsets"]
    assert stream["corruptions"] == memory["corruptions"]
