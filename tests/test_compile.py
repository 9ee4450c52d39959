"""trainer.compile trains the same model as eager mode, whatever the balancer.

A wholly compiled model hands back ``shared`` beside the predictions, not before them, so a
balancer that differentiates the losses with respect to ``shared`` would see no gradient: UPGrad,
MGDA and GradNorm would silently train as static weights under ``trainer.compile=true``. For
them the recipe compiles the encoders and fusion only (``CompiledRepresentation``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import train
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mtmm_train.model import CompiledRepresentation
from mtmm_train.recipe import TrainRecipe
from mtmm_train.tensorboard import event_dir

SMALL = ["modalities=[tabular]", "trainer.limit_train_batches=4"]


def parameters(recipe: TrainRecipe) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in recipe.model.parameters()])


def scalar_tags(run: Path) -> set[str]:
    acc = EventAccumulator(str(event_dir(run)))
    acc.Reload()
    return set(acc.Tags()["scalars"])


@pytest.mark.parametrize("overrides", [
    ["balancer=upgrad", "logger.grad_cosine_every_n_steps=1"],
    ["balancer=mgda", "mtl=mmoe"],
    ["balancer=gradnorm", "fusion=attention"],
], ids=["upgrad", "mgda-mmoe", "gradnorm"])
def test_compiled_shared_gradient_balancers_train_as_eager(overrides: list[str], tmp_path: Path,
                                                           one_thread: None) -> None:
    eager = train(tmp_path / "eager", SMALL + overrides)
    static = train(tmp_path / "static", SMALL + [o for o in overrides if not o.startswith("balancer=")])
    compiled = train(tmp_path / "compiled", SMALL + overrides + ["trainer.compile=true"])
    assert isinstance(compiled.forward_model, CompiledRepresentation)
    assert not torch.allclose(parameters(eager), parameters(static), atol=1e-5)  # the balancer matters here
    assert torch.allclose(parameters(compiled), parameters(eager), atol=1e-4)
    assert compiled.best["value"] == pytest.approx(eager.best["value"], rel=1e-4)
    if "logger.grad_cosine_every_n_steps=1" in overrides:  # cosines need the gradients at `shared` too
        cosines = {t for t in scalar_tags(tmp_path / "compiled") if t.startswith("train/grad_cosine/")}
        assert cosines and cosines == {t for t in scalar_tags(tmp_path / "eager") if t.startswith("train/grad_cosine/")}


def test_static_weights_compile_the_whole_model(tmp_path: Path, one_thread: None) -> None:
    eager = train(tmp_path / "eager", SMALL)
    compiled = train(tmp_path / "compiled", SMALL + ["trainer.compile=true"])
    assert not isinstance(compiled.forward_model, CompiledRepresentation)
    assert compiled.forward_model is not compiled.model  # torch.compile's wrapper
    assert torch.allclose(parameters(compiled), parameters(eager), atol=1e-4)


def test_parameter_space_aggregation_runs_eagerly_under_compile(tmp_path: Path, one_thread: None,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    # torchjd's vmap cannot run a compiled backward: a warning, and the eager model.
    overrides = SMALL + ["balancer=upgrad", "balancer.mode=parameters"]
    eager = train(tmp_path / "eager", overrides)
    compiled = train(tmp_path / "compiled", overrides + ["trainer.compile=true"])
    assert compiled.forward_model is compiled.model
    assert "trainer.compile=true is ignored" in caplog.text
    assert torch.equal(parameters(compiled), parameters(eager))
