"""Fine-tuning controls per encoder (mtmm_train/finetune.py): freeze, unfreeze at an epoch, lr scale, layer-wise
decay, no weight decay on norms and biases, gradient checkpointing, LoRA, init_from, and the logged groups.

Backbones are tiny and built here (timm's ``test_vit`` with random weights); nothing is downloaded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import TINY, compose_cfg, run_cli, train
from torch import nn

from mtmm_train import builders, finetune, optim
from mtmm_train.config import validate
from mtmm_train.errors import UserError
from mtmm_train.evaluate import load_run
from mtmm_train.recipe import TrainRecipe

os.environ.setdefault("HF_HUB_OFFLINE", "1")
NO_CACHE = ["model.feature_cache=off", "logger.tensorboard=false"]  # a frozen encoder runs at every step
VIT = ["encoder@model.encoders.image=timm", "model.encoders.image.model_name=test_vit",
       "model.encoders.image.pretrained=false", "model.encoders.image.out_dim=16"]
ONE_THREAD = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


class Interrupted(Exception):
    pass


def states(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict[str, torch.Tensor], module: nn.Module) -> set[str]:
    return {k for k, v in module.state_dict().items() if not torch.equal(before[k], v)}


def set_up(tmp_path: Path, overrides: list[str]) -> TrainRecipe:
    recipe = TrainRecipe(compose_cfg(TINY + NO_CACHE + overrides), tmp_path)
    recipe.setup()
    return recipe


def group_of(optimizer: torch.optim.Optimizer, p: nn.Parameter) -> dict | None:
    return next((g for g in optimizer.param_groups if any(q is p for q in g["params"])), None)


# ---------------------------------------------------------------------- freeze
def test_frozen_encoder_keeps_its_weights_and_batchnorm_statistics(tmp_path: Path, one_thread: None) -> None:
    recipe = set_up(tmp_path, ["++model.encoders.image.freeze=true", "trainer.max_epochs=2"])
    image = recipe.model.encoders.image  # the cnn encoder: convolutions with BatchNorm
    assert any(isinstance(m, nn.BatchNorm2d) for m in image.modules())
    image_before, text_before = states(image), states(recipe.model.encoders.text)
    assert all(group_of(recipe.optimizer, p) is None for p in image.parameters())  # not in the optimizer at all
    recipe.train()
    assert changed(image_before, image) == set()  # weights and running statistics (buffers) alike
    assert changed(text_before, recipe.model.encoders.text)  # the rest trained
    recipe.model.train()
    assert not image.training and not any(m.training for m in image.modules())
    assert recipe.model.encoders.text.training and recipe.model.fusion.training


def test_unfreeze_at_epoch_trains_the_encoder_from_that_epoch_on(tmp_path: Path, one_thread: None,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[int, set[str], bool]] = []
    original = TrainRecipe.end_of_epoch

    def record(self: TrainRecipe) -> bool:
        image = self.model.encoders.image
        seen.append((self.epoch, changed(self.image_start, image), image.training))
        return original(self)

    monkeypatch.setattr(TrainRecipe, "end_of_epoch", record)
    recipe = set_up(tmp_path, ["++model.encoders.image.unfreeze_at_epoch=1", "trainer.max_epochs=2"])
    image = recipe.model.encoders.image
    recipe.image_start = states(image)
    # In the optimizer from the start (frozen: no gradient), so resume and the schedule see one layout.
    assert all(group_of(recipe.optimizer, p) is not None and not p.requires_grad for p in image.parameters())
    recipe.train()
    (e1, changed1, training1), (e2, changed2, training2) = seen
    assert (e1, e2) == (1, 2)
    assert changed1 == set() and not training1  # epoch 1 (0-based 0): frozen, BatchNorm in eval
    assert {k for k in changed2 if "running" in k} and {k for k in changed2 if k.endswith("weight")}
    assert training2 and all(p.requires_grad for p in image.parameters())


@pytest.mark.parametrize("stop_at", [2, 4])  # before the unfreeze (epoch 0 of 3 steps) and after it (epoch 1)
def test_resume_across_the_unfreeze_epoch_gives_the_uninterrupted_result(stop_at: int, tmp_path: Path,
                                                                         one_thread: None,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    overrides = NO_CACHE + ["trainer.max_epochs=3", "trainer.checkpoint_every_n_steps=1",
                            "++model.encoders.image.unfreeze_at_epoch=1", "++model.encoders.audio.freeze=true"]
    full = train(tmp_path / "full", overrides)
    original_save = TrainRecipe.save

    def save_then_die(self: TrainRecipe, name: str) -> None:
        original_save(self, name)
        if self.step == stop_at:
            raise Interrupted

    monkeypatch.setattr(TrainRecipe, "save", save_then_die)
    with pytest.raises(Interrupted):
        train(tmp_path / "resumed", overrides)
    monkeypatch.setattr(TrainRecipe, "save", original_save)
    resumed = train(tmp_path / "resumed", [*overrides, "trainer.resume=auto"])
    assert resumed.resumed_from is not None and resumed.step == full.step == 9
    assert resumed.best == full.best
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


# ---------------------------------------------------------------------- learning rates and weight decay
def test_lr_scale_and_layer_decay_give_each_parameter_its_configured_lr(tmp_path: Path, one_thread: None) -> None:
    recipe = set_up(tmp_path, [*VIT, "++model.encoders.image.lr_scale=0.5", "++model.encoders.image.layer_decay=0.75",
                               "++model.encoders.tabular.lr_scale=0.1", "optimizer.lr=0.002"])
    image, opt = recipe.model.encoders.image, recipe.optimizer
    n = image.num_blocks
    assert n >= 3
    seen_blocks = set()
    for name, p in image.named_parameters():
        i = image.block_index(name)
        expected = 0.002 * 0.5 * (0.75 ** (n - i) if i is not None else 1.0)
        seen_blocks.add(i)
        assert group_of(opt, p)["initial_lr"] == pytest.approx(expected, rel=1e-12), name
    assert {0, n - 1, None} <= seen_blocks  # embeddings, the last block and the projection
    for p in recipe.model.encoders.tabular.parameters():
        assert group_of(opt, p)["initial_lr"] == pytest.approx(0.0002, rel=1e-12)
    for p in [*recipe.model.heads.parameters(), *recipe.model.encoders.text.parameters()]:
        assert group_of(opt, p)["initial_lr"] == 0.002
    # Logged once: one line per group, and param_groups.json in the run folder (written when training starts).
    assert not (tmp_path / "param_groups.json").exists()
    recipe.train()
    rows = json.loads((tmp_path / "param_groups.json").read_text())
    assert len(rows) == len(opt.param_groups) and sum(r["tensors"] for r in rows) == sum(
        len(g["params"]) for g in opt.param_groups)
    assert {r["lr"] for r in rows} == {g["initial_lr"] for g in opt.param_groups}
    assert any(r["modules"] == ["encoders.tabular"] and r["lr"] == pytest.approx(0.0002) for r in rows)


def test_no_weight_decay_on_norms_biases_and_position_tokens(tmp_path: Path, one_thread: None) -> None:
    recipe = set_up(tmp_path, [*VIT, "optimizer.weight_decay=0.05"])
    model, opt = recipe.model, recipe.optimizer
    norms = {id(p) for m in model.modules() if isinstance(m, nn.LayerNorm | nn.BatchNorm2d) for p in m.parameters()}
    vit = model.encoders.image.backbone
    for name, p in model.named_parameters():
        decay = group_of(opt, p)["weight_decay"]
        no = id(p) in norms or name.endswith(".bias") or p.dim() <= 1 or p is vit.pos_embed or p is vit.cls_token
        assert decay == (0.0 if no else 0.05), name
    assert norms and any(g["weight_decay"] == 0.05 and g["params"] for g in opt.param_groups)


def test_no_decay_names_rules() -> None:
    class MyRMSNorm(nn.Module):  # a norm by its class name, with a 2-D parameter
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(2, 3))

    net = nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 3), nn.LayerNorm(3), nn.BatchNorm1d(3), MyRMSNorm())
    assert optim.no_decay_names(net) == {"1.bias", "2.weight", "2.bias", "3.weight", "3.bias", "4.scale"}
    # Without any scale: exactly the two groups [decay, no decay] of earlier versions, in model order.
    params = [(n, p, 1.0) for n, p in net.named_parameters()]
    groups = optim.param_groups(params, optim.no_decay_names(net), 0.1)
    assert [g["name"] for g in groups] == ["lr x1 decay", "lr x1 no decay"] and all("lr" not in g for g in groups)
    assert [len(g["params"]) for g in groups] == [2, 6]


# ---------------------------------------------------------------------- gradient checkpointing
def build(overrides: list[str]) -> tuple[nn.Module, Any]:
    cfg = compose_cfg(TINY + NO_CACHE + overrides)
    builders.seed_everything(0)
    data = builders.build_data(cfg)
    tasks = builders.build_tasks(data)
    return builders.build_model(cfg, data, tasks), data


def test_gradient_checkpointing_gives_the_same_gradients(one_thread: None) -> None:
    plain, data = build(VIT)
    ckpt, _ = build([*VIT, "++model.encoders.image.gradient_checkpointing=true"])
    assert ckpt.encoders.image.backbone.grad_checkpointing and not plain.encoders.image.backbone.grad_checkpointing
    ckpt.load_state_dict(plain.state_dict())
    batch = data.splits["train"].batch(torch.arange(16))
    grads = []
    for model in (plain, ckpt):
        model.train()
        preds, _ = model(batch.inputs, batch.present)
        sum(p.float().pow(2).mean() for p in preds.values()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and any(k.startswith("encoders.image.backbone") for k in grads[0])
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], atol=1e-6, rtol=0, msg=k)


def test_gradient_checkpointing_on_an_encoder_without_it_is_one_line(one_thread: None) -> None:
    with pytest.raises(UserError, match=r"^model\.encoders\.image\.gradient_checkpointing is not available for "
                                        r"CNNEncoder"):
        build(["++model.encoders.image.gradient_checkpointing=true"])


# ---------------------------------------------------------------------- LoRA
def test_lora_trains_only_the_adapter_of_the_backbone_and_survives_mtmm_eval(tmp_path: Path, one_thread: None) -> None:
    recipe = set_up(tmp_path, [*VIT, "++model.encoders.image.adapter=lora", "++model.encoders.image.lora.r=4",
                               "++model.encoders.image.lora.target_modules=[qkv,fc1]", "trainer.max_epochs=1"])
    image = recipe.model.encoders.image
    lora = {n for n, _ in image.named_parameters() if ".lora_" in n}
    assert lora and all(".qkv." in n or ".fc1." in n for n in lora)
    assert {n for n, p in image.named_parameters() if p.requires_grad} == lora | {"proj.weight", "proj.bias"}
    before = states(image)
    recipe.train()
    moved = changed(before, image)
    assert {k for k in moved if ".lora_B." in k} and "proj.weight" in moved
    assert moved <= lora | {"proj.weight", "proj.bias"}  # no weight of the backbone itself changed
    # mtmm-eval rebuilds the model through the builders: the same wrapped modules, the same keys.
    run = load_run(tmp_path / "checkpoints" / "best.pt", device="cpu")
    saved = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=True)["model"]
    assert list(run.model.state_dict()) == list(saved)
    for k, v in run.model.state_dict().items():
        assert torch.equal(v, saved[k]), k


def test_lora_target_modules_that_match_nothing_is_one_line(one_thread: None) -> None:
    with pytest.raises(UserError, match=r"^model\.encoders\.image\.lora\.target_modules \['nothing_here'\] cannot be "
                                        r"adapted .*name layers of VisionTransformer"):
        build([*VIT, "++model.encoders.image.adapter=lora",
               "++model.encoders.image.lora.target_modules=[nothing_here]"])


# ---------------------------------------------------------------------- init_from
def test_init_from_copies_the_encoder_weights_of_an_earlier_run(tmp_path: Path, one_thread: None) -> None:
    first = train(tmp_path / "first", NO_CACHE + ["seed=1"])
    best = tmp_path / "first" / "checkpoints" / "best.pt"
    saved = torch.load(best, weights_only=True)["model"]
    model, _ = build([f"++model.encoders.image.init_from={best}", f"++model.encoders.audio.init_from={best}",
                      "++model.encoders.audio.init_prefix=encoders.audio."])
    for m in ("image", "audio"):
        for k, v in model.encoders[m].state_dict().items():
            assert torch.equal(v, saved[f"encoders.{m}.{k}"]), (m, k)
    fresh = model.encoders.text.state_dict()
    assert any(not torch.equal(v, saved[f"encoders.text.{k}"]) for k, v in fresh.items())  # not initialised
    assert first.step > 0


def test_init_from_mistakes_are_one_line(tmp_path: Path, one_thread: None) -> None:
    train(tmp_path / "first", NO_CACHE)
    best = tmp_path / "first" / "checkpoints" / "best.pt"
    cases = [
        ([f"++model.encoders.image.init_from={tmp_path / 'none.pt'}"],
         r"^model\.encoders\.image\.init_from '.*none\.pt' is not a file; give a checkpoint"),
        ([f"++model.encoders.image.init_from={best}", "++model.encoders.image.init_prefix=encoders.video."],
         r"^model\.encoders\.image\.init_prefix 'encoders\.video\.' matches no weight .*encoders\.image\."),
        ([f"++model.encoders.image.init_from={best}", "model.encoders.image.channels=[8,32]"],
         r"^model\.encoders\.image\.init_from '.*best\.pt' does not fit CNNEncoder .*is \[16, 1, 3, 3\] there, "
         r"\[8, 1, 3, 3\] here"),
    ]
    for overrides, pattern in cases:
        with pytest.raises(UserError, match=pattern):
            build(overrides)


# ---------------------------------------------------------------------- bad settings
@pytest.mark.parametrize(("override", "pattern"), [
    ("++model.encoders.image.frezee=true", r"^model\.encoders\.image\.frezee is not a setting of this encoder nor a "
                                          r"fine-tuning setting; did you mean model\.encoders\.image\.freeze\?"),
    ("++model.encoders.image.freeze=yes", r"^model\.encoders\.image\.freeze must be true or false, found 'yes'"),
    ("++model.encoders.image.lr_scale=-0.1", r"^model\.encoders\.image\.lr_scale must be a finite number >= 0, "
                                            r"found -0\.1; e\.g\."),
    ("++model.encoders.image.layer_decay=1.5", r"^model\.encoders\.image\.layer_decay must be a number in \(0, 1\]"),
    ("++model.encoders.image.layer_decay=0", r"^model\.encoders\.image\.layer_decay must be a number in \(0, 1\]"),
    ("++model.encoders.image.unfreeze_at_epoch=-1",
     r"^model\.encoders\.image\.unfreeze_at_epoch must be an epoch >= 0"),
    ("++model.encoders.image.adapter=lorra", r"^model\.encoders\.image\.adapter must be null or lora, found 'lorra'"),
    ("++model.encoders.image.lora.rank=8", r"^model\.encoders\.image\.lora\.rank is not a LoRA setting; did you mean "
                                          r"model\.encoders\.image\.lora\.r\?"),
    ("++model.encoders.image.lora.r=0", r"^model\.encoders\.image\.lora\.r must be a rank >= 1, found 0"),
    ("++model.encoders.image.init_prefix=encoders.x.", r"^model\.encoders\.image\.init_prefix is set .* but "
                                                      r"model\.encoders\.image\.init_from is not"),
])
def test_bad_fine_tuning_settings_are_one_line_before_any_data(override: str, pattern: str) -> None:
    with pytest.raises(UserError, match=pattern):
        validate(compose_cfg([override]))


def test_layer_decay_on_an_encoder_without_blocks_is_one_line(one_thread: None) -> None:
    with pytest.raises(UserError, match=r"^model\.encoders\.image\.layer_decay is 0\.75, but CNNEncoder counts no "
                                        r"blocks"):
        build(["++model.encoders.image.layer_decay=0.75"])


def test_the_settings_are_not_passed_to_the_constructor_nor_to_preprocessing() -> None:
    cfg = compose_cfg(["++model.encoders.image.freeze=true", "++model.encoders.image.lora.r=4"])
    node, tuning = finetune.split(cfg.model.encoders.image, "model.encoders.image")
    assert "freeze" not in node and "lora" not in node and "_target_" in node
    assert tuning.freeze and tuning.lora.r == 4 and tuning.lora.target_modules == "all-linear"
    assert cfg.model.encoders.image.freeze is True  # the run's config keeps them (checkpoints, mtmm-eval)


# ---------------------------------------------------------------------- the command line
def test_cli_freeze_and_lora_then_mtmm_eval(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = [*TINY, *NO_CACHE, f"hydra.run.dir={run}", "++model.encoders.image.freeze=true",
            "encoder@model.encoders.text=transformer", "++model.encoders.text.adapter=lora",
            "++model.encoders.text.lora.r=4", "++model.encoders.text.lora.target_modules=[linear1,linear2]"]
    result = run_cli(args, cwd=tmp_path, env=ONE_THREAD)
    assert result.returncode == 0, result.stderr[-2000:]
    log = (run / "mtmm-train.log").read_text()
    assert "optimizer parameter groups:" in log and "lr x1 no decay" in log
    rows = json.loads((run / "param_groups.json").read_text())
    trained = {m for r in rows for m in r["modules"]}
    assert "encoders.text" in trained and "encoders.image" not in trained  # frozen: not in the optimizer
    saved = torch.load(run / "checkpoints" / "best.pt", weights_only=True)["model"]
    assert any(".lora_A." in k for k in saved)
    result = run_cli([f"checkpoint={run / 'checkpoints' / 'best.pt'}", "plot=false", "subsets=false", "noise=[]",
                      "zero=[]", "drop=[]"], cwd=tmp_path, module="mtmm_train.evaluate", env=ONE_THREAD)
    assert result.returncode == 0, result.stderr[-2000:]
