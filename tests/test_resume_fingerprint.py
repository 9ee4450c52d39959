"""Checkpoints remember the schema of their data; resuming or evaluating on other data is refused.

Resuming a ``dataset=files`` run on another manifest (classes renamed, targets rescaled) loads the
weights without complaint, and they then mean something else: the checkpoint's fingerprint of the
data (modalities, tasks, class names, standardisation statistics) must match the data now.
"""

from __future__ import annotations

import csv
import logging
import re
from pathlib import Path

import pytest
import torch
from conftest import compose_cfg, run_cli

from mtmm_train import checkpoint
from mtmm_train.errors import UserError
from mtmm_train.evaluate import load_run
from mtmm_train.recipe import TrainRecipe

KINDS = ("x", "y", "z")
FOLDS = ("train", "train", "train", "val")


def rows(n: int = 24) -> list[dict]:
    """Two numeric features, a 3-class label, a regression target and a fold column."""
    return [{"a": round(0.1 * i + i % 3, 3), "b": float(i), "kind": KINDS[i % 3], "y": 0.5 * i, "fold": FOLDS[i % 4]}
            for i in range(n)]


def write(path: Path, table: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    return path


def overrides(manifest: Path, tmp: Path, *extra: str, cache: bool = False) -> list[str]:
    return ["dataset=files", f"dataset.manifest={manifest}", "dataset.split_column=fold", f"dataset.cache={cache}",
            f"dataset.cache_dir={tmp / 'cache'}", "dataset.num_workers=0",
            "+reader@dataset.modalities.tab=numeric", "dataset.modalities.tab.columns=[a,b]",
            "+target@dataset.tasks.kind=label", "+target@dataset.tasks.y=regression",
            "+encoder@model.encoders.tab=mlp", "+head@model.heads.kind=linear", "+head@model.heads.y=linear",
            "trainer.max_epochs=1", "trainer.batch_size=4", "logger.progress_bar=false", "logger.tensorboard=false",
            *extra]


def run(output: Path, args: list[str]) -> TrainRecipe:
    recipe = TrainRecipe(compose_cfg(args), output)
    recipe.setup()
    recipe.train()
    return recipe


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(scratch folder, last.pt) of a one-epoch run on the good manifest."""
    tmp = tmp_path_factory.mktemp("fingerprint")
    manifest = write(tmp / "data" / "manifest.csv", rows())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run(tmp / "run", overrides(manifest, tmp))
    finally:
        torch.set_num_threads(threads)
    return tmp, tmp / "run" / "checkpoints" / "last.pt"


def resume_on(tmp: Path, last: Path, table: list[dict], name: str, *extra: str) -> TrainRecipe:
    """Set up (and so resume) a run from ``last`` on a manifest holding ``table``."""
    manifest = write(tmp / name / "manifest.csv", table)
    recipe = TrainRecipe(compose_cfg(overrides(manifest, tmp, f"trainer.resume={last}", "trainer.max_epochs=2",
                                               *extra)), tmp / name / "run")
    recipe.setup()
    return recipe


def renamed() -> list[dict]:
    return [{**r, "kind": {"z": "w"}.get(r["kind"], r["kind"])} for r in rows()]


def rescaled() -> list[dict]:
    return [{**r, "y": r["y"] * 100} for r in rows()]


def test_the_checkpoint_stores_the_schema_of_its_data(trained: tuple[Path, Path]) -> None:
    fp = torch.load(trained[1], weights_only=True)["data_fingerprint"]
    assert fp["modalities"]["tab"]["kind"] == "vector" and fp["modalities"]["tab"]["shape"] == [2]
    assert len(fp["modalities"]["tab"]["mean"]) == 2 and len(fp["modalities"]["tab"]["std"]) == 2
    assert fp["tasks"]["kind"] == {"kind": "multiclass", "classes": ["x", "y", "z"], "dim": 3}
    ys = [r["y"] for r in rows() if r["fold"] == "train"]
    assert fp["tasks"]["y"]["kind"] == "regression" and fp["tasks"]["y"]["mean"] == pytest.approx([sum(ys) / len(ys)])


@pytest.mark.parametrize("table, expected", [
    (renamed, r"task 'kind' classes were \[x, y, z\] at training, now \[w, x, y\]"),
    (rescaled, r"task 'y' mean was 5\.5 at training, now 550"),
], ids=["classes_renamed", "targets_x100"])
def test_resuming_on_other_data_is_refused_naming_the_difference(trained: tuple[Path, Path], table, expected) -> None:
    tmp, last = trained
    with pytest.raises(UserError) as e:
        resume_on(tmp, last, table(), f"other-{table.__name__}")
    message = str(e.value)
    assert "\n" not in message
    assert f"checkpoint '{last}' was trained on other data: " in message
    assert re.search(expected, message), message
    assert message.endswith("resume it with the data it was trained on, or start a new run (without trainer.resume)")


def test_resuming_on_the_same_data_continues(trained: tuple[Path, Path], caplog: pytest.LogCaptureFixture) -> None:
    tmp, last = trained
    with caplog.at_level(logging.WARNING, logger="mtmm_train"):
        recipe = resume_on(tmp, last, rows(), "same")  # another file with the same content
    assert recipe.resumed_from == last and recipe.epoch == 1
    assert "fingerprint" not in caplog.text


def test_the_dataset_cache_keeps_what_the_readers_learned(trained: tuple[Path, Path]) -> None:
    tmp, last = trained
    manifest = write(tmp / "cached" / "manifest.csv", rows())
    first = TrainRecipe(compose_cfg(overrides(manifest, tmp, cache=True)), tmp / "cached" / "run1")
    first.setup()  # decodes and writes the cache entry
    second = TrainRecipe(compose_cfg(overrides(manifest, tmp, f"trainer.resume={last}", "trainer.max_epochs=2",
                                               cache=True)), tmp / "cached" / "run2")
    second.setup()  # loads the entry; its fingerprint matches the checkpoint's
    assert checkpoint.data_fingerprint(second.data) == checkpoint.data_fingerprint(first.data)
    assert second.resumed_from == last


def test_an_old_checkpoint_without_fingerprint_resumes_with_a_warning(trained: tuple[Path, Path],
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    tmp, last = trained
    state = torch.load(last, weights_only=True)
    del state["data_fingerprint"]
    old = tmp / "old" / "last.pt"
    old.parent.mkdir()
    torch.save(state, old)
    with caplog.at_level(logging.WARNING, logger="mtmm_train"):
        recipe = resume_on(tmp, old, renamed(), "old-run")
    assert recipe.resumed_from == old
    assert "holds no fingerprint of its data" in caplog.text


def test_eval_refuses_a_checkpoint_whose_data_changed_since(trained: tuple[Path, Path]) -> None:
    tmp, last = trained
    state = torch.load(last, weights_only=True)
    manifest = write(tmp / "edited" / "manifest.csv", rescaled())  # the manifest, edited after training
    state["config"]["dataset"]["manifest"] = str(manifest)
    moved = tmp / "edited" / "checkpoints" / "last.pt"
    moved.parent.mkdir()
    torch.save(state, moved)
    with pytest.raises(UserError, match=r"was trained on other data: task 'y' mean was 5\.5 at training, now "
                       r"550; the data its stored config names has changed since training"):
        load_run(moved, "cpu", None)
    assert load_run(last, "cpu", None).model is not None  # unchanged data: evaluates


def test_resume_on_other_data_through_the_cli(trained: tuple[Path, Path]) -> None:
    tmp, last = trained
    manifest = write(tmp / "cli" / "manifest.csv", renamed())
    proc = run_cli([f"hydra.run.dir={tmp / 'cli' / 'run'}", *overrides(manifest, tmp, f"trainer.resume={last}",
                                                                        "trainer.max_epochs=2")],
                   tmp, env={"OMP_NUM_THREADS": "1"})
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("mtmm-train: error: checkpoint "), proc.stderr[-2000:]
    assert "task 'kind' classes were [x, y, z] at training, now [w, x, y]" in lines[0]
    assert not (tmp / "cli" / "run" / "checkpoints").exists()


@pytest.mark.parametrize("change, expected", [
    (lambda fp: fp["modalities"].pop("tab"), "modalities were [tab] at training, now []"),
    (lambda fp: fp["modalities"]["tab"].update(shape=[3]), "modality 'tab' shape was [2] at training, now [3]"),
    (lambda fp: fp["modalities"]["tab"].update(std=[1.0, 7.0]), "modality 'tab' std[1] was 2 at training, now 7"),
    (lambda fp: fp["tasks"]["kind"].update(kind="binary"), "task 'kind' kind was multiclass at training, now binary"),
    (lambda fp: fp["tasks"]["kind"].update(vocabulary="3 words"), None),  # only one side has it: not compared
    (lambda fp: fp["tasks"]["kind"].update(classes=["x", "y", "z"]), None),
])
def test_fingerprint_differences_in_words(change, expected) -> None:
    before = {"modalities": {"tab": {"kind": "vector", "std": [1.0, 2.0], "shape": [2], "vocab_size": None}},
              "tasks": {"kind": {"kind": "multiclass", "classes": ["x", "y", "z"], "dim": 3}}}
    after = {g: {k: dict(v) for k, v in entries.items()} for g, entries in before.items()}
    change(after)
    assert checkpoint.fingerprint_difference(before, after) == expected
