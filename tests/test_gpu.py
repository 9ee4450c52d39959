"""CUDA-only checks, run by scripts/gpu_check.sh (deselected elsewhere by ``-m 'not gpu'``)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import train

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
