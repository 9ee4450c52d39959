"""Data conveniences and small-data defaults: column globs and ranges, a validation split carved out of
the training rows, the identity encoder, keeping the last batch, epochs from the data, torch threads."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch
from conftest import compose_cfg, run_cli, train

from mtmm_train.batch import ModalitySpec
from mtmm_train.data.base import TensorSplit
from mtmm_train.data.files import files
from mtmm_train.data.loader import InMemoryLoader
from mtmm_train.data.readers.base import expand_columns
from mtmm_train.data.splits import carve_val
from mtmm_train.encoders.identity import IdentityEncoder
from mtmm_train.encoders.mlp import MLPEncoder
from mtmm_train.errors import SettingError, UserError
from mtmm_train.instantiate import located
from mtmm_train.recipe import TrainRecipe

COLUMNS = ["id", "x1", "x2", "x3", "age", "x10", "label", "fold"]


def test_globs_and_ranges_expand_in_the_manifests_order() -> None:
    assert expand_columns(["x*"], COLUMNS) == ["x1", "x2", "x3", "x10"]
    assert expand_columns(["x2:age"], COLUMNS) == ["x2", "x3", "age"]
    assert expand_columns(["age", "x?", "x1:x2"], COLUMNS) == ["age", "x1", "x2", "x3"]  # each column once
    assert expand_columns(["nope"], COLUMNS) == ["nope"]  # a plain name is left to the dataset's column check
    assert expand_columns(["a:b"], ["a:b", "a", "b"]) == ["a:b"]  # a column so named wins


@pytest.mark.parametrize(("pattern", "message"), [
    ("y*", r"^columns has the pattern 'y\*', which matches none of the manifest's columns: id, x1, x2, x3, age, x10"),
    ("x1:z", r"^columns has the range 'x1:z', but 'z' is not a column of the manifest; its columns: id, x1"),
    ("age:x1", r"^columns has the range 'age:x1', but 'age' comes after 'x1' in the manifest; write it as 'x1:age'"),
])
def test_a_pattern_that_names_no_column_fails_in_one_line(pattern: str, message: str) -> None:
    with pytest.raises(SettingError, match=message) as e:
        expand_columns([pattern], COLUMNS)
    assert e.value.at("dataset.modalities.tab").startswith("dataset.modalities.tab.columns has the ")
    assert "\n" not in str(e.value)


def write_csv(path: Path, n: int = 90, folds: tuple[str, ...] = ("train", "train", "test")) -> Path:
    """Rows of three classes (30 each) with five numbers; the class is visible in x1."""
    g = torch.Generator().manual_seed(0)
    lines = [",".join(["id", "x1", "x2", "x3", "x4", "x5", "label", "fold"])]
    for i in range(n):
        c = ["a", "b", "c"][i % 3]
        xs = [f"{float(v):.4f}" for v in torch.randn(5, generator=g)]
        xs[0] = str(i % 3 + float(torch.rand(1, generator=g)) * 0.5)
        lines.append(",".join([str(i), *xs, c, folds[i // 3 % len(folds)]]))  # each fold: all classes
    path.write_text("\n".join(lines) + "\n")
    return path


def numeric(columns: object) -> dict:
    return {"_target_": "mtmm_train.data.readers.numeric.NumericReader", "columns": columns}


LABEL = {"label": {"_target_": "mtmm_train.data.readers.label.ClassLabel", "column": None}}


def load(manifest: Path, **kw: object):
    args = {"modalities": {"tab": numeric("x*")}, "tasks": LABEL, "split_column": "fold", "cache": False,
            "num_workers": 0, **kw}
    return files(str(manifest), **args)


def test_numeric_columns_from_a_glob_or_a_range(tmp_path: Path) -> None:
    manifest = write_csv(tmp_path / "m.csv", folds=("train", "val"))
    glob = load(manifest)
    ranged = load(manifest, modalities={"tab": numeric(["x1:x3", "x5"])})
    assert glob.modalities["tab"].shape == (5,) and ranged.modalities["tab"].shape == (4,)
    x_glob, x_range = glob.splits["train"].inputs["tab"], ranged.splits["train"].inputs["tab"]
    assert torch.equal(x_glob[:, [0, 1, 2, 4]], x_range)
    with pytest.raises(UserError, match=r"^dataset.modalities.tab.columns has the pattern 'y\*', which matches none"):
        load(manifest, modalities={"tab": numeric("y*")})


def test_multilabel_from_indicator_columns_and_regression_from_a_range(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    rows = ["x1,tag_a,tag_b,tag_c,y1,y2,fold"] + [f"{i},{i % 2},{(i // 2) % 2},{'' if i == 5 else 1},{i},{2 * i},"
                                                  f"{'train' if i < 8 else 'val'}" for i in range(12)]
    path.write_text("\n".join(rows) + "\n")
    tags = {"_target_": "mtmm_train.data.readers.multilabel.MultiLabel", "columns": "tag_*"}
    reg = {"_target_": "mtmm_train.data.readers.regression.NumericTarget", "columns": ["y1:y2"], "standardize": False}
    data = files(str(path), {"tab": numeric("x1")}, {"tags": tags, "y": reg}, split_column="fold", cache=False,
                 num_workers=0)
    assert data.tasks["tags"].dim == 3 and data.tasks["y"].dim == 2
    assert data.learned["tasks.tags"]["labels"] == ["tag_a", "tag_b", "tag_c"]
    train = data.splits["train"]
    assert train.targets["tags"][3].tolist() == [1.0, 1.0, 1.0] and train.targets["tags"][5].tolist() == [1.0, 0.0, 0.0]
    assert train.targets["y"][4].tolist() == [4.0, 8.0]
    bad = {**tags, "columns": ["tag_a", "x1"]}  # x1 holds 2, 3, ...: not 0/1
    with pytest.raises(UserError, match=r"^dataset.tasks.tags: column 'x1' row 3 holds 2, not 0 or 1; each of "
                                        r"dataset.tasks.tags.columns marks one label"):
        files(str(path), {"tab": numeric("x1")}, {"tags": bad}, split_column="fold", cache=False, num_workers=0)


def test_val_fraction_carves_a_stratified_validation_split_from_the_training_rows(tmp_path: Path) -> None:
    manifest = write_csv(tmp_path / "m.csv")  # 60 train, 30 test, no val
    with pytest.raises(UserError, match=r"the 'val' split is empty .* or set dataset.val_fraction=0.1"):
        load(manifest)
    data = load(manifest, val_fraction=0.2)
    assert {k: len(s) for k, s in data.splits.items()} == {"train": 48, "val": 12, "test": 30}
    assert torch.bincount(data.splits["val"].targets["label"], minlength=3).tolist() == [4, 4, 4]  # stratified
    again, other = load(manifest, val_fraction=0.2), load(manifest, val_fraction=0.2, seed=1)
    assert torch.equal(again.splits["val"].inputs["tab"], data.splits["val"].inputs["tab"])  # the seed decides
    assert not torch.equal(other.splits["val"].inputs["tab"], data.splits["val"].inputs["tab"])
    a, b = other.splits["test"].inputs["tab"][:, 1], data.splits["test"].inputs["tab"][:, 1]
    assert float(torch.corrcoef(torch.stack([a, b]))[0, 1]) > 0.9999  # the same test rows (other statistics)
    # With ratios that give no validation row (the test part drawn at random, validation stratified):
    ratios = load(manifest, split_column=None, split_ratios=[0.9, 0.0, 0.1], val_fraction=0.25)
    assert {k: len(s) for k, s in ratios.splits.items()} == {"train": 61, "val": 20, "test": 9}
    with pytest.raises(UserError, match=r"^dataset.val_fraction must be a fraction between 0 and 1 .*found 1.5"):
        load(manifest, val_fraction=1.5)


def test_val_fraction_is_not_used_when_the_column_has_validation_rows(tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    manifest = write_csv(tmp_path / "m.csv", folds=("train", "val", "test"))
    with caplog.at_level(logging.INFO, logger="mtmm_train"):
        data = load(manifest, val_fraction=0.2)
    assert len(data.splits["val"]) == 30 and "dataset.val_fraction=0.2 is not used" in caplog.text


def test_carve_val_keeps_every_class_in_training() -> None:
    split = torch.zeros(7, dtype=torch.long)
    out = carve_val(split, 0.5, seed=0, strata=["a", "a", "a", "a", "a", "a", "b"])  # one 'b' only
    assert int((out == 1).sum()) == 3 or int((out == 1).sum()) == 4
    assert out[6] == 0


def split_of(n: int) -> TensorSplit:
    return TensorSplit({"x": torch.arange(n).float().unsqueeze(1)}, {"x": torch.ones(n, dtype=torch.bool)},
                       {}, {})


@pytest.mark.parametrize(("n", "world", "min_last", "sizes"), [
    (100, 1, 1, [32, 32, 32, 4]),       # the last 4 samples are a batch
    (97, 1, 2, [32, 32, 33]),           # BatchNorm: a batch of 1 joins the batch before
    (97, 1, 1, [32, 32, 32, 1]),
    (100, 2, 1, [16, 16, 16, 2]),       # per process: the last global batch of 4 splits 2 + 2
    (67, 2, 2, [16, 18]),               # 3 left over would be 2 + 1: joins the batch before (18 + 17)
])
def test_keeping_the_last_batch_covers_every_sample_once(n: int, world: int, min_last: int,
                                                         sizes: list[int]) -> None:
    loaders = [InMemoryLoader(split_of(n), 32 if world == 1 else 16, shuffle=True, seed=3, rank=r,
                              world_size=world, global_batches=True, min_last=min_last) for r in range(world)]
    per_rank = [list(loader.indices(2)) for loader in loaders]
    assert [len(b) for b in per_rank[0]] == sizes
    seen = torch.cat([b for batches in per_rank for b in batches])
    assert sorted(seen.tolist()) == list(range(n))
    if world > 1:  # each global batch is the one-process batch, split in contiguous parts
        one = list(InMemoryLoader(split_of(n), 16 * world, shuffle=True, seed=3, global_batches=True,
                                  min_last=min_last * world).indices(2))
        assert all(torch.equal(torch.cat([per_rank[r][i] for r in range(world)]), one[i]) for i in range(len(one)))
    drop = InMemoryLoader(split_of(n), 32, shuffle=True, seed=3, drop_last=True)
    assert [len(b) for b in drop.indices(2)] == [32] * (n // 32)


def test_identity_encoder_passes_the_vector_through() -> None:
    enc = IdentityEncoder(ModalitySpec("tab", (5,), "vector"))
    x = torch.randn(4, 5)
    assert enc.out_dim == 5 and torch.equal(enc(x), x) and enc.tokens(x).shape == (4, 1, 5)
    assert not list(enc.parameters())
    with pytest.raises(UserError, match=r"^model.encoders.tab.out_dim is 8, but the identity encoder passes modality "
                       r"'tab' through, so its size is the modality's 5; set model.encoders.tab.out_dim=null"), \
            located("model.encoders.tab"):
        IdentityEncoder(ModalitySpec("tab", (5,), "vector"), out_dim=8)


def test_mlp_encoder_may_end_without_its_activation() -> None:
    torch.manual_seed(0)
    spec, x = ModalitySpec("tab", (5,), "vector"), torch.randn(64, 5)
    linear = MLPEncoder(spec, out_dim=8, hidden_dims=[], last_activation=False)
    with torch.no_grad():
        assert float(MLPEncoder(spec, out_dim=8)(x).min()) >= -0.2  # GELU's minimum is about -0.17
        assert len(linear.net) == 1 and float(linear(x).min()) < -0.5


SMALL = ["modalities=[tabular]", "tasks=[category]", "dataset.num_val=64", "dataset.num_test=16",
         "logger.progress_bar=false", "trainer.max_epochs=null"]


def test_small_data_trains_at_least_min_steps_and_keeps_the_last_batch(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="mtmm_train"):
        recipe = train(tmp_path / "a", [*SMALL, "dataset.num_train=70", "trainer.batch_size=32",
                                        "trainer.min_steps=30", "trainer.num_threads=1"], tiny=False)
    assert recipe.steps_per_epoch == 3  # 32 + 32 + 6: every sample trains
    assert recipe.trainer.max_epochs == 10 and recipe.step == 30
    assert "trainer.max_epochs=null: 10 epochs of 3 optimizer steps" in caplog.text
    assert "torch: 1 CPU thread(s) (trainer.num_threads=1)" in caplog.text and torch.get_num_threads() == 1
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert metrics["epochs"] == 10 and metrics["steps"] == 30
    # Enough data: the default 8 epochs; drop_last=true drops the 6 and says so.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mtmm_train"):
        cfg = compose_cfg([*SMALL, "dataset.num_train=70", "trainer.batch_size=32", "trainer.min_steps=4",
                           "trainer.drop_last=true"])
        dropped = TrainRecipe(cfg, tmp_path / "b")
        dropped.setup()
    assert dropped.steps_per_epoch == 2 and dropped.trainer.max_epochs == 8
    assert "each epoch leaves out 6 of the 70 training samples" in caplog.text


def test_batchnorm_never_trains_on_a_last_batch_of_one(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="mtmm_train"):
        recipe = train(tmp_path, ["modalities=[image]", "tasks=[category]", "dataset.num_train=65",
                                  "trainer.batch_size=32", "trainer.max_epochs=1", "dataset.num_val=32",
                                  "dataset.num_test=16", "logger.progress_bar=false"], tiny=False)
    assert recipe.steps_per_epoch == 2 and recipe.step == 2
    assert "would give BatchNorm 1 sample(s), so it joins the batch before" in caplog.text


def test_identity_encoder_and_mmoe_on_a_manifest_with_a_val_carve_out_from_the_cli(tmp_path: Path) -> None:
    manifest = write_csv(tmp_path / "m.csv", n=120)
    conf = tmp_path / "myconf" / "dataset"
    conf.mkdir(parents=True)
    (conf / "mine.yaml").write_text(f"""
defaults:
  - files
  - /reader@modalities.tab: numeric
  - /target@tasks.label: label
  - /encoder@_global_.model.encoders.tab: identity
  - /head@_global_.model.heads.label: linear
  - _self_
manifest: {manifest}
split_column: fold
val_fraction: 0.25
cache_dir: {tmp_path / "cache"}
modalities:
  tab: {{columns: "x*"}}
""")
    args = ["-cd", str(tmp_path / "myconf"), "dataset=mine", "mtl=mmoe", "trainer.min_steps=150",
            "trainer.num_threads=1", "logger.progress_bar=false", f"hydra.run.dir={tmp_path / 'run'}"]
    done = run_cli(args, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    log = (tmp_path / "run" / "mtmm-train.log").read_text()
    assert "dataset: 120 rows (train 61, val 20, test 39)" in log
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["steps"] >= 150 and math.isfinite(metrics["best"]["value"])
    assert metrics["best"]["metrics"]["val/label/accuracy"] > 0.6  # x1 tells the class; chance is 1/3
