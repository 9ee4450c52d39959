"""The video modality: PyAV clips made here, frame sampling, the frames encoder, bad clips, and one CLI run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from conftest import run_cli
from omegaconf import OmegaConf

from mtmm_train.batch import ModalitySpec
from mtmm_train.data import augment as aug
from mtmm_train.data.files import files
from mtmm_train.data.readers import VideoReader
from mtmm_train.encoders import FramesEncoder
from mtmm_train.errors import UserError
from mtmm_train.instantiate import build


def level(i: int) -> int:
    """The grey level frame ``i`` is painted with (far apart: the codec cannot blur one into the next)."""
    return 20 + 25 * i


def write_clip(path: Path, frames: int = 8, size: int = 16, offset: int = 0) -> Path:
    """A lossless clip whose frame ``i`` is a flat grey of :func:`level` ``(i)``, plus ``offset``."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("ffv1", rate=8)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv444p"
        for i in range(frames):
            image = np.full((size, size, 3), min(255, level(i) + offset), dtype=np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode())
    return path


def frame_ids(clip: torch.Tensor) -> list[int]:
    """Which painted frame each frame of ``(T, C, H, W)`` is."""
    return [round((float(f.float().mean()) - 20) / 25) for f in clip]


def test_frames_are_sampled_uniformly_in_evaluation_and_at_random_per_segment_in_training(tmp_path: Path) -> None:
    path = write_clip(tmp_path / "clip.mkv")
    reader = VideoReader("clip", frames=4, pool=2, size=[8, 8])
    clip = reader.decode(path)
    assert clip.shape == (8, 3, 8, 8) and clip.dtype == torch.uint8
    assert frame_ids(clip) == list(range(8))  # all 8 frames kept: 4 segments of 2 candidates
    evaluation = reader.sample_transform(train=False)(clip, aug.sample_generator(0, None, 0))
    assert frame_ids(evaluation) == [1, 1, 3, 3, 5, 5, 7, 7]  # each segment's middle frame, repeated `pool` times
    draws = [frame_ids(reader.sample_transform(train=True)(clip, aug.sample_generator(0, e, 0))) for e in range(12)]
    for ids in draws:
        chosen = ids[::2]
        assert ids == [i for i in chosen for _ in range(2)]
        assert all(2 * s <= i <= 2 * s + 1 for s, i in enumerate(chosen))  # one frame of each segment
    assert len({tuple(d) for d in draws}) > 1  # the choice changes with the epoch ...
    again = reader.sample_transform(train=True)(clip, aug.sample_generator(0, 3, 0))
    assert frame_ids(again) == draws[3]  # ... and only with it
    fixed = VideoReader("clip", frames=4, pool=1, size=[8, 8])
    assert frame_ids(fixed.decode(path)) == [1, 3, 5, 7] and fixed.sample_transform(train=False) is None


def test_the_frames_encoder_reads_every_pool_th_frame_with_any_image_encoder() -> None:
    spec = ModalitySpec("clip", (8, 3, 8, 8), "video", info={"frames": 4, "pool": 2})
    x = torch.randint(0, 256, (2, 8, 3, 8, 8), dtype=torch.uint8)
    for temporal in ("mean", "transformer"):
        enc = FramesEncoder(spec, frame="mlp", temporal=temporal, out_dim=8).eval()
        assert enc.tokens(x).shape == (2, 4, 8) and enc(x).shape == (2, 8)
        twice = x.clone()
        twice[:, 1::2] = 0  # only the first of each pair is read
        torch.testing.assert_close(enc(x), enc(twice))
    node = OmegaConf.create({"_target_": "mtmm_train.encoders.frames.FramesEncoder", "_recursive_": False,
                             "frame": {"_target_": "mtmm_train.encoders.cnn.CNNEncoder", "out_dim": 0}})
    with pytest.raises(UserError, match=r"^model\.encoders\.clip\.frame\.out_dim must be a size >= 1, found 0"):
        build(node, "model.encoders.clip", modality=spec)
    node.frame = "nothing"
    with pytest.raises(UserError, match=r"^model\.encoders\.clip\.frame names no encoder config, found 'nothing'"):
        build(node, "model.encoders.clip", modality=spec)


def manifest(root: Path, n: int = 24, broken: bool = False) -> Path:
    lines = ["clip,x,label,fold"]
    for i in range(n):
        label = i % 2
        cell = f"{i}.mkv" if i % 6 != 5 else ""  # every sixth clip is missing
        if cell:
            write_clip(root / cell, offset=40 * label)
        lines.append(f"{cell},{i / n:.3f},{label},{'train' if i < 16 else 'val'}")
    if broken:
        (root / "3.mkv").write_bytes(b"not a video")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root / "manifest.csv"


def test_missing_clips_are_absent_and_a_broken_one_is_named_with_its_row(tmp_path: Path) -> None:
    video = {"_target_": "mtmm_train.data.readers.video.VideoReader", "frames": 2, "size": [8, 8]}
    tasks = {"label": {"_target_": "mtmm_train.data.readers.label.ClassLabel"}}
    x = {"_target_": "mtmm_train.data.readers.numeric.NumericReader"}
    data = files(str(manifest(tmp_path)), {"clip": video, "x": x}, tasks, split_column="fold", cache=False,
                 num_workers=0)
    train = data.splits["train"]
    assert data.modalities["clip"].kind == "video" and data.modalities["clip"].shape == (4, 3, 8, 8)
    assert train.present["clip"].tolist() == [i % 6 != 5 for i in range(16)]
    (tmp_path / "b").mkdir()
    with pytest.raises(UserError, match=r"^dataset\.modalities\.clip: .*3\.mkv.*row 4") as e:
        files(str(manifest(tmp_path / "b", broken=True)), {"clip": video, "x": x}, tasks, split_column="fold",
              cache=False, num_workers=0)
    assert "\n" not in str(e.value)


def test_a_video_and_a_numeric_modality_train_from_the_cli(tmp_path: Path) -> None:
    path = manifest(tmp_path)
    args = ["dataset=files", f"dataset.manifest={path}", "dataset.split_column=fold", "dataset.cache=false",
            "dataset.num_workers=0", "+reader@dataset.modalities.clip=video", "dataset.modalities.clip.frames=2",
            "dataset.modalities.clip.size=[8,8]", "+reader@dataset.modalities.x=numeric",
            "+target@dataset.tasks.label=label", "+encoder@model.encoders.clip=frames",
            "model.encoders.clip.temporal=transformer", "model.encoders.clip.out_dim=8",
            "model.encoders.clip.frame.out_dim=8", "model.encoders.clip.frame.channels=[4]",
            "+encoder@model.encoders.x=mlp", "+head@model.heads.label=linear", "augment=light",
            "trainer.max_epochs=1", "trainer.batch_size=4", "trainer.monitor=val/label/accuracy",
            "logger.progress_bar=false", f"hydra.run.dir={tmp_path / 'run'}"]
    done = run_cli(args, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert math.isfinite(metrics["best"]["metrics"]["val/label/accuracy"])


def test_mtmm_predict_applies_the_evaluation_frame_choice_as_evaluation_does(tmp_path: Path) -> None:
    # The video reader's evaluation transform picks each segment's middle frame; predictions on new rows
    # must see the frames evaluation saw, or they would differ from the model on its own validation split.
    from conftest import compose_cfg

    from mtmm_train.evaluate import load_run
    from mtmm_train.predict import NewManifest, PredictConfig, predict
    from mtmm_train.recipe import TrainRecipe

    path = manifest(tmp_path)
    cfg = compose_cfg(["dataset=files", f"dataset.manifest={path}", "dataset.split_column=fold", "dataset.cache=false",
                       "dataset.num_workers=0", "+reader@dataset.modalities.clip=video",
                       "dataset.modalities.clip.frames=2", "dataset.modalities.clip.size=[8,8]",
                       "+target@dataset.tasks.label=label", "+encoder@model.encoders.clip=frames",
                       "model.encoders.clip.out_dim=8", "model.encoders.clip.frame.out_dim=8",
                       "model.encoders.clip.frame.channels=[4]", "+head@model.heads.label=linear",
                       "trainer.max_epochs=1", "trainer.batch_size=4", "logger=none"])
    recipe = TrainRecipe(cfg, tmp_path / "run")
    recipe.setup()
    recipe.train()
    ckpt = tmp_path / "run" / "checkpoints" / "best.pt"
    lines = path.read_text().splitlines()
    val = [line.split(",")[0] for line in lines[1:] if line.endswith(",val")]
    (tmp_path / "new.csv").write_text("clip\n" + "\n".join(val) + "\n")
    out = predict(PredictConfig(checkpoint=str(ckpt), dataset=NewManifest(manifest=str(tmp_path / "new.csv")),
                                output=str(tmp_path / "p.csv")))
    got = [line.split(",") for line in out.read_text().splitlines()]
    header, rows_ = got[0], got[1:]
    columns = [i for i, name in enumerate(header) if name.startswith("label/p_")]
    probs = torch.tensor([[float(r[i]) for i in columns] for r in rows_])
    run = load_run(ckpt, "cpu")
    split = run.splits["val"]
    batch = split.batch(torch.arange(len(split)))  # evaluation's frames (the transform with train=False)
    with torch.no_grad():
        preds, _ = run.model(batch.inputs, batch.present)
    assert torch.allclose(probs, preds["label"].softmax(1), atol=1e-5)
