"""CUDA checks, run by scripts/gpu_check.sh (tests marked ``gpu``: deselected elsewhere by ``-m 'not gpu'``).

The backbone checks (a bf16 LoRA step, a frozen-feature cache epoch) are parametrized over devices: their
``cpu`` variant runs in every CI run and proves the same code path here; their ``cuda`` variant is marked gpu.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import TINY, compose_cfg, train
from tiny_backbones import bert_folder, timm_file
from torch import nn

from mtmm_train import builders
from mtmm_train.recipe import TrainRecipe

#: Each backbone check on the CPU (every CI run) and on CUDA (marked gpu: scripts/gpu_check.sh).
DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=pytest.mark.gpu)]


@pytest.fixture(autouse=True)
def _needs_cuda(request: pytest.FixtureRequest) -> None:
    # Selected explicitly (-m gpu) on a machine without CUDA: fail loudly, never skip.
    if request.node.get_closest_marker("gpu") and not torch.cuda.is_available():
        pytest.fail("tests marked gpu need a CUDA device", pytrace=False)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_training_on_cuda(precision: str, tmp_path: Path) -> None:
    recipe = train(tmp_path, ["trainer.device=cuda", f"trainer.precision={precision}", "trainer.max_epochs=2"])
    assert next(recipe.model.parameters()).device.type == "cuda"
    assert recipe.scaler.is_enabled() == (precision == "fp16")
    assert math.isfinite(recipe.best["value"])
    assert recipe.step == 6


@pytest.mark.gpu
def test_compiled_training_on_cuda(tmp_path: Path) -> None:
    recipe = train(tmp_path, ["trainer.device=cuda", "trainer.precision=bf16", "trainer.compile=true"])
    assert recipe.forward_model is not recipe.model
    assert math.isfinite(recipe.best["value"])


@pytest.mark.gpu
def test_cuda_graphs_training_on_cuda(tmp_path: Path) -> None:
    # trainer.compile_mode=reduce-overhead: torch.compile records the model's kernels as CUDA graphs.
    recipe = train(tmp_path, ["trainer.device=cuda", "trainer.precision=bf16", "trainer.compile=true",
                              "trainer.compile_mode=reduce-overhead", "trainer.max_epochs=2"])
    assert recipe.step == 6 and math.isfinite(recipe.best["value"])


@pytest.mark.gpu
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


@pytest.mark.gpu
@pytest.mark.parametrize("overrides", [[], ["trainer.compile=true"]], ids=["eager", "compiled"])
def test_training_step_never_waits_for_the_gpu(overrides: list[str], tmp_path: Path) -> None:
    syncs = cuda_steps(tmp_path, overrides)
    assert not syncs, [f"{w.filename}:{w.lineno} {w.message}" for w in syncs]


@pytest.mark.gpu
def test_gradient_aggregation_waits_once_per_step(tmp_path: Path) -> None:
    # The Gramian's copy to the host, and the weights' copy back (which finds the queue empty).
    syncs = cuda_steps(tmp_path, ["balancer=upgrad"], steps=3)
    assert len(syncs) <= 2 * 3, [f"{w.filename}:{w.lineno} {w.message}" for w in syncs]


# ---------------------------------------------------------------------- pretrained backbones on a device
@pytest.fixture(scope="module")
def saved_backbones(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """timm's ``test_vit`` (random weights, a .safetensors file) and a tiny BERT folder, written here (no download)."""
    root = tmp_path_factory.mktemp("backbones")
    timm_file(root / "vit.safetensors", "test_vit")
    return {"vit": root / "vit.safetensors", "bert": bert_folder(root / "bert")}


def on_device(device: str, saved: dict[str, Path], image: list[str] = (), text: list[str] = ()) -> list[str]:
    """Synthetic 32x32 images through the saved ViT and token ids through the saved BERT, in bf16 on ``device``;
    ``image``/``text``: the fine-tuning settings of each backbone."""
    return [*TINY, f"trainer.device={device}", "trainer.precision=bf16", "logger.tensorboard=false",
            "modalities=[image,text,tabular]", "tasks=[category,tags]", "dataset.image_size=32",
            "dataset.vocab_size=60", "encoder@model.encoders.image=timm", "model.encoders.image.model_name=test_vit",
            f"model.encoders.image.pretrained={saved['vit']}", "encoder@model.encoders.text=hf",
            f"model.encoders.text.model_name={saved['bert']}", *(f"model.encoders.image.{s}" for s in image),
            *(f"model.encoders.text.{s}" for s in text)]


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def moved(before: dict[str, torch.Tensor], module: nn.Module) -> set[str]:
    return {k for k, v in module.state_dict().items() if not torch.equal(before[k], v)}


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_lora_step_trains_only_the_adapters(device: str, saved_backbones: dict[str, Path], tmp_path: Path,
                                                 one_thread: None) -> None:
    lora = ["adapter=lora", "lora.r=4"]
    cfg = compose_cfg(on_device(device, saved_backbones, image=[*lora, "lora.target_modules=[qkv,fc1]"],
                                text=[*lora, "lora.target_modules=[query,value]"]))
    recipe = TrainRecipe(cfg, tmp_path)
    recipe.setup()
    backbones = {m: recipe.model.encoders[m].backbone for m in ("image", "text")}
    assert all(p.device.type == device for b in backbones.values() for p in b.parameters())
    before = {m: snapshot(b) for m, b in backbones.items()}
    dtypes: dict[str, set[torch.dtype]] = {m: set() for m in backbones}
    for m, backbone in backbones.items():  # what the backbones' linear layers compute in
        for layer in backbone.modules():
            if isinstance(layer, nn.Linear):
                layer.register_forward_hook(lambda _l, _i, out, m=m: dtypes[m].add(out.dtype))
    batches = recipe.train_loader.epoch(0)
    for _ in range(2):
        out = recipe.micro_step(next(batches))
        recipe.optimizer_step()
        assert torch.isfinite(out.losses).all(), out.losses
    assert dtypes == {"image": {torch.bfloat16}, "text": {torch.bfloat16}}  # autocast reached both backbones
    for m, backbone in backbones.items():
        changed = moved(before[m], backbone)
        adapters = {k for k in before[m] if ".lora_" in k}
        assert adapters and {k for k in changed if ".lora_B." in k}, m  # lora_B starts at zero: it moved
        assert changed <= adapters, (m, sorted(changed - adapters)[:5])  # no weight of the backbone itself


class EncoderCalls:
    """Counts the calls of the encoders of every model the builders make (``forward`` and ``tokens``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, modalities: tuple[str, ...]) -> None:
        self.calls = 0
        build_model = builders.build_model

        def counted_model(*args: Any, **kwargs: Any) -> nn.Module:
            model = build_model(*args, **kwargs)
            for m in modalities:
                for name in ("forward", "tokens"):
                    original = getattr(model.encoders[m], name)
                    setattr(model.encoders[m], name, self.counted(original))
            return model

        monkeypatch.setattr(builders, "build_model", counted_model)

    def counted(self, original: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return original(*args, **kwargs)
        return call


@pytest.mark.parametrize("device", DEVICES)
def test_frozen_cache_epoch_reads_features_that_match_the_encoders(device: str, saved_backbones: dict[str, Path],
                                                                   tmp_path: Path, one_thread: None,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    overrides = [*on_device(device, saved_backbones, image=["freeze=true"], text=["freeze=true"]),
                 f"model.feature_cache_dir={cache}", "model.feature_cache=auto"]
    calls = EncoderCalls(monkeypatch, ("image", "text"))
    first = TrainRecipe(compose_cfg(overrides), tmp_path / "first")
    first.setup()  # computes the features on the device and writes them
    assert calls.calls > 0 and first.model.precomputed == {"image", "text"}
    entries = sorted((cache / "features").iterdir())
    assert len(entries) == 2 and all(sorted(p.name for p in e.iterdir()) == ["test.npy", "train.npy", "val.npy"]
                                     for e in entries)

    calls.calls = 0
    second = TrainRecipe(compose_cfg(overrides), tmp_path / "second")
    second.setup()
    assert second.model.precomputed == {"image", "text"}
    second.train()  # one epoch (3 steps) from the cache
    assert calls.calls == 0  # neither the cache hit nor the epoch ran a backbone
    assert second.step == 3 and math.isfinite(second.best["value"])

    # The features on the device are the encoders' outputs: recomputed in fp32 from the raw inputs.
    plain = TrainRecipe(compose_cfg([*overrides, "model.feature_cache=off", "trainer.precision=32"]),
                        tmp_path / "plain")
    plain.setup()
    split, raw = second.splits["train"], plain.splits["train"]
    for m in ("image", "text"):
        cached = split.inputs[m]
        assert cached.device.type == device and cached.dtype == torch.float32, m
        rows = raw.present[m].nonzero().squeeze(1)[:64]
        encoder = plain.model.encoders[m].eval()
        with torch.no_grad():
            ref = encoder(raw.inputs[m][rows]).float()
        got = cached[rows.to(cached.device)]
        assert got.shape == ref.shape and got.abs().sum() > 0, m
        torch.testing.assert_close(got, ref, rtol=0.05, atol=0.05 * float(ref.abs().max()))  # bf16 vs fp32
