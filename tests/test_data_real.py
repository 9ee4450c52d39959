"""Built-in real datasets: each experiment trains a few epochs and clearly beats a trivial baseline."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, compose_cfg

from mtmm_train.data.av_digits import build_clips
from mtmm_train.errors import UserError
from mtmm_train.recipe import TrainRecipe

QUIET = ["logger.progress_bar=false", "logger.tensorboard=false"]


def train_experiment(tmp_path: Path, overrides: list[str]) -> TrainRecipe:
    recipe = TrainRecipe(compose_cfg(QUIET + overrides), tmp_path)
    recipe.setup()
    recipe.train()
    return recipe


def majority_accuracy(recipe: TrainRecipe, task: str) -> float:
    """Validation accuracy of always predicting the training split's most frequent class."""
    train, val = recipe.data.splits["train"], recipe.data.splits["val"]
    y = train.targets[task][train.labeled[task]].long()
    top = torch.bincount(y).argmax()
    y_val = val.targets[task][val.labeled[task]].long()
    return float((y_val == top).float().mean())


def test_penguins_experiment_beats_the_baselines(tmp_path: Path) -> None:
    recipe = train_experiment(tmp_path, ["experiment=penguins", "trainer.max_epochs=12"])
    m = recipe.best["metrics"]
    assert m["val/species/accuracy"] > majority_accuracy(recipe, "species") + 0.4  # majority: about 0.45
    assert m["val/sex/accuracy"] > majority_accuracy(recipe, "sex") + 0.2
    assert m["val/island/accuracy"] > majority_accuracy(recipe, "island") + 0.05
    assert m["val/body_mass/r2"] > 0.6  # the mean predictor has R^2 <= 0
    assert recipe.data.tasks["sex"].kind == "binary" and not recipe.data.splits["train"].labeled["sex"].all()


@pytest.mark.slow
def test_diamonds_experiment_beats_the_baselines_on_a_subsample(tmp_path: Path) -> None:
    recipe = train_experiment(tmp_path, ["experiment=diamonds", "dataset.max_rows=4000", "trainer.max_epochs=8",
                                         "trainer.batch_size=128"])
    m = recipe.best["metrics"]
    assert sum(len(s) for s in recipe.data.splits.values()) == 4000
    assert m["val/price/r2"] > 0.9  # log-price from carat and dimensions
    assert m["val/cut/accuracy"] > majority_accuracy(recipe, "cut") + 0.1


@pytest.mark.slow
@pytest.mark.usefixtures("espeak_ng")  # skipped without espeak-ng, except in CI (MTMM_REQUIRE_SYSTEM_DEPS=1)
def test_av_digits_experiment_beats_the_baselines(tmp_path: Path) -> None:
    small = ["dataset.male_voices=[en-us+m3]", "dataset.female_voices=[en-us+f2]", "dataset.speeds=[120,220]",
             "dataset.pitches=[50]"]
    recipe = train_experiment(tmp_path, ["experiment=av_digits", f"dataset.cache_dir={tmp_path}", *small,
                                         "dataset.audio_noise=1.0", "dataset.max_frames=60", "trainer.max_epochs=6",
                                         "trainer.batch_size=128"])
    m = recipe.best["metrics"]
    assert m["val/digit/accuracy"] > majority_accuracy(recipe, "digit") + 0.5  # majority: about 0.1
    assert m["val/gender/auroc"] > 0.8
    assert m["val/speed/r2"] > 0.5
    clips = torch.load(next((tmp_path / "av_digits").glob("clips-*.pt")), weights_only=True)
    assert len(clips["waves"]) == 2 * 2 * 1 * 10 and clips["gender"].tolist().count(1) == 20


def test_a_missing_optional_dependency_says_what_to_install(monkeypatch: pytest.MonkeyPatch,
                                                            tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "palmerpenguins", None)  # makes `import palmerpenguins` fail
    needs = r"dataset=penguins needs .*'palmerpenguins'.*pip install 'mtmm-train\[penguins\]'"
    with pytest.raises(UserError, match=needs):
        TrainRecipe(compose_cfg(QUIET + ["dataset=penguins"]), tmp_path).setup()
    monkeypatch.setattr("mtmm_train.data.av_digits.shutil.which", lambda name: None)
    with pytest.raises(UserError, match=r"espeak-ng, which is not installed; install it with: apt-get install"):
        TrainRecipe(compose_cfg(QUIET + ["dataset=av_digits", f"dataset.cache_dir={tmp_path}"]), tmp_path).setup()


@pytest.mark.usefixtures("espeak_ng")
def test_av_digits_clips_are_built_deterministically_by_the_script(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("build_av_digits", ROOT / "scripts" / "build_av_digits.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    few = ["dataset.male_voices=[en-us+m1]", "dataset.female_voices=[en-us+f4]", "dataset.speeds=[160]",
           "dataset.pitches=[40]"]
    monkeypatch.setenv("MTMM_CACHE_DIR", str(tmp_path / "a"))
    assert script.main(few) == 0
    again = build_clips(str(tmp_path / "b"), ["en-us+m1"], ["en-us+f4"], [160], [40])
    clips = [torch.load(next((tmp_path / d / "av_digits").glob("clips-*.pt")), weights_only=True) for d in "ab"]
    assert again.parent == tmp_path / "b" / "av_digits" and len(clips[0]["waves"]) == 20
    assert all(torch.equal(a, b) for a, b in zip(clips[0]["waves"], clips[1]["waves"], strict=True))
    assert script.main([*few, "dataset.female_voices=[]"]) == 2  # the gender task needs both genders
