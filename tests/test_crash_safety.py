"""kill -9 at a dozen points (some mid-checkpoint-write); each run resumed ends exactly as an uninterrupted one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import HANG_GUARD_S, ROOT, train
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mtmm_train import checkpoint
from mtmm_train.tensorboard import event_dir

# 16 steps an epoch, 2 epochs; last.pt every 5 steps and at each epoch's end (after best.pt).
# Checkpoint writes, in order: 1 last@5, 2 last@10, 3 last@15, 4 best@16, 5 last@16, 6 last@20,
# 7 last@25, 8 last@30, then best@32 if epoch 2 is better, and last@32.
# Batches of 8: the same steps and writes as batches of 32 of 512 samples, for a quarter of the compute
# (24 runs in all); a validation split of 32.
OVERRIDES = [
    "dataset.num_train=128",
    "dataset.num_val=32",
    "dataset.num_test=16",
    "trainer.batch_size=8",
    "trainer.max_epochs=2",
    "trainer.checkpoint_every_n_steps=5",
    "trainer.deterministic=true",
    "logger.progress_bar=false",
    "logger.log_every_n_steps=3",
]
POINTS = [
    "step:3",      # before the first checkpoint: the resumed run starts afresh
    "step:7",      # between two mid-epoch checkpoints
    "step:16",     # the epoch's last step, before its evaluation
    "step:29",     # in the second epoch
    "write:1",     # the first checkpoint torn halfway: no last.pt at all
    "write:4",     # best.pt torn halfway
    "write:5",     # last.pt torn halfway at the end of epoch 1
    "rename:2",    # written and fsynced, not yet renamed
    "rename:8",
    "renamed:5",   # renamed, the folder not yet fsynced
    "eval:2",      # during the last evaluation
    "finish:1",    # after the last checkpoint, before metrics.json
]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return checkpoint.load(path)["model"]


def train_log(run: Path) -> dict[str, list[tuple[int, float]]]:
    """The training log's (step, value) pairs of a loss and a weight tag."""
    events = EventAccumulator(str(event_dir(run)), size_guidance={"scalars": 0}).Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in ("train/loss/total",
                                                                              "train/weight/category")}


def crash_and_resume(tmp_path: Path, overrides: list[str], points: list[str]) -> None:
    """Kill a run at each point, resume it, and compare everything with an uninterrupted run."""
    reference = tmp_path / "reference"
    train(reference, overrides, tiny=False)
    expected = json.loads((reference / "metrics.json").read_text())

    crashed = tmp_path / "crashed"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "crash_driver.py"), str(crashed), *points, "--",
                           *overrides], capture_output=True, text=True, env=env, timeout=HANG_GUARD_S)
    assert done.returncode == 0, done.stderr[-3000:]
    ends = (crashed / "fault-points.txt").read_text().splitlines()
    assert ends == [f"{p} killed" for p in points], done.stderr[-3000:]

    for point in points:
        run = crashed / point.replace(":", "-")
        assert not (run / "metrics.json").exists(), point
        last = run / "checkpoints" / "last.pt"
        if last.exists():
            checkpoint.load(last)  # never torn: the old file or the new one
        train(run, [*overrides, "trainer.resume=auto"], tiny=False)

        result = json.loads((run / "metrics.json").read_text())
        for key in ("best", "final", "epochs", "steps", "stopped_early"):
            assert result[key] == expected[key], f"{point}: {key}"
        for name in ("best.pt", "last.pt"):
            got, want = weights(run / "checkpoints" / name), weights(reference / "checkpoints" / name)
            assert all(torch.equal(got[k], want[k]) for k in want), f"{point}: {name}"
        assert not list((run / "checkpoints").glob(".*.tmp")), point  # a killed write's leftovers are gone
        # No step lost or logged twice, and the same values: the log's running sums are checkpointed.
        assert train_log(run) == train_log(reference), point


@pytest.mark.slow
def test_kill_9_anywhere_then_resume_gives_the_uninterrupted_result(tmp_path: Path, one_thread: None) -> None:
    crash_and_resume(tmp_path, OVERRIDES, POINTS)


def test_a_run_killed_after_its_early_stop_does_not_train_on_when_resumed(tmp_path: Path, one_thread: None) -> None:
    # Patience 1 on a metric that drops after epoch 1: the run stops after epoch 2 of 4. Killed
    # before metrics.json, the resumed run must write it without training a third epoch.
    # On 512 samples in batches of 32 (16 steps an epoch), where the metric drops after epoch 1.
    overrides = [*OVERRIDES, "dataset.num_train=512", "dataset.num_val=128", "dataset.num_test=64",
                 "trainer.batch_size=32", "trainer.max_epochs=4", "trainer.early_stopping_patience=1",
                 "trainer.monitor=val/match/auroc", "trainer.monitor_mode=max"]
    crash_and_resume(tmp_path, overrides, ["finish:1"])
    assert json.loads((tmp_path / "reference" / "metrics.json").read_text())["stopped_early"]
