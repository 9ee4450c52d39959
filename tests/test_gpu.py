"""CUDA-only checks, run by scripts/gpu_check.sh (deselected elsewhere by ``-m 'not gpu'``)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch
from conftest import compose_cfg, train

from mtmm_train.recipe import TrainRecipe

pytestmark = pytest.mark.gpu



@pytest.fixture(autouse=True)
def _needs_cuda() -> None:
    # Selected explicitly (-m gpu) on a machine without CUDA: fail loudly, never skip.
    if not torch.cuda.is_available():
        pytest.fail("tests marked gpu need a CUDA device", pytrace=False)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_training_on_cuda(precision: str, tmp_path: Path) -> None:
    recipe = train(tmp_path, ["trainer.device=cuda", f"trainer.precision={precision}", "trainer.max_epochs=2"])
    assert next(recipe.model.parameters()).device.type == "cuda"
    assert recipe.scaler.is_enabled() == (precision == "fp16")
    assert math.isfinite(recipe.best["value"])
    assert recipe.step == 6


def test_compiled_training_on_cuda(tmp_path: Path) -> None:
    recipe = train(tmp_path, ["trainer.device=cuda", "trainer.precision=bf16", "trainer.compile=true"])
    assert recipe.forward_model is not recipe.model
    assert math.isfinite(recipe.best["value"])


def test_cuda_graphs_training_on_cuda(tmp_path: Path) -> None:
    # trainer.compile_mode=reduce-overhead: torch.compile records the model's kernels as CUDA graphs.
    recipe = train(tmp_path, ["trainer.device=cuda", "trainer.precision=bf16", "trainer.compile=true",
                              "trainer.compile_mode=reduce-overhead", "trainer.max_epochs=2"])
    assert recipe.step == 6 and math.isfinite(recipe.best["value"])


def test_checkpoint_written_on_gpu_resumes_on_cpu(tmp_path: Path) -> None:
    gpu = train(tmp_path, ["trainer.device=cuda", "trainer.max_epochs=1"])
    assert gpu.step == 3
    cpu = train(tmp_path, ["trainer.device=cpu", "trainer.max_epochs=2", "trainer.resume=auto"])
    assert cpu.resumed_from is not None and cpu.step == 6
    assert next(cpu.model.parameters()).device.type == "cpu"
    assert math.isfinite(cpu.best["value"])


def cuda_steps(tmp_path: Path, overrides: list[str], steps: int = 3) -> list[warnings.WarningMessage]:
    """Run the loop's step functions on CUDA after a warm-up, with torch's sync debug mode on
    (``tests/test_host_sync.py`` checks the same on the CPU); the synchronisations it reported."""
    cfg = compose_cfg(["trainer.device=cuda", "trainer.precision=bf16", "trainer.batch_size=32",
                       "dataset.num_train=512", "logger.progress_bar=false", *overrides])
    recipe = TrainRecipe(cfg, tmp_path)
    recipe.setup()
    batches = recipe.train_loader.epoch(0)
    for _ in range(2):  # compile, the optimizer's state, the epoch's order on the device
        recipe.micro_step(next(batches))
        recipe.optimizer_step()
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(steps):
                recipe.micro_step(next(batches))
                recipe.optimizer_step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return [w for w in seen if "synchronizing" in str(w.message)]


@pytest.mark.parametrize("overrides", [[], ["trainer.compile=true"]], ids=["eager", "compiled"])
def test_training_step_never_waits_for_the_gpu(overrides: list[str], tmp_path: Path) -> None:
    syncs = cuda_steps(tmp_path, overrides)
    assert not syncs, [f"{w.filename}:{w.lineno} {w.message}" for w in syncs]


def test_gradient_aggregation_waits_once_per_step(tmp_path: Path) -> None:
    # The Gramian's copy to the host, and the weights' copy back (which finds the queue empty).
    syncs = cuda_steps(tmp_path, ["balancer=upgrad"], steps=3)
    assert len(syncs) <= 2 * 3, [f"{w.filename}:{w.lineno} {w.message}" for w in syncs]
