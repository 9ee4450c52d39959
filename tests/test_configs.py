"""Every config file composes, and every component config builds a model that trains one step."""

from __future__ import annotations

import dataclasses
import enum
import importlib
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import CONFIGS, TINY, compose_cfg
from families import FAMILIES, classes, configs, target_of
from hydra import compose, initialize_config_module
from omegaconf import DictConfig, OmegaConf
from tiny_backbones import bert_folder
from torch import nn

from mtmm_train.config import SCHEMAS, fill_settings, typed
from mtmm_train.errors import UserError
from mtmm_train.recipe import TrainRecipe

# The synthetic dataset's modalities: its config gives each a default encoder.
SYNTHETIC_MODALITIES = [next(iter(d)).rsplit(".", 1)[1] for d in
                        yaml.safe_load((CONFIGS / "dataset" / "synthetic.yaml").read_text())["defaults"]
                        if isinstance(d, dict) and next(iter(d)).startswith("/encoder@")]
ALL_FILES = sorted(p for p in CONFIGS.rglob("*.yaml") if p.name != "train.yaml")
DEFAULTS = yaml.safe_load((CONFIGS / "train.yaml").read_text())["defaults"]
# Groups in train.yaml's defaults list are chosen with group=name; optional ones with +group=name.
DEFAULT_GROUPS = {next(iter(d)) for d in DEFAULTS if isinstance(d, dict)}
# Groups whose files go to a place of the user's choosing (group@place=name), and the place a test puts them.
PLACES = {"encoder": "model.encoders.image", "head": "model.heads.category", "reader": "dataset.modalities.extra",
          "target": "dataset.tasks.extra"}


def group_of(path: Path) -> str:
    return path.parent.relative_to(CONFIGS).as_posix()


def override_for(path: Path, target: str | None = None) -> str:
    """The command-line override that selects ``path`` (placed on ``target`` for encoders/heads)."""
    group = group_of(path)
    if group == "encoder":
        return f"encoder@model.encoders.{target}={path.stem}"
    if group == "head":
        return f"head@model.heads.{target}={path.stem}"
    if group.startswith("hydra/"):  # Hydra's own groups (hydra/launcher, ...) are always in its defaults list
        return f"{group}={path.stem}"
    return f"{'' if group in DEFAULT_GROUPS else '+'}{group}={path.stem}"


def placement(path: Path) -> tuple[list[str], str]:
    """The overrides that compose ``path`` into the training config, and the key its settings land at
    ("" for a global overlay)."""
    group = group_of(path)
    if path.read_text().lstrip().startswith("# @package _global_"):
        return [override_for(path)], ""
    if group in ("reader", "target"):  # a column of the files dataset
        return ["dataset=files", f"+{group}@{PLACES[group]}={path.stem}"], PLACES[group]
    if group in PLACES:
        return [override_for(path, PLACES[group].rsplit(".", 1)[1])], PLACES[group]
    return [override_for(path)], group.replace("/", ".")


def leaves(node: Any, keys: tuple = ()) -> list[tuple[tuple, Any]]:
    """``(keys, value)`` of every value in a YAML mapping (an empty mapping or a list is a value)."""
    if isinstance(node, dict) and node:
        return [leaf for k, v in node.items() for leaf in leaves(v, (*keys, k))]
    return [(keys, node)]


def lookup(node: Any, keys: tuple) -> Any:
    for k in keys:
        if not isinstance(node, dict) or k not in node:
            return "<absent>"
        node = node[k]
    return node.name if isinstance(node, enum.Enum) else node  # Hydra's structured configs: hydra.mode


def test_every_group_has_configs_and_every_default_exists() -> None:
    folders = {p.parent for p in CONFIGS.rglob("*") if p.is_file() and "__pycache__" not in p.parts} - {CONFIGS}
    assert not [f for f in folders if not list(f.glob("*.yaml"))], "a config folder without configs"
    for entry in DEFAULTS:
        if isinstance(entry, dict):
            (group, option), = entry.items()
            if option is not None:
                assert (CONFIGS / group / f"{option}.yaml").is_file(), (group, option)
            else:  # an optional group: nothing by default, its files chosen with group=name
                assert list((CONFIGS / group).glob("*.yaml")), group


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: p.relative_to(CONFIGS).as_posix())
def test_every_config_composes(path: Path) -> None:
    """Each file composes into the training config, and every setting it holds is there, at its place."""
    overrides, key = placement(path)
    with initialize_config_module(config_module="mtmm_train.configs", version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    node = OmegaConf.select(cfg, key) if key else cfg
    assert isinstance(node, DictConfig), f"{overrides} put nothing at '{key}'"
    composed = OmegaConf.to_container(node, resolve=False)
    own = {k: v for k, v in (yaml.safe_load(path.read_text()) or {}).items() if k != "defaults"}
    assert own, f"{path} holds no settings"
    for keys, value in leaves(own):
        found = lookup(composed, keys)
        where = ".".join(map(str, (key, *keys) if key else keys))
        if isinstance(value, dict):  # an empty mapping: others (the defaults list, the user) fill it
            assert isinstance(found, dict), f"{path.relative_to(CONFIGS)}: {where} is {found!r}"
        else:
            assert found == value, f"{path.relative_to(CONFIGS)}: {where} is {found!r}, not {value!r}"


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_class_of_a_family_has_a_config_and_every_config_a_class(family: str) -> None:
    """``mtmm_train/<package>/<name>.py`` defines a member (one class) and ``configs/<group>/<name>.yaml`` builds it."""
    fam = FAMILIES[family]
    found, nodes = classes(fam), configs(fam.group)
    assert found and nodes, family
    no_config, no_class = sorted(set(found) - set(nodes)), sorted(set(nodes) - set(found))
    assert not no_config, f"{family} modules without a configs/{fam.group}/<module>.yaml: {no_config}"
    assert not no_class, f"configs/{fam.group}/<name>.yaml without a {fam.package}.<name> module: {no_class}"
    for name, cls in found.items():
        assert nodes[name]._target_ == target_of(cls), (name, nodes[name]._target_)


def test_every_head_config_builds_a_head_module() -> None:
    for name, node in configs("head").items():
        module, _, attr = node._target_.rpartition(".")
        cls = getattr(importlib.import_module(module), attr)
        assert isinstance(cls, type) and issubclass(cls, nn.Module) and module == "mtmm_train.tasks.heads", name


@pytest.mark.parametrize("key", sorted(SCHEMAS))
def test_each_typed_group_holds_exactly_its_schema(key: str) -> None:
    """Every file of ``trainer/`` (``logger/``) sets every field of its schema, and nothing else."""
    names = {f.name for f in dataclasses.fields(SCHEMAS[key])}
    for path in sorted((CONFIGS / key).glob("*.yaml")):
        assert set(yaml.safe_load(path.read_text())) == names, path.name
        typed(OmegaConf.create({key: OmegaConf.load(path)}), key)


def test_an_older_config_gets_todays_defaults_for_the_settings_it_lacks() -> None:
    stored = OmegaConf.create(OmegaConf.to_container(compose_cfg()))  # as a checkpoint keeps it: plain data
    del stored.trainer["nonfinite"], stored.logger["grad_cosine_every_n_steps"]
    stored.trainer.max_epochs = 3
    with pytest.raises(UserError, match=r"trainer\.nonfinite has no value"):
        typed(stored, "trainer")
    cfg = fill_settings(stored, {"trainer": "default", "logger": "none"})
    assert typed(cfg, "trainer").nonfinite == "warn" and typed(cfg, "trainer").max_epochs == 3
    assert typed(cfg, "logger").grad_cosine_every_n_steps is None and typed(cfg, "logger").tensorboard is True
    cfg.trainer.max_epoch = 3  # a stored setting this version does not know stays an error
    with pytest.raises(UserError, match=r"trainer\.max_epoch is not a setting of trainer; did you mean"):
        typed(fill_settings(cfg), "trainer")


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
    # Pretrained backbones' defaults name models to download: tiny ones instead (tests/tiny_backbones.py).
    offline = {"timm": ["model_name=test_vit", "pretrained=false"],
               "hf": [f"model_name={bert_folder(tmp_path / 'bert', max_positions=64)}"]}.get(path.stem, [])
    if path.stem == "frames":  # video is no synthetic modality: built on a clip spec (a CLI run: tests/test_video.py)
        import torch

        from mtmm_train.batch import ModalitySpec
        from mtmm_train.instantiate import build

        clip = ModalitySpec("clip", (4, 3, 16, 16), "video", info={"frames": 2, "pool": 2})
        encoder = build(OmegaConf.load(path), "model.encoders.clip", modality=clip)
        assert encoder(torch.zeros(2, 4, 3, 16, 16, dtype=torch.uint8)).shape == (2, encoder.out_dim)
        return
    for modality in SYNTHETIC_MODALITIES:
        try:
            recipe = _setup([override_for(path, modality), *(f"model.encoders.{modality}.{o}" for o in offline)],
                            tmp_path)
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
