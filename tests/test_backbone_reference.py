"""experiment=backbone_reference (ViT-B/16 + BERT-base built from Hugging Face configs) and encoder=hf's
``config``: builds offline from a config alone, trains, refuses bad configs in one line, benchmarks with MFU."""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import pytest
import torch
from conftest import compose_cfg, run_cli
from omegaconf import OmegaConf

from mtmm_train import benchmarking as bench
from mtmm_train.batch import ModalitySpec
from mtmm_train.encoders.hf import HFEncoder
from mtmm_train.errors import UserError
from mtmm_train.finetune import KEYS as FINE_TUNING
from mtmm_train.instantiate import build
from mtmm_train.preprocessing import apply_preprocessing
from mtmm_train.recipe import TrainRecipe

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach the network

# The experiment shrunk to a few seconds of CPU: same structure (ViT + BERT from configs, MLP, 3 tasks).
SMALL_MODELS = [f"model.encoders.{m}.config.{k}={v}" for m in ("image", "text") for k, v in
                (("hidden_size", 32), ("num_hidden_layers", 1), ("num_attention_heads", 2), ("intermediate_size", 64))]
TINY_REFERENCE = [*SMALL_MODELS, "model.encoders.image.config.image_size=32", "model.encoders.text.max_length=16",
                  "model.encoders.vector.out_dim=32", "model.encoders.vector.hidden_dims=[32]",
                  "mtl.hidden_dims=[64,32]",
                  "dataset.image_size=32", "dataset.text_length=16", "dataset.num_train=16", "dataset.num_val=8",
                  "trainer.batch_size=4", "trainer.eval_batch_size=8", "trainer.max_epochs=1",
                  "trainer.limit_train_batches=2", "trainer.precision=32", "trainer.compile=false",
                  "logger.progress_bar=false", "logger.tensorboard=false", "logger.log_every_n_steps=1"]
BERT = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 64, "vocab_size": 100, "max_position_embeddings": 24}
VIT = {"model_type": "vit", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
       "intermediate_size": 64, "image_size": 32, "patch_size": 8}
TEXT = ModalitySpec("text", (12,), "tokens", vocab_size=50)


def hf_node(**settings: object) -> object:
    """configs/encoder/hf.yaml without the fine-tuning keys (build_model takes those out), with ``settings``."""
    node = OmegaConf.load(Path(__file__).parents[1] / "configs" / "encoder" / "hf.yaml")
    for key in FINE_TUNING:
        node.pop(key, None)
    return OmegaConf.merge(node, settings)


def test_the_experiment_composes_as_documented_and_trains_through_the_recipe(tmp_path: Path) -> None:
    full = compose_cfg(["experiment=backbone_reference"])
    image, text = full.model.encoders.image, full.model.encoders.text
    assert (image.config.model_type, image.config.hidden_size, image.config.num_hidden_layers, image.config.patch_size,
            image.config.image_size, image.pretrained) == ("vit", 768, 12, 16, 224, False)
    assert (text.config.model_type, text.config.hidden_size, text.config.intermediate_size, text.max_length,
            text.pretrained) == ("bert", 768, 3072, 128, False)
    assert full.dataset.vocab_size <= text.config.vocab_size + 1  # the dataset's ids fit BERT's table
    assert (full.dataset.image_size, full.dataset.text_length, full.trainer.batch_size) == (224, 128, 256)
    assert (full.trainer.precision, full.trainer.compile, full.trainer.gradient_clip_norm) == ("bf16", True, None)
    assert (full.scheduler.warmup, full.optimizer.lr, full.optimizer._target_) == (0, 1e-4, "torch.optim.AdamW")

    recipe = TrainRecipe(compose_cfg(["experiment=backbone_reference", *TINY_REFERENCE]), tmp_path)
    recipe.setup()
    encoders = recipe.model.encoders
    assert {m: type(e).__name__ for m, e in encoders.items()} == {"image": "HFEncoder", "text": "HFEncoder",
                                                                 "vector": "MLPEncoder"}
    assert [encoders[m].backbone.config.model_type for m in ("image", "text")] == ["vit", "bert"]
    assert list(recipe.tasks) == ["cls", "bin", "reg"]
    before = encoders["image"].backbone.embeddings.patch_embeddings.projection.weight.detach().clone()
    value = recipe.train()
    assert recipe.step == 2 and value == value  # two optimizer steps, a finite monitored value
    assert not torch.equal(before, encoders["image"].backbone.embeddings.patch_embeddings.projection.weight)


def constructor_settings(node: object) -> dict:
    names = inspect.signature(HFEncoder).parameters
    return {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k in names}


def test_full_size_models_have_the_reference_parameter_counts() -> None:
    """ViT-B/16 and BERT-base at full size, built on the meta device (no memory, no time); the ResNet-50 preset."""
    cfg = compose_cfg(["experiment=backbone_reference"])
    image = ModalitySpec("image", (3, 224, 224), "image")
    text = ModalitySpec("text", (128,), "tokens", vocab_size=cfg.dataset.vocab_size)
    with torch.device("meta"):
        vit = HFEncoder(image, **constructor_settings(cfg.model.encoders.image))
        bert = HFEncoder(text, **constructor_settings(cfg.model.encoders.text))
    counts = {name: sum(p.numel() for p in enc.parameters()) for name, enc in (("vit", vit), ("bert", bert))}
    print(f"parameters: ViT-B/16 {counts['vit'] / 1e6:.2f}M, BERT-base {counts['bert'] / 1e6:.2f}M (no poolers)")
    # The published 86M and 110M include a pooler (0.59M each) that the encoder drops (pooling=cls).
    assert counts == {"vit": 85_798_656, "bert": 108_891_648}
    assert vit.out_dim == bert.out_dim == 768 and not vit.interpolate

    resnet = compose_cfg(bench.preset("backbone_reference_resnet50")).model.encoders.image
    assert resnet._target_.endswith("TimmEncoder") and resnet.model_name == "resnet50" and "config" not in resnet
    assert resnet.pretrained is False


def test_config_builds_offline_without_any_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    text = HFEncoder(TEXT, model_name="any-label", config=BERT, pretrained=False)
    ids = torch.randint(0, 50, (3, 12))
    ids[0, 6:] = 0  # padding
    assert text(ids).shape == (3, 32) and text.backbone.config.vocab_size == 100
    image = HFEncoder(ModalitySpec("image", (3, 32, 32), "image"), model_name="any-label", config=VIT,
                      pretrained=False)
    assert image(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)).shape == (2, 32)
    assert image.mean.flatten().tolist() == [0.5] * 3 and image.std.flatten().tolist() == [0.5] * 3
    assert not home.exists() or not any(home.rglob("*"))  # nothing read or written in the cache

    # The reader's settings come from the config: image size, text length capped by the positions, no tokenizer.
    assert HFEncoder.preprocessing({"config": VIT, "pretrained": False}).settings() == {"size": [32, 32],
                                                                                      "channels": 3}
    assert HFEncoder.preprocessing({"config": BERT, "pretrained": False, "max_length": 128}).settings() == {
        "max_length": 24}
    cfg = compose_cfg(["dataset=files", "+reader@dataset.modalities.photo=image",
                       "+reader@dataset.modalities.words=text", "+encoder@model.encoders.photo=hf",
                       "+encoder@model.encoders.words=hf", "model.encoders.photo.pretrained=false",
                       "model.encoders.words.pretrained=false", f"model.encoders.photo.config={flow(VIT)}",
                       "model.encoders.words.config={model_type: bert, max_position_embeddings: 64}"])
    apply_preprocessing(cfg)
    assert list(cfg.dataset.modalities.photo.size) == [32, 32] and cfg.dataset.modalities.words.max_length == 64
    assert cfg.dataset.modalities.words.tokenizer is None  # the reader keeps its own words


@pytest.mark.parametrize(("settings", "expected"), [
    ({"config": BERT, "pretrained": True}, "model.encoders.text.config is {model_type: bert, hidden_size: 32, "
     ".*which builds a model with random weights, but model.encoders.text.pretrained is true; set "
     "model.encoders.text.pretrained=false"),
    ({"config": {"hidden_size": 32}}, r"model.encoders.text.config is \{hidden_size: 32\}, which names no "
     "model_type; give the model type"),
    ({"config": {"model_type": "bertt"}}, "model.encoders.text.config has model_type 'bertt', which transformers "
     ".* does not know; did you mean bert"),
    ({"config": {**BERT, "hidden_sise": 8}}, "model.encoders.text.config has hidden_sise: 8, which is not a field of "
     "BertConfig \\(bert\\); did you mean hidden_size"),
    ({"config": {**BERT, "num_hidden_layers": "many"}}, "model.encoders.text.config is .*num_hidden_layers: many.*, "
     "which BertConfig refuses"),
    ({"config": {**BERT, "hidden_size": 33}}, "model.encoders.text.config is a bert config that builds no model "
     r"\(The hidden size \(33\) is not a multiple"),
    ({"config": {**BERT, "vocab_size": 20}}, "model.encoders.text.config has vocab_size 20, but modality 'text' has "
     "49 token ids .*; set model.encoders.text.config.vocab_size=49 or more"),
    ({"config": "bert"}, "model.encoders.text.config must be a mapping"),
])
def test_a_bad_config_is_one_line_naming_the_key(settings: dict, expected: str) -> None:
    settings = {"pretrained": False, **settings}
    with pytest.raises(UserError, match=expected) as e:
        build(hf_node(**settings), "model.encoders.text", modality=TEXT)
    assert "\n" not in str(e.value)
    if isinstance(settings["config"], dict) and "vocab_size" not in str(expected):  # refused before any data too
        with pytest.raises(UserError, match=expected):
            apply_preprocessing(compose_cfg(["dataset=files", "+reader@dataset.modalities.text=text",
                                             "+encoder@model.encoders.text=hf",
                                             f"model.encoders.text.pretrained={str(settings['pretrained']).lower()}",
                                             f"model.encoders.text.config={flow(settings['config'])}"]))


def flow(mapping: dict) -> str:
    """A mapping as a Hydra command-line value."""
    return "{" + ", ".join(f"{k}: {v}" for k, v in mapping.items()) + "}"


def test_the_cli_refuses_a_bad_model_type_in_one_line(tmp_path: Path) -> None:
    proc = run_cli(["experiment=backbone_reference", "model.encoders.text.config.model_type=bertt",
                    "dataset.num_train=8", "dataset.num_val=4", "dataset.image_size=32", "dataset.text_length=16",
                    "trainer.compile=false", "trainer.precision=32", "logger=none"], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "model.encoders.text.config has model_type 'bertt'" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_step_flops_count_the_attention_of_hf_models() -> None:
    """SDPA attention on the CPU is counted (torch's counter knows only CUDA's fused kernels): the count equals
    eager attention's matmuls plus the one matmul a fused backward recomputes."""
    import transformers
    from torch.utils.flop_counter import FlopCounterMode

    b, layers, heads, width, patch = 2, 2, 4, 64, 8
    tokens = (32 // patch) ** 2 + 1
    counts = {}
    for impl in ("sdpa", "eager"):
        config = transformers.AutoConfig.for_model("vit", hidden_size=width, num_hidden_layers=layers,
                                                   num_attention_heads=heads, intermediate_size=2 * width,
                                                   image_size=32, patch_size=patch, attn_implementation=impl)
        model = transformers.AutoModel.from_config(config)
        for mapping in ({}, bench.cpu_attention_flops()):
            with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
                model(pixel_values=torch.randn(b, 3, 32, 32)).last_hidden_state.sum().backward()
            counts[impl, bool(mapping)] = counter.get_total_flops()
    matmul = 2 * b * tokens * tokens * width  # one of Q K^T or P V, all heads
    assert counts["sdpa", False] == counts["eager", False] - 6 * matmul * layers  # the gap this fills
    assert counts["sdpa", True] == counts["eager", True] + matmul * layers


def test_compare_reports_both_sides_mfu_and_spec_mfu(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    overrides = bench.preset("backbone_reference") + TINY_REFERENCE
    row = bench.compare("backbone_reference", "fp32", overrides, rounds=2, steps=1, warmup=1, out=tmp_path,
                        peak=0.5, spec_peak=2.0)
    assert row["recipe_samples_s"] > 0 and row["hand_samples_s"] > 0 and row["ratio"] > 0
    assert row["batch_size"] == 4 and len(row["recipe_all"]) == len(row["hand_all"]) == 2
    assert row["gflop_per_step"] > 0
    assert row["mfu"] == pytest.approx(row["recipe_tflops"] / 0.5)
    assert row["mfu_spec"] == pytest.approx(row["recipe_tflops"] / 2.0) and row["spec_tflops"] == 2.0
    bench.print_recipe_table([row, {"config": "backbone_reference", "mode": "bf16", "error": "boom"}])
    table = capsys.readouterr().out.splitlines()
    assert "MFU spec" in table[0] and table[2].startswith("backbone_reference ") and table[2].count("%") == 2
    assert bench.spec_bf16_tflops("cpu") is None  # no vendor peak for a CPU: no mfu_spec column value
