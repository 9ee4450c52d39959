"""The frozen-feature cache (mtmm_train/feature_cache.py) and encoders that skip absent rows (model.py).

A frozen encoder is made here by setting ``requires_grad=False`` on its parameters right after the
model is built (what ``model.encoders.<m>.freeze`` does), so the cache is tested on its own.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import TINY, compose_cfg
from PIL import Image
from torch import nn

from mtmm_train import builders, evaluation, feature_cache
from mtmm_train.batch import ModalitySpec
from mtmm_train.encoders.cnn import CNNEncoder
from mtmm_train.errors import UserError
from mtmm_train.model import encode_present, skips_absent
from mtmm_train.recipe import TrainRecipe

pytestmark = pytest.mark.usefixtures("one_thread")

# No BatchNorm: a frozen encoder in training mode then computes what it computes in eval mode, so the
# run without the cache is the reference for the run with it.
IMAGE = ["model.encoders.image.batch_norm=false"]


class Counter:
    """Counts the calls and the rows of an encoder's forward and tokens (both paths)."""

    def __init__(self) -> None:
        self.calls = 0
        self.rows = 0
        self.zero_rows = 0  # absent rows are zeros in the data

    def patch(self, encoder: nn.Module) -> None:
        for name in ("forward", "tokens"):
            original = getattr(encoder, name)

            def counted(x: torch.Tensor, *present: Any, _original: Any = original) -> torch.Tensor:
                self.calls += 1
                self.rows += x.shape[0]
                self.zero_rows += int((x.flatten(1) == 0).all(1).sum())
                return _original(x, *present)  # the mask, for an encoder that uses_presence

            setattr(encoder, name, counted)


@pytest.fixture
def freeze(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Freeze the encoders named in ``state["modalities"]`` when a model is built; count their calls."""
    state: dict[str, Any] = {"modalities": ["image"], "counters": {}, "tweak": None}
    build_model = builders.build_model

    def frozen_model(*args: Any, **kwargs: Any) -> nn.Module:
        model = build_model(*args, **kwargs)
        for m in state["modalities"]:
            encoder = model.encoders[m]
            if state["tweak"] is not None:
                state["tweak"](encoder)
            encoder.requires_grad_(False)
            state["counters"][m] = counter = Counter()
            counter.patch(encoder)
        return model

    monkeypatch.setattr(builders, "build_model", frozen_model)
    return state


def run(tmp_path: Path, name: str, overrides: list[str], train: bool = True) -> TrainRecipe:
    cfg = compose_cfg(TINY + [f"model.feature_cache_dir={tmp_path / 'cache'}", "logger.tensorboard=false"]
                      + overrides)
    recipe = TrainRecipe(cfg, tmp_path / name)
    recipe.setup()
    if train:
        recipe.train()
    return recipe


def entries(tmp_path: Path) -> list[str]:
    folder = tmp_path / "cache" / "features"
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []


def test_second_run_hits_the_cache_and_never_runs_the_encoder(tmp_path: Path, freeze: dict[str, Any]) -> None:
    first = run(tmp_path, "a", IMAGE)
    counter = freeze["counters"]["image"]
    present = sum(int(s.present["image"].sum()) for s in first.data.splits.values())
    # The first run encodes each present row once (plus one probe row per split), never in a training step.
    assert counter.rows == present + len(first.data.splits)
    assert first.model.precomputed == {"image"}
    assert first.splits["train"].inputs["image"].shape[1:] == (first.model.encoders["image"].out_dim,)
    assert len(entries(tmp_path)) == 1
    folder = tmp_path / "cache" / "features" / entries(tmp_path)[0]
    assert sorted(p.name for p in folder.iterdir()) == ["test.npy", "train.npy", "val.npy"]

    second = run(tmp_path, "b", IMAGE + ["fusion=sum", "balancer=dwa"])  # a sweep: only what follows changes
    assert freeze["counters"]["image"].calls == 0
    assert second.model.precomputed == {"image"}
    assert entries(tmp_path) == entries(tmp_path)[:1]


def test_training_from_the_cache_matches_training_without_it(tmp_path: Path, freeze: dict[str, Any]) -> None:
    """Bit-identical on the CPU: the same weights, the same validation metrics."""
    cached = run(tmp_path, "cached", IMAGE)
    plain = run(tmp_path, "plain", IMAGE + ["model.feature_cache=off"])
    assert cached.model.precomputed == {"image"} and plain.model.precomputed == set()
    assert freeze["counters"]["image"].calls > 0  # the plain run encoded at every step
    assert cached.best["metrics"] == plain.best["metrics"]
    for (name, a), b in zip(cached.model.state_dict().items(), plain.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    # The encoder stays in the model: a fresh model (as mtmm-eval and mtmm-predict build) on raw inputs agrees.
    fresh = builders.build_model(plain.cfg, plain.data, plain.tasks)
    fresh.load_state_dict(cached.model.state_dict())
    again = evaluation.evaluate(fresh, plain.tasks, plain.splits["val"], 64, prefix="val")
    assert again == pytest.approx(cached.evaluate("val"), rel=1e-5, abs=1e-6)


def test_unfrozen_or_off_is_not_cached(tmp_path: Path, freeze: dict[str, Any]) -> None:
    freeze["modalities"] = []
    recipe = run(tmp_path, "a", IMAGE, train=False)
    assert recipe.model.precomputed == set() and entries(tmp_path) == []
    with pytest.raises(UserError, match=r"model.feature_cache must be one of auto, off, found 'maybe'"):
        run(tmp_path, "b", IMAGE + ["model.feature_cache=maybe"], train=False)


def test_tokens_are_cached_for_a_fusion_that_wants_them(tmp_path: Path, freeze: dict[str, Any]) -> None:
    recipe = run(tmp_path, "a", IMAGE + ["fusion=transformer"])
    tokens = recipe.splits["val"].inputs["image"]
    assert tokens.dim() == 3 and tokens.shape[2] == recipe.model.encoders["image"].out_dim
    plain = run(tmp_path, "b", IMAGE + ["fusion=transformer", "model.feature_cache=off"])
    assert recipe.best["metrics"] == pytest.approx(plain.best["metrics"], rel=1e-5, abs=1e-6)


def test_a_changed_weight_gives_a_new_entry(tmp_path: Path, freeze: dict[str, Any]) -> None:
    a = run(tmp_path, "a", IMAGE, train=False)
    freeze["tweak"] = lambda encoder: encoder.proj.bias.data.add_(0.5)  # e.g. another weight file
    b = run(tmp_path, "b", IMAGE, train=False)
    assert len(entries(tmp_path)) == 2
    assert freeze["counters"]["image"].calls > 0  # computed, not read from a's entry
    diff = b.splits["val"].inputs["image"] - a.splits["val"].inputs["image"]
    present = a.splits["val"].present["image"]
    assert torch.allclose(diff[present], torch.full_like(diff[present], 0.5), atol=1e-5)
    assert torch.all(b.splits["val"].inputs["image"][~present] == 0)  # absent rows: zeros, never encoded


# ---------------------------------------------------------------------- a manifest: preprocessing, data
def write_dataset(root: Path, n: int = 48, seed: int = 0) -> Path:
    """``n`` images (class = dominant colour) and a manifest; every 6th row has no image."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        c = i % 3
        img = rng.integers(0, 60, (10, 10, 3)).astype(np.uint8)
        img[:, :, c] = 200
        Image.fromarray(img).save(root / f"img/{i}.png")
        rows.append({"image": "" if i % 6 == 5 else f"img/{i}.png", "label": "rgb"[c], "a": float(c)})
    path = root / "manifest.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def manifest_overrides(manifest: Path, size: int = 8) -> list[str]:
    return ["dataset=files", f"dataset.manifest={manifest}", f"dataset.cache_dir={manifest.parent / 'decoded'}",
            "dataset.num_workers=0", "+reader@dataset.modalities.image=image",
            f"dataset.modalities.image.size=[{size},{size}]",
            "+reader@dataset.modalities.tabular=numeric", "dataset.modalities.tabular.columns=[a]",
            "+target@dataset.tasks.label=label", "+encoder@model.encoders.image=cnn",
            "+encoder@model.encoders.tabular=mlp", "+head@model.heads.label=linear", "trainer.batch_size=8",
            "trainer.max_epochs=1", "logger.progress_bar=false", "logger.tensorboard=false", *IMAGE]


def setup(tmp_path: Path, name: str, overrides: list[str]) -> TrainRecipe:
    cfg = compose_cfg([f"model.feature_cache_dir={tmp_path / 'cache'}"] + overrides)
    recipe = TrainRecipe(cfg, tmp_path / name)
    recipe.setup()
    return recipe


def test_changed_preprocessing_or_manifest_gives_a_new_entry(tmp_path: Path, freeze: dict[str, Any]) -> None:
    manifest = write_dataset(tmp_path / "data")
    a = setup(tmp_path, "a", manifest_overrides(manifest))
    assert a.model.precomputed == {"image"} and len(entries(tmp_path)) == 1
    same = setup(tmp_path, "same", manifest_overrides(manifest) + ["fusion=mean"])
    assert freeze["counters"]["image"].calls == 0 and len(entries(tmp_path)) == 1  # a hit

    setup(tmp_path, "b", manifest_overrides(manifest, size=6))  # the reader's settings (preprocessing)
    assert freeze["counters"]["image"].calls > 0 and len(entries(tmp_path)) == 2

    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(manifest.parent / "img/0.png")  # a file of the data
    c = setup(tmp_path, "c", manifest_overrides(manifest))
    assert freeze["counters"]["image"].calls > 0 and len(entries(tmp_path)) == 3
    assert any(not torch.equal(c.splits[k].inputs["image"], same.splits[k].inputs["image"]) for k in c.splits)

    with manifest.open("a") as f:  # one more row in the manifest
        f.write("img/1.png,g,1.0\n")
    setup(tmp_path, "d", manifest_overrides(manifest))
    assert freeze["counters"]["image"].calls > 0 and len(entries(tmp_path)) == 4


def test_an_augmented_modality_is_not_cached(tmp_path: Path, freeze: dict[str, Any]) -> None:
    manifest = write_dataset(tmp_path / "data")
    cfg = compose_cfg(manifest_overrides(manifest) + ["dataset.modalities.image.augment.hflip=0.5"])
    assert feature_cache.augmented(cfg, "image") and not feature_cache.augmented(cfg, "tabular")
    assert feature_cache.augmented(compose_cfg(manifest_overrides(manifest) + ["augment=light"]), "image")
    cfg = compose_cfg(manifest_overrides(manifest) + ["augment=light", "dataset.modalities.image.augment.preset=none"])
    assert not feature_cache.augmented(cfg, "image")
    assert not feature_cache.augmented(compose_cfg(manifest_overrides(manifest)), "image")


# ---------------------------------------------------------------------- absent rows skip the encoder
def test_an_encoder_that_skips_absent_rows_sees_only_present_ones() -> None:
    torch.manual_seed(0)
    encoder = CNNEncoder(ModalitySpec("image", (3, 8, 8), "image"), out_dim=8, batch_norm=False)
    x = torch.randn(6, 3, 8, 8)
    present = torch.tensor([True, False, True, True, False, True])
    counter = Counter()
    full = encoder(x)
    counter.patch(encoder)
    for tokens in (False, True):
        out = encode_present(encoder, x, present, tokens)
        reference = encoder.tokens(x) if tokens else full
        assert torch.allclose(out[present], reference[present], atol=1e-6)
        assert torch.all(out[~present] == 0)
    assert counter.rows == 4 + 6 + 4  # present rows only (the middle call is the reference)
    assert not skips_absent(encoder)  # from scratch: every row, no host read
    encoder.skip_absent = True
    assert skips_absent(encoder)

    class WithBackbone(CNNEncoder):  # as TimmEncoder and HFEncoder name theirs
        @property
        def backbone(self) -> nn.Module:
            return self.net

    assert skips_absent(WithBackbone(ModalitySpec("image", (3, 8, 8), "image")))  # backbones opt in by default


def test_the_model_skips_absent_rows_in_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build_model = builders.build_model
    counter = Counter()

    def opted_in(*args: Any, **kwargs: Any) -> nn.Module:
        model = build_model(*args, **kwargs)
        model.encoders["image"].skip_absent = True
        counter.patch(model.encoders["image"])
        return model

    monkeypatch.setattr(builders, "build_model", opted_in)
    recipe = run(tmp_path, "a", IMAGE)
    absent = sum(int((~s.present["image"]).sum()) for s in recipe.splits.values())
    assert absent > 0 and counter.calls > 0
    assert counter.zero_rows == 0  # the rows without an image never reached the encoder
    assert torch.isfinite(torch.tensor(list(recipe.best["metrics"].values()))).all()


def test_the_freeze_setting_turns_the_cache_on(tmp_path: Path) -> None:
    """``++model.encoders.<m>.freeze=true`` (mtmm_train/finetune.py) turns it on; unfreeze_at_epoch does not."""
    recipe = run(tmp_path, "a", ["++model.encoders.image.freeze=true"], train=False)
    assert recipe.model.precomputed == {"image"} and len(entries(tmp_path)) == 1
    later = run(tmp_path, "b", ["++model.encoders.image.unfreeze_at_epoch=1"], train=False)
    assert later.model.precomputed == set()
