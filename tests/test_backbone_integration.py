"""Everything else keeps working with pretrained backbones (a tiny timm ViT and a tiny BERT-like model):
missing modalities, modality dropout, bf16/fp16 autocast, ``trainer.compile``, every balancer, resume
after ``kill -9``, ``mtmm-eval``'s subsets and corruptions on ``uint8`` images, and torchrun.

Every model is tiny and written by the test (``tests/tiny_backbones.py``); nothing is downloaded.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import TINY, compose_cfg, run_cli, train
from families import FAMILIES, classes
from PIL import Image
from test_crash_safety import crash_and_resume
from test_distributed import TORCHRUN, assert_same_metrics, final_metrics
from tiny_backbones import bert_folder
from torch import nn

from mtmm_train import builders
from mtmm_train.evaluate import EvalConfig, corrupt, evaluate_checkpoint, random_draws
from mtmm_train.model import MultiModalModel
from mtmm_train.recipe import TrainRecipe

pytestmark = pytest.mark.usefixtures("one_thread")

ONE_THREAD = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bert_folder(tmp_path_factory.mktemp("bert") / "bert")


def backbones(bert: Path, image: list[str] = (), text: list[str] = ()) -> list[str]:
    """Synthetic images (32x32, float) through timm's ``test_vit`` and token ids through the tiny BERT; 10% of
    the samples miss each modality. ``image``/``text``: fine-tuning settings of each encoder."""
    return ["modalities=[image,text,tabular]", "tasks=[category,tags,score]", "dataset.image_size=32",
            "dataset.vocab_size=60", "logger.tensorboard=false", "model.feature_cache=off",
            "encoder@model.encoders.image=timm", "model.encoders.image.model_name=test_vit",
            "model.encoders.image.pretrained=false",
            "encoder@model.encoders.text=hf", f"model.encoders.text.model_name={bert}",
            "model.encoders.text.pretrained=false",
            *(f"model.encoders.image.{s}" for s in image), *(f"model.encoders.text.{s}" for s in text)]


LORA_VIT = ["adapter=lora", "lora.r=4", "lora.target_modules=[qkv,fc1]"]
LORA_BERT = ["adapter=lora", "lora.r=4", "lora.target_modules=[query,value]"]


class RowCounter:
    """Counts the rows that reach an encoder (``forward`` and ``tokens``), and those that are all zeros (absent
    rows are zeros in the synthetic data)."""

    def __init__(self, encoder: nn.Module) -> None:
        self.rows = self.zero_rows = 0
        for name in ("forward", "tokens"):
            original = getattr(encoder, name)

            def counted(x: torch.Tensor, _original: Any = original) -> torch.Tensor:
                self.rows += x.shape[0]
                self.zero_rows += int((x.flatten(1) == 0).all(1).sum())
                return _original(x)

            setattr(encoder, name, counted)


def built(overrides: list[str]) -> tuple[MultiModalModel, Any]:
    cfg = compose_cfg(TINY + overrides)
    builders.seed_everything(0)
    data = builders.build_data(cfg)
    return builders.build_model(cfg, data, builders.build_tasks(data)), data


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def moved(before: dict[str, torch.Tensor], module: nn.Module) -> set[str]:
    return {k for k, v in module.state_dict().items() if not torch.equal(before[k], v)}


# ---------------------------------------------------------------------- missing modalities, modality dropout
@pytest.mark.parametrize("fusion", ["concat", "attention", "transformer"])
def test_absent_rows_never_reach_a_backbone_and_the_fusion_masks_them(fusion: str, bert: Path) -> None:
    model, data = built([*backbones(bert), f"fusion={fusion}"])
    counters = {m: RowCounter(model.encoders[m]) for m in ("image", "text")}
    split = data.splits["val"]
    batch = split.batch(torch.arange(64))
    absent = {m: ~batch.present[m] for m in counters}
    assert all(0 < int(a.sum()) < 64 for a in absent.values())  # a batch that mixes both
    model.eval()
    with torch.no_grad():
        preds, _ = model(batch.inputs, batch.present)
    for m, c in counters.items():  # skipped, not zero-filled
        assert (c.rows, c.zero_rows) == (64 - int(absent[m].sum()), 0), m
    # The fusion masks them: whatever an absent row holds, the predictions do not change.
    noisy = dict(batch.inputs)
    noisy["image"] = torch.where(absent["image"].view(-1, 1, 1, 1), torch.rand_like(noisy["image"]), noisy["image"])
    noisy["text"] = torch.where(absent["text"].view(-1, 1), torch.randint_like(noisy["text"], 1, 60), noisy["text"])
    with torch.no_grad():
        again, _ = model(noisy, batch.present)
    for t in preds:
        torch.testing.assert_close(again[t], preds[t], rtol=0, atol=0 if fusion == "concat" else 1e-6)


def test_modality_dropout_skips_the_dropped_rows_too(bert: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, data = built([*backbones(bert), "model.modality_dropout=0.5"])
    seen: list[dict[str, torch.Tensor]] = []
    drop = MultiModalModel.drop_modalities

    def recorded(self: MultiModalModel, present: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        seen.append(drop(self, present))
        return seen[-1]

    monkeypatch.setattr(MultiModalModel, "drop_modalities", recorded)
    counter = RowCounter(model.encoders["image"])
    batch = data.splits["train"].batch(torch.arange(64))
    model.train()
    preds, _ = model(batch.inputs, batch.present)
    sum(p.float().pow(2).mean() for p in preds.values()).backward()
    kept = seen[0]["image"]
    assert int(kept.sum()) < int(batch.present["image"].sum())  # some present images were dropped
    assert counter.rows == int(kept.sum()) and counter.zero_rows == 0
    assert model.encoders["image"].backbone.patch_embed.proj.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------- precision, compile
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_backbones_on_the_cpu(precision: str, bert: Path, tmp_path: Path) -> None:
    overrides = [*backbones(bert, image=LORA_VIT), f"trainer.precision={precision}"]
    recipe = TrainRecipe(compose_cfg(TINY + overrides), tmp_path)
    recipe.setup()
    dtypes: set[torch.dtype] = set()
    dense = recipe.model.encoders["text"].backbone.encoder.layer[0].intermediate.dense
    hook = dense.register_forward_hook(lambda module, args, out: dtypes.add(out.dtype))
    before = snapshot(recipe.model)
    recipe.train()
    hook.remove()
    assert dtypes == {torch.bfloat16 if precision == "bf16" else torch.float16}  # autocast reached the backbone
    assert recipe.scaler.is_enabled() == (precision == "fp16")
    assert all(math.isfinite(v) for v in recipe.best["metrics"].values())
    changed = moved(before, recipe.model)
    assert any(".lora_B." in k for k in changed) and any(k.startswith("encoders.text.backbone") for k in changed)
    assert recipe.step - recipe.skipped_steps >= 1  # fp16: at least one step was not an overflow


def parameters(recipe: TrainRecipe) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in recipe.model.parameters()])


@pytest.mark.slow  # compiling the two backbones takes a minute or more on a cold cache
def test_compile_trains_backbones_as_eager(bert: Path, tmp_path: Path) -> None:
    # Compiled, the encoders see every row (absent rows too: the graph has no host read); the fusion masks
    # them, so the model trains as in eager mode, where they are skipped. SGD: an update is linear in the
    # gradient (Adam would magnify the float rounding of near-zero gradients). No dropout (BERT's is off while
    # frozen): compiled, it would draw its masks for more rows.
    overrides = [*backbones(bert, image=LORA_VIT, text=["freeze=true"]), "optimizer=sgd",
                 "trainer.limit_train_batches=2", "dataset.num_val=32", "trainer.eval_batch_size=32"]
    eager = train(tmp_path / "eager", overrides)
    compiled = train(tmp_path / "compiled", [*overrides, "trainer.compile=true"])
    assert compiled.forward_model is not compiled.model
    torch.testing.assert_close(parameters(compiled), parameters(eager), atol=2e-5, rtol=0)
    assert compiled.best["value"] == pytest.approx(eager.best["value"], rel=1e-4)


# ---------------------------------------------------------------------- every balancer
BALANCERS = sorted(classes(FAMILIES["balancer"]))
CASES = [[f"balancer={b}"] for b in BALANCERS] + [["balancer=upgrad", "balancer.mode=parameters"]]


@pytest.mark.parametrize("overrides", CASES, ids=lambda o: "-".join(v.split("=")[1] for v in o))
def test_every_balancer_trains_a_backbone(overrides: list[str], bert: Path, tmp_path: Path) -> None:
    recipe = TrainRecipe(compose_cfg([*TINY, *backbones(bert, image=LORA_VIT), *overrides,
                                      "trainer.limit_train_batches=2"]), tmp_path)
    recipe.setup()
    before = snapshot(recipe.model)
    recipe.train()
    assert recipe.step == 2
    assert all(math.isfinite(v) for v in recipe.last_metrics.values())
    changed = moved(before, recipe.model)
    assert any(".lora_B." in k for k in changed), "the adapter got no update"
    assert any(k.startswith("encoders.text.backbone.") for k in changed), "the text backbone got no update"
    assert not any(k.startswith("encoders.image.backbone.") and ".lora_" not in k for k in changed)


# ---------------------------------------------------------------------- kill -9 and resume
def test_kill_9_then_resume_with_backbones_and_lora_gives_the_uninterrupted_result(bert: Path,
                                                                                   tmp_path: Path) -> None:
    overrides = [*backbones(bert, image=LORA_VIT, text=["freeze=true"]), "logger.tensorboard=true",
                 "dataset.num_train=96", "dataset.num_val=32", "dataset.num_test=32", "trainer.batch_size=16",
                 "trainer.max_epochs=2", "trainer.checkpoint_every_n_steps=4", "trainer.deterministic=true",
                 "logger.progress_bar=false", "logger.log_every_n_steps=2"]
    # Mid-epoch after a checkpoint, and a checkpoint torn halfway in the second epoch (6 steps an epoch).
    crash_and_resume(tmp_path, overrides, ["step:5", "write:4"])


# ---------------------------------------------------------------------- mtmm-eval on uint8 images
def write_files_dataset(root: Path, n: int = 40) -> Path:
    """Images (class = dominant colour), a caption and a number per row; every 5th row has no image."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    words = ["red cat", "blue dog", "big mat"]
    rows = []
    for i in range(n):
        c = i % 3
        img = rng.integers(0, 60, (12, 12, 3)).astype(np.uint8)
        img[:, :, c] = 200
        Image.fromarray(img).save(root / f"img/{i}.png")
        rows.append({"photo": "" if i % 5 == 4 else f"img/{i}.png", "caption": f"the {words[(i + i // 3) % 3]}",
                     "size": float(rng.normal() + c), "label": "rgb"[c]})
    path = root / "manifest.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_mtmm_eval_subsets_and_corruptions_on_uint8_images(bert: Path, tmp_path: Path) -> None:
    manifest = write_files_dataset(tmp_path / "data")
    overrides = ["dataset=files", f"dataset.manifest={manifest}", f"dataset.cache_dir={tmp_path / 'cache'}",
                 "dataset.num_workers=0", "dataset.split_ratios=[0.6,0.2,0.2]",
                 "+reader@dataset.modalities.photo=image", "dataset.modalities.photo.size=[32,32]",
                 "+reader@dataset.modalities.caption=text", "+reader@dataset.modalities.size=numeric",
                 "+target@dataset.tasks.label=label",
                 "+encoder@model.encoders.photo=timm", "model.encoders.photo.model_name=test_vit",
                 "model.encoders.photo.pretrained=false", *(f"model.encoders.photo.{s}" for s in LORA_VIT),
                 "+encoder@model.encoders.caption=hf", f"model.encoders.caption.model_name={bert}",
                 "model.encoders.caption.freeze=true", "+encoder@model.encoders.size=mlp",
                 "+head@model.heads.label=linear", "trainer.batch_size=8", "trainer.max_epochs=1",
                 "logger.progress_bar=false", "logger.tensorboard=false", "model.feature_cache=off"]
    recipe = train(tmp_path / "run", overrides, tiny=False)
    images = recipe.data.splits["test"].inputs["photo"]
    assert images.dtype == torch.uint8  # the reader delivers pixels; the encoder normalises them

    # Corruptions act on the [0, 1] floats the encoder sees: noise is scaled to their spread, not to 0..255.
    draws = random_draws(images, None, torch.Generator().manual_seed(0))
    split = recipe.data.splits["test"]
    noisy = corrupt(split, "photo", "noise", 0.5, draws).inputs["photo"]
    present = split.present["photo"]
    assert noisy.is_floating_point() and 0.0 < float((noisy - images.float() / 255)[present].std()) < 1.0
    zeroed = corrupt(split, "photo", "zero", 1.0, draws)
    assert not zeroed.inputs["photo"].any() and torch.equal(zeroed.present["photo"], present)

    result = evaluate_checkpoint(EvalConfig(checkpoint=str(tmp_path / "run" / "checkpoints" / "best.pt"),
                                            split="test", plot=False, noise=[0.5, 2.0], zero=[1.0], drop=[1.0]),
                                 tmp_path / "eval")
    assert len(result["subsets"]) == 7  # every non-empty subset of photo, caption, size
    assert {(c["modality"], c["kind"]) for c in result["corruptions"]} == {
        (m, k) for m in ("photo", "caption", "size") for k in ("noise", "zero", "drop")}
    for c in result["corruptions"]:
        assert all(math.isfinite(v) for r in c["metrics"] for v in r.values()), (c["modality"], c["kind"])
    # Dropping every image is the subset without images: the same rows, masked the same way.
    dropped = next(c for c in result["corruptions"] if (c["modality"], c["kind"]) == ("photo", "drop"))
    without = next(s for s in result["subsets"] if s["modalities"] == ["caption", "size"])
    assert dropped["metrics"][0] == pytest.approx(without["metrics"], rel=1e-6, abs=1e-7)
    assert (tmp_path / "eval" / "robustness.json").is_file()


# ---------------------------------------------------------------------- torchrun
@pytest.mark.slow
def test_torchrun_with_lora_and_a_frozen_backbone_matches_one_process(bert: Path, tmp_path: Path) -> None:
    # No dropout anywhere (BERT's is off when frozen; LoRA's is 0): two processes must equal one with the global
    # batch. Each rank skips its own absent rows, so the ranks run their backbones on different row counts.
    small = [*backbones(bert, image=LORA_VIT, text=["freeze=true"]), "dataset.num_train=128", "dataset.num_val=64",
             "dataset.num_test=32", "trainer.max_epochs=1", "logger.progress_bar=false",
             "model.encoders.image.drop_path_rate=0.0"]
    done = run_cli([*TORCHRUN, *small, "trainer.batch_size=16", f"hydra.run.dir={tmp_path / 'two'}"], cwd=tmp_path,
                   module="", env=ONE_THREAD)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "metrics.json").read_text())["world_size"] == 2
    one = train(tmp_path / "one", [*small, "trainer.batch_size=32"], tiny=False)
    assert_same_metrics(final_metrics(tmp_path / "two"), one.last_metrics)
