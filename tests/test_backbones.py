"""Pretrained backbones: timm and Hugging Face encoders, local weights, offline rules, preprocessing from the model.

Every model is tiny and written by the test (timm ``pretrained=False``, Hugging Face configs saved with
``save_pretrained``); nothing is downloaded (``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_cfg, run_cli
from tiny_backbones import WORDS, bert_folder, clip_folder, timm_file, wav2vec2_folder

from mtmm_train.batch import ModalitySpec
from mtmm_train.builders import build_data
from mtmm_train.data.readers.audio import AudioReader
from mtmm_train.encoders.embedding_bag import EmbeddingBagEncoder, pretrained_files
from mtmm_train.encoders.hf import HFEncoder
from mtmm_train.encoders.timm import TimmEncoder
from mtmm_train.errors import UserError
from mtmm_train.instantiate import located

IMAGE = ModalitySpec("image", (3, 32, 32), "image")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("backbones")
    return {"bert": bert_folder(root / "bert"), "w2v": wav2vec2_folder(root / "w2v"),
            "clip": clip_folder(root / "clip")}


@pytest.mark.parametrize("form", [".safetensors", ".pth", "folder"])
def test_timm_loads_local_weights(tmp_path: Path, form: str) -> None:
    path = tmp_path / "model" / "model.safetensors" if form == "folder" else tmp_path / f"w{form}"
    saved = timm_file(path, "test_vit")
    enc = TimmEncoder(IMAGE, model_name="test_vit", pretrained=str(path.parent if form == "folder" else path))
    loaded = enc.backbone.state_dict()
    shared = [k for k in saved if not k.startswith("head.")]  # the classifier is dropped
    assert shared and all(torch.equal(loaded[k], saved[k]) for k in shared if k != "pos_embed")
    random = TimmEncoder(IMAGE, model_name="test_vit", pretrained=False).backbone.state_dict()
    assert not torch.equal(random["blocks.0.attn.qkv.weight"], saved["blocks.0.attn.qkv.weight"])


def test_timm_tokens_pooled_and_hooks() -> None:
    enc = TimmEncoder(IMAGE, model_name="test_vit", pretrained=False)  # patch 16: 2x2 patch tokens at 32x32
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    assert enc(x).shape == (2, enc.out_dim) and enc.tokens(x).shape == (2, 4, enc.out_dim)
    cnn = TimmEncoder(IMAGE, model_name="test_resnet", pretrained=False, out_dim=8)
    assert cnn.tokens(x).shape[::2] == (2, 8) and cnn(x).shape == (2, 8)  # flattened feature map
    assert enc.num_blocks == 7 and enc.block_index("backbone.patch_embed.proj.weight") == 0
    assert enc.block_index("backbone.blocks.5.mlp.fc1.weight") == 6 and enc.block_index("proj.weight") is None
    enc.set_gradient_checkpointing(True)
    assert enc.backbone.grad_checkpointing
    prep = TimmEncoder.preprocessing({"model_name": "test_vit"})
    assert (prep.size, prep.interpolation, prep.crop_pct, prep.channels) == ((160, 160), "bicubic", 0.95, 3)
    # The model's mean/std are applied on the device; an explicit one wins.
    assert torch.allclose(enc.mean.flatten(), torch.tensor([0.5] * 3))
    assert TimmEncoder(IMAGE, model_name="test_vit", pretrained=False, mean=[0.1, 0.2, 0.3]).mean[0, 2, 0, 0] == 0.3


def test_offline_and_not_cached_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(UserError, match=r"^model\.encoders\.image\.pretrained asks for the pretrained weights of "
                                        r"'test_resnet', but HF_HUB_OFFLINE is set .*model\.encoders\.image\."
                                        r"pretrained="
                                        r"/path/to/model\.safetensors"), located("model.encoders.image"):
        TimmEncoder(IMAGE, model_name="test_resnet", pretrained=True)
    with pytest.raises(UserError, match=r"^model\.encoders\.text\.model_name asks for the pretrained weights of "
                                        r"'no-such-org/tiny-bert', .*model\.encoders\.text\.model_name="
                                        r"/path/to/folder"):
        with located("model.encoders.text"):
            HFEncoder.preprocessing({"model_name": "no-such-org/tiny-bert"})


def manifest(tmp_path: Path, images: bool = False) -> Path:
    texts = ["the cat sat on the mat", "a dog runs fast", "big red cat", "small blue dog sat", "the mat"]
    rows = []
    for i in range(20):
        row = {"text": texts[i % 5] + (" fast" * (i % 3)), "label": ["x", "y"][i % 2]}
        if images:
            from PIL import Image

            Image.fromarray(np.full((20, 24, 3), 12 * i, np.uint8)).save(tmp_path / f"{i}.png")
            row["image"] = f"{i}.png"
        rows.append(row)
    path = tmp_path / "manifest.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def files_overrides(tmp_path: Path, bert: Path, images: bool = False) -> list[str]:
    out = ["dataset=files", f"dataset.manifest={manifest(tmp_path, images)}", f"dataset.cache_dir={tmp_path / 'c'}",
           "+reader@dataset.modalities.text=text", "+target@dataset.tasks.label=label",
           "+encoder@model.encoders.text=hf", f"model.encoders.text.model_name={bert}",
           "+head@model.heads.label=linear"]
    if images:
        out += ["+reader@dataset.modalities.image=image", "+encoder@model.encoders.image=timm",
                "model.encoders.image.model_name=test_vit", f"model.encoders.image.pretrained={tmp_path / 'vit.pth'}"]
    return out


def test_hf_text_takes_the_models_tokenizer_and_pools(tmp_path: Path, models: dict[str, Path]) -> None:
    cfg = compose_cfg(files_overrides(tmp_path, models["bert"]))
    data = build_data(cfg)
    reader = cfg.dataset.modalities.text
    assert reader.tokenizer == str(models["bert"].resolve()) and reader.max_length == 16  # the model's maximum
    assert reader.special_tokens is True
    spec = data.modalities["text"]
    assert spec.info == {"tokenizer": str(models["bert"].resolve()), "special_tokens": True}
    ids = data.splits["train"].inputs["text"]
    assert ids.shape[1] == 16 and (ids[:, 0] == WORDS.index("[CLS]") + 1).all()  # shifted by one, [CLS] first
    torch.manual_seed(0)
    enc = {p: HFEncoder(spec, model_name=str(models["bert"]), pooling=p).eval() for p in ("cls", "mean", "masked_mean")}
    for p in ("mean", "masked_mean"):
        enc[p].load_state_dict(enc["cls"].state_dict())
    x = ids[:4]
    with torch.no_grad():
        out = {p: e(x) for p, e in enc.items()}
        assert not torch.allclose(out["cls"], out["masked_mean"])
        assert not torch.allclose(out["mean"], out["masked_mean"])
        torch.testing.assert_close(out["cls"], enc["cls"].tokens(x)[:, 0])
        # Masked mean ignores padding: the same text with more or less padding gives the same vector.
        n = int((x[0] != 0).sum())
        short, long = x[:1, :n], torch.nn.functional.pad(x[:1, :n], (0, 16 - n))
        torch.testing.assert_close(enc["masked_mean"](short), enc["masked_mean"](long), rtol=1e-4, atol=1e-5)
        assert not torch.allclose(enc["mean"](short), enc["mean"](long), atol=1e-4)
    assert enc["cls"].num_blocks == 3 and enc["cls"].block_index("backbone.encoder.layer.1.output.dense.weight") == 2
    assert enc["cls"].block_index("backbone.embeddings.word_embeddings.weight") == 0
    enc["cls"].set_gradient_checkpointing(True)


def test_a_mismatch_names_both_sides(models: dict[str, Path]) -> None:
    words = ModalitySpec("text", (8,), "tokens", vocab_size=500, info={"tokenizer": None, "special_tokens": False})
    with pytest.raises(UserError, match=r"^dataset\.modalities\.text\.tokenizer is None but model\.encoders\.text "
                                        r"\(hf .*bert\) needs '.*bert'"):
        HFEncoder(words, model_name=str(models["bert"]))
    other = ModalitySpec("text", (8,), "tokens", vocab_size=500, info={"tokenizer": "other.json"})
    with pytest.raises(UserError, match=r"tokenizer is 'other.json' but .* needs '.*bert \(ids below 69, found 499\)'"):
        HFEncoder(other, model_name=str(models["bert"]))
    slow = ModalitySpec("voice", (1, 800), "sequence", info={"sample_rate": 8000, "features": "raw"})
    with pytest.raises(UserError, match=r"^dataset\.modalities\.voice\.sample_rate is 8000 but model\.encoders\.voice "
                                        r"\(hf .*w2v\) needs 16000"):
        HFEncoder(slow, model_name=str(models["w2v"]))
    mel = ModalitySpec("voice", (40, 100), "sequence", info={"sample_rate": 16000, "features": "log_mel"})
    with pytest.raises(UserError, match=r"features is 'log_mel' but .* needs 'raw'"):
        HFEncoder(mel, model_name=str(models["w2v"]))


def test_hf_audio_on_raw_waveform(tmp_path: Path, models: dict[str, Path]) -> None:
    prep = HFEncoder.preprocessing({"model_name": str(models["w2v"])})
    assert (prep.sample_rate, prep.features) == (16000, "raw")
    clip = tmp_path / "a.wav"
    with wave.open(str(clip), "wb") as w:  # 0.25 s at 8 kHz: resampled to 16 kHz by the reader
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000)
        w.writeframes((np.sin(np.arange(2000) * 0.3) * 8000).astype(np.int16).tobytes())
    reader = AudioReader("voice", sample_rate=prep.sample_rate, features=prep.features, max_samples=3200)
    x = reader.decode(clip)
    assert x.shape == (1, 3200) and x[0, :4000].abs().max() <= 1.0 and x[0, 3000:].abs().sum() > 0
    spec = ModalitySpec("voice", (1, 3200), "sequence", info={"sample_rate": 16000, "features": "raw"})
    enc = HFEncoder(spec, model_name=str(models["w2v"]), pooling="mean", out_dim=6)
    batch = torch.stack([x, x * 0.5])
    out = enc(batch)
    assert out.shape == (2, 6) and enc.tokens(batch).dim() == 3
    torch.testing.assert_close(out[0], out[1], rtol=1e-4, atol=1e-4)  # do_normalize: loudness does not matter


def test_clip_gives_both_towers(models: dict[str, Path]) -> None:
    clip = str(models["clip"])
    vision = HFEncoder(IMAGE, model_name=clip, tower="vision", pooling="pooler")
    text = HFEncoder(ModalitySpec("text", (8,), "tokens", vocab_size=len(WORDS) + 1), model_name=clip, tower="text",
                     pooling="pooler")
    assert vision(torch.rand(2, 3, 32, 32)).shape == (2, 16) and text(torch.randint(1, 20, (2, 8))).shape == (2, 16)
    assert torch.allclose(vision.mean.flatten(), torch.tensor([0.4, 0.45, 0.4]))  # the image processor's
    prep = HFEncoder.preprocessing({"model_name": clip, "tower": "vision"})
    assert (prep.size, prep.interpolation) == ((32, 32), "bicubic") and prep.crop_pct == pytest.approx(32 / 36)
    assert HFEncoder.preprocessing({"model_name": clip, "tower": "text"}).max_length == 16
    with pytest.raises(UserError, match=r"^model\.encoders\.image\.tower is null, but .* is a paired model; choose "
                                        r"one tower, e.g. model\.encoders\.image\.tower=vision$"):
        with located("model.encoders.image"):
            HFEncoder(IMAGE, model_name=clip)
    with pytest.raises(UserError, match=r"reads image input \(pixel_values\), but modality 'text' is tokens"):
        HFEncoder(ModalitySpec("text", (8,), "tokens", vocab_size=10), model_name=clip, tower="vision")


def test_wordllama_rows_equal_the_files() -> None:
    from safetensors.torch import load_file

    weights, tokenizer = pretrained_files("wordllama")
    table = load_file(str(weights))["embedding.weight"]
    spec = ModalitySpec("text", (8,), "tokens", vocab_size=table.shape[0] + 1, info={"tokenizer": str(tokenizer)})
    enc = EmbeddingBagEncoder(spec, pretrained="wordllama")
    assert torch.equal(enc.embed.weight[1:], table.float()) and not enc.embed.weight[0].any()  # id + 1; 0 = padding
    assert EmbeddingBagEncoder.preprocessing({"pretrained": "wordllama"}).tokenizer == str(tokenizer)
    with pytest.raises(UserError, match=r"tokenizer is 'x.json' but model\.encoders\.text \(wordllama embeddings\)"):
        EmbeddingBagEncoder(ModalitySpec("text", (8,), "tokens", vocab_size=9, info={"tokenizer": "x.json"}),
                            pretrained="wordllama")


def test_cli_trains_with_an_image_and_a_text_backbone(tmp_path: Path, models: dict[str, Path]) -> None:
    timm_file(tmp_path / "vit.pth", "test_vit")
    args = [*files_overrides(tmp_path, models["bert"], images=True), "trainer.max_epochs=1", "trainer.batch_size=8",
            "logger.progress_bar=false", "dataset.num_workers=0", f"hydra.run.dir={tmp_path / 'run'}"]
    done = run_cli(args, tmp_path, env={"HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    log = (tmp_path / "run" / "mtmm-train.log").read_text()
    assert "dataset.modalities.image.size=[160, 160] from the encoder (timm test_vit)" in log
    assert "dataset.modalities.text.tokenizer=" in log
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs"] == 1
