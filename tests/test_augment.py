"""Train-time augmentation: draws from (seed, epoch, row) only, presets and settings, the per-batch path on the
CPU, and exact resume of an augmented run."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_cfg, train
from PIL import Image

from mtmm_train.data import augment as aug
from mtmm_train.data.base import apply_transforms
from mtmm_train.data.readers import AudioReader, ImageReader
from mtmm_train.errors import SettingError, UserError
from mtmm_train.recipe import TrainRecipe

IMAGE = torch.randint(0, 256, (3, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_draws_depend_only_on_seed_epoch_and_row_and_leave_the_training_rng_alone() -> None:
    t = ImageReader("photo", size=[12, 12], augment={"preset": "strong"}).sample_transform(train=True)
    before = torch.get_rng_state()
    a = t(IMAGE, aug.sample_generator(0, 1, 5))
    torch.rand(3)  # anything else the run draws in between changes nothing
    b = t(IMAGE, aug.sample_generator(0, 1, 5))
    assert torch.equal(a, b) and a.dtype == torch.uint8 and a.shape == IMAGE.shape
    others = [t(IMAGE, aug.sample_generator(*k)) for k in ((0, 2, 5), (0, 1, 6), (1, 1, 5))]
    assert all(not torch.equal(a, o) for o in others)
    torch.set_rng_state(before)
    t(IMAGE, aug.sample_generator(0, 1, 5))
    assert torch.equal(torch.get_rng_state(), before)  # torchvision drew from a forked generator
    assert ImageReader("photo", augment={"preset": "strong"}).sample_transform(train=False) is None  # evaluation


def test_presets_and_single_settings_over_them() -> None:
    light = aug.settings_for("image", {"preset": "light"})
    assert light["hflip"] == 0.5 and light["crop_scale"] == [0.5, 1.0]
    own = aug.settings_for("image", {"preset": "light", "hflip": 0.0, "policy": "randaugment"})
    assert own["hflip"] == 0.0 and own["crop_scale"] == [0.5, 1.0] and own["policy"] == "randaugment"
    assert aug.image_transform(aug.settings_for("image", {"preset": "none"}), (8, 8)) is None
    assert aug.audio_transform(aug.settings_for("audio", {}), "mel") is None
    with pytest.raises(SettingError, match=r"^augment.hflp is not an augmentation setting of image readers"):
        aug.settings_for("image", {"hflp": 0.5})
    with pytest.raises(SettingError, match=r"^augment.hflip must be a probability in \[0, 1\], found 2"):
        aug.settings_for("image", {"hflip": 2})
    with pytest.raises(SettingError, match=r"^augment.preset must be one of none, light, strong, found 'heavy'"):
        aug.settings_for("audio", {"preset": "heavy"})


def test_the_run_preset_fills_readers_that_do_not_choose_and_a_reader_setting_wins() -> None:
    cfg = compose_cfg(["dataset=files", "augment=strong", "+reader@dataset.modalities.photo=image",
                       "+reader@dataset.modalities.voice=audio", "dataset.modalities.voice.augment.preset=light",
                       "dataset.modalities.photo.augment.hflip=0", "+reader@dataset.modalities.tab=numeric"])
    assert aug.apply_augment(cfg) == ["photo", "voice"]
    photo, voice = cfg.dataset.modalities.photo.augment, cfg.dataset.modalities.voice.augment
    assert (photo.preset, photo.hflip, photo.device, voice.preset) == ("strong", 0, "cpu", "light")
    assert "augment" not in cfg.dataset.modalities.tab
    with pytest.raises(UserError, match=r"^augment.preset must be one of none, light, strong, found 'heavy'"):
        aug.apply_augment(compose_cfg(["augment.preset=heavy"]))


@pytest.mark.parametrize("layout", ["mel", "wave"])
def test_audio_ops_keep_shape_and_dtype_and_mask_spans(layout: str) -> None:
    s = aug.settings_for("audio", {"preset": "strong"})
    x = torch.randn(8, 200) if layout == "mel" else torch.rand(1, 1600) * 1.6 - 0.8
    t = aug.audio_transform(s, layout)
    y = t(x, aug.sample_generator(0, 0, 3))
    assert y.shape == x.shape and y.dtype == x.dtype and not torch.equal(x, y)
    assert torch.equal(y, t(x, aug.sample_generator(0, 0, 3)))
    if layout == "wave":
        assert float(y.abs().max()) <= 1.0
        pcm = (x * 32767).to(torch.int16)  # int16 waveforms stay int16
        assert t(pcm, aug.sample_generator(0, 0, 3)).dtype == torch.int16
    # a time mask alone zeroes whole columns (all bands, or the one channel) of at most 10% of the length
    masks = aug.audio_transform(aug.settings_for("audio", {"time_mask": 0.1, "time_masks": 1}), layout)
    widths = {int((masks(x, aug.sample_generator(0, 0, i)) == 0).all(0).sum()) for i in range(20)}
    assert max(widths) <= 0.1 * x.shape[1] and max(widths) > 0
    # a frequency mask on log-mel zeroes whole bands
    if layout == "mel":
        f = aug.audio_transform(aug.settings_for("audio", {"freq_mask": 0.5, "freq_masks": 1}), "mel")
        assert max(int((f(x, aug.sample_generator(0, 0, i)) == 0).all(1).sum()) for i in range(20)) >= 1


def test_audio_reader_augments_its_own_output() -> None:
    mel = AudioReader("voice", augment={"preset": "light"}).sample_transform(train=True)
    raw = AudioReader("voice", features="raw", augment={"preset": "light"}).sample_transform(train=True)
    assert (mel.layout, raw.layout) == ("mel", "wave")
    assert AudioReader("voice", augment={"preset": "light", "device": "cuda"}).sample_transform(train=True) is None


def test_the_per_batch_path_on_the_cpu_draws_what_the_per_sample_path_draws() -> None:
    x = torch.randint(0, 256, (5, 3, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    present = torch.tensor([True, True, False, True, True])
    x[2] = 0
    rows = torch.tensor([7, 3, 9, 0, 12])
    per_sample = ImageReader("photo", size=[12, 12], augment={"preset": "strong"})
    inputs = {"photo": x.clone()}
    apply_transforms(inputs, {"photo": present}, rows, {"photo": per_sample}, seed=4, epoch=2)
    batched = ImageReader("photo", size=[12, 12], augment={"preset": "strong", "device": "cuda"})
    assert batched.sample_transform(train=True) is None  # left to the training device
    out = aug.augment_batch(x, present, rows, batched.augment_transform(), seed=4, epoch=2, modality="photo")
    assert torch.equal(out, inputs["photo"])
    assert not torch.equal(out[present], x[present]) and not out[2].any()  # augmented; absent stays zeros


# ---------------------------------------------------------------------- in a run
def write_images(root: Path, n: int = 48) -> Path:
    """``n`` 8x8 images of two classes (a bright left or right half), a label and a split column."""
    rng = np.random.default_rng(0)
    lines = ["photo,label,fold"]
    for i in range(n):
        label = i % 2
        pixels = rng.integers(0, 80, (8, 8, 3), dtype=np.uint8)
        pixels[:, :4] += 150 if label == 0 else 0
        pixels[:, 4:] += 150 if label == 1 else 0
        Image.fromarray(pixels).save(root / f"{i}.png")
        lines.append(f"{i}.png,{label},{'train' if i < 32 else 'val'}")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root / "manifest.csv"


def image_run(tmp_path: Path, *extra: str) -> list[str]:
    return ["dataset=files", f"dataset.manifest={write_images(tmp_path)}", "dataset.split_column=fold",
            f"dataset.cache_dir={tmp_path / 'cache'}", "dataset.num_workers=0",
            "+reader@dataset.modalities.photo=image", "dataset.modalities.photo.size=[8,8]",
            "+target@dataset.tasks.label=label", "+encoder@model.encoders.photo=cnn",
            "model.encoders.photo.channels=[8]", "model.encoders.photo.out_dim=8", "+head@model.heads.label=linear",
            "trainer.batch_size=8", "logger.progress_bar=false", "logger.log_every_n_steps=1",
            "trainer.monitor=val/label/accuracy", *extra]


class Interrupted(Exception):
    pass


def test_an_augmented_run_resumed_after_a_crash_ends_as_an_uninterrupted_one(tmp_path: Path, one_thread: None,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    overrides = image_run(tmp_path, "augment=strong", "trainer.max_epochs=2", "trainer.checkpoint_every_n_steps=1")
    full = train(tmp_path / "full", overrides, tiny=False)
    split = full.data.splits["train"]
    index = torch.arange(6)
    a, b, c = split.batch(index, 0), split.batch(index, 0), split.batch(index, 1)
    raw = split.batch(index, None)  # evaluation: no augmentation
    assert torch.equal(a.inputs["photo"], b.inputs["photo"]) and a.inputs["photo"].dtype == torch.uint8
    assert not torch.equal(a.inputs["photo"], c.inputs["photo"]) and not torch.equal(a.inputs["photo"],
                                                                                     raw.inputs["photo"])

    original_save = TrainRecipe.save

    def save_then_die(self: TrainRecipe, name: str) -> None:  # killed mid-epoch 1, right after a checkpoint
        original_save(self, name)
        if self.step == 3:
            raise Interrupted

    monkeypatch.setattr(TrainRecipe, "save", save_then_die)
    with pytest.raises(Interrupted):
        train(tmp_path / "resumed", overrides, tiny=False)
    monkeypatch.setattr(TrainRecipe, "save", original_save)
    resumed = train(tmp_path / "resumed", [*overrides, "trainer.resume=auto"], tiny=False)
    assert resumed.resumed_from is not None and resumed.step == full.step == 8
    assert resumed.best == full.best and math.isfinite(full.best["value"])
    for (k, x), y in zip(full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(x, y), k


def test_augment_device_cuda_augments_per_batch_on_the_training_device(tmp_path: Path, one_thread: None) -> None:
    recipe = train(tmp_path / "run", image_run(tmp_path, "augment=light", "augment.device=cuda", "trainer.device=cpu",
                                               "trainer.max_epochs=1"), tiny=False)
    assert isinstance(recipe.train_loader, aug.AugmentedLoader)
    assert list(recipe.train_loader.augment.transforms) == ["photo"] and math.isfinite(recipe.best["value"])


def test_each_modality_of_a_sample_draws_from_its_own_stream() -> None:
    # An image's crop and the same sample's audio shift must not come from one stream of draws.
    from mtmm_train.data.base import sample_seed

    assert sample_seed(0, 1, 5, "photo") != sample_seed(0, 1, 5, "voice")
    a = torch.rand(8, generator=aug.sample_generator(0, 1, 5, "photo"))
    b = torch.rand(8, generator=aug.sample_generator(0, 1, 5, "voice"))
    assert not torch.equal(a, b)
