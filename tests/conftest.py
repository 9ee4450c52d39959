"""Shared fixtures: compose configs, train in-process on a tiny budget, run the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from mtmm_train.recipe import TrainRecipe

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"

# A few seconds of CPU: small data, one short epoch, no progress bar.
TINY = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=3",
    "trainer.batch_size=32",
    "dataset.num_train=256",
    "dataset.num_val=128",
    "dataset.num_test=64",
    "logger.progress_bar=false",
    "logger.log_every_n_steps=1",
]


def compose_cfg(overrides: list[str] | None = None) -> DictConfig:
    """Compose ``configs/train.yaml`` with ``overrides`` (as the CLI would, without running)."""
    with initialize_config_module(config_module="mtmm_train.configs", version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides or []))


def train(output_dir: Path, overrides: list[str] | None = None, tiny: bool = True) -> TrainRecipe:
    """Compose, set up and train in this process; return the recipe (metrics in ``recipe.best``)."""
    cfg = compose_cfg((TINY if tiny else []) + list(overrides or []))
    recipe = TrainRecipe(cfg, output_dir)
    recipe.setup()
    recipe.train()
    return recipe


def run_cli(args: list[str], cwd: Path, module: str = "mtmm_train", timeout: int = 300,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m <module> <args>`` (a script: ``module=""``) in ``cwd`` on the CPU; capture its output."""
    full_env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT), **(env or {})}
    command = [sys.executable, "-m", module, *args] if module else [sys.executable, *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Run a test on one torch thread: tiny models are faster so, and do not fight other jobs for the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny() -> list[str]:
    """The tiny-budget overrides, for tests that build their own command lines."""
    return list(TINY)
