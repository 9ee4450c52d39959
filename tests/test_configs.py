"""Every config file composes, and every component config builds a model that trains one step."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import CONFIGS, TINY, compose_cfg

from mtmm_train.errors import UserError
from mtmm_train.recipe import TrainRecipe

SYNTHETIC_MODALITIES = ("image", "audio", "text", "tabular")
SYNTHETIC_TASKS = ("category", "match", "tags", "score")
ALL_FILES = sorted(p for p in CONFIGS.rglob("*.yaml") if p.name != "train.yaml")
# Groups in train.yaml's defaults list are chosen with group=name; optional ones with +group=name.
DEFAULT_GROUPS = {next(iter(d)) for d in yaml.safe_load((CONFIGS / "train.yaml").read_text())["defaults"]
                  if isinstance(d, dict)}


def override_for(path: Path, target: str | None = None) -> str:
    """The command-line override that selects ``path`` (placed on ``target`` for encoders/heads)."""
    group = path.parent.relative_to(CONFIGS).as_posix()
    if group == "encoder":
        return f"encoder@model.encoders.{target}={path.stem}"
    if group == "head":
        return f"head@model.heads.{target}={path.stem}"
    if group.startswith("hydra/"):  # Hydra's own groups (hydra/launcher, ...) are always in its defaults list
        return f"{group}={path.stem}"
    return f"{'' if group in DEFAULT_GROUPS else '+'}{group}={path.stem}"


def test_there_are_configs_in_every_group() -> None:
    groups = {p.parent.relative_to(CONFIGS).as_posix() for p in ALL_FILES}
    for expected in ("dataset", "encoder", "fusion", "mtl", "balancer", "head", "optimizer", "scheduler",
                     "trainer", "logger", "paths", "debug", "experiment"):
        assert expected in groups, expected


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: p.relative_to(CONFIGS).as_posix())
def test_every_config_composes(path: Path) -> None:
    target = {"encoder": "image", "head": "category"}.get(path.parent.name)
    cfg = compose_cfg([override_for(path, target)])
    assert "trainer" in cfg and "model" in cfg


def _setup(overrides: list[str], tmp_path: Path) -> TrainRecipe:
    recipe = TrainRecipe(compose_cfg(TINY + overrides), tmp_path)
    recipe.setup()
    return recipe


CORE_GROUPS = ("optimizer", "scheduler", "trainer", "logger", "paths", "debug")


@pytest.mark.parametrize("path", [p for p in ALL_FILES if p.parent.name in CORE_GROUPS],
                         ids=lambda p: p.relative_to(CONFIGS).as_posix())
def test_core_configs_build_and_train(path: Path, tmp_path: Path) -> None:
    recipe = _setup([override_for(path)], tmp_path)
    value = recipe.train()
    assert value == value  # not NaN


@pytest.mark.parametrize("path", [p for p in ALL_FILES if p.parent.name == "encoder"], ids=lambda p: p.stem)
def test_every_encoder_config_builds_on_a_modality_it_reads(path: Path, tmp_path: Path) -> None:
    built = []
    for modality in SYNTHETIC_MODALITIES:
        try:
            recipe = _setup([override_for(path, modality)], tmp_path)
        except UserError as e:  # a clear refusal for an input kind it does not read
            assert f"model.encoders.{modality}" in str(e)
            continue
        built.append(modality)
        assert type(recipe.model.encoders[modality]).__name__ in str(path.read_text())
    assert built, f"{path.stem} reads none of the synthetic modalities"


@pytest.mark.parametrize("path", [p for p in ALL_FILES if p.parent.name == "head"], ids=lambda p: p.stem)
def test_every_head_config_builds(path: Path, tmp_path: Path) -> None:
    recipe = _setup([override_for(path, "score")], tmp_path)
    assert recipe.train() == recipe.best["value"]


@pytest.mark.parametrize("experiment", ["penguins", "reference_small"])
def test_debug_fast_works_with_other_datasets(experiment: str, tmp_path: Path) -> None:
    overrides = [f"experiment={experiment}", "debug=fast", "logger.progress_bar=false", "logger.tensorboard=false"]
    if experiment == "reference_small":  # keep the CPU cost down: small batches of the big model
        overrides += ["trainer.batch_size=4", "trainer.eval_batch_size=64", "dataset.num_train=32",
                      "dataset.num_val=8"]
    recipe = TrainRecipe(compose_cfg(overrides), tmp_path)
    recipe.setup()
    recipe.train()
    assert recipe.step == min(5, recipe.steps_per_epoch)
