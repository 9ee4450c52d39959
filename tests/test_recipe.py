"""The training loop: logging, checkpoints and resume, determinism, precision, accumulation."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import HANG_GUARD_S, TINY, compose_cfg, train
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mtmm_train.errors import UserError
from mtmm_train.recipe import Preempted, TrainRecipe
from mtmm_train.tensorboard import event_dir

TASKS = ("category", "match", "tags", "score")


def scalars(folder: Path) -> EventAccumulator:
    acc = EventAccumulator(str(event_dir(folder)), size_guidance={"scalars": 0})
    acc.Reload()
    return acc


def test_tensorboard_has_a_tag_per_task_with_one_point_per_step_or_epoch(tmp_path: Path) -> None:
    recipe = train(tmp_path, ["trainer.max_epochs=2"])  # 3 steps per epoch, logged every step
    acc = scalars(tmp_path)
    tags = set(acc.Tags()["scalars"])
    for t in TASKS:
        assert len(acc.Scalars(f"train/loss/{t}")) == 6
        assert len(acc.Scalars(f"train/weight/{t}")) == 6
        assert len(acc.Scalars(f"val/loss/{t}")) == 2
    for key in ("val/category/accuracy", "val/category/f1_macro", "val/match/auroc", "val/tags/auroc",
                "val/score/mae", "val/score/rmse", "val/score/r2"):
        assert len(acc.Scalars(key)) == 2, key
    assert {"train/loss/total", "train/lr", "train/samples_per_s", "val/loss/total"} <= tags
    assert not any(t.startswith("train/grad_cosine/") for t in tags)  # off unless asked for
    assert [e.step for e in acc.Scalars("val/loss/total")] == [3, 6]
    # One run, named after the run folder; the hparams and best values in its `best` subfolder, no card of their own.
    assert [p.name for p in (tmp_path / "tensorboard").iterdir()] == [tmp_path.name]
    assert sorted(p.name for p in event_dir(tmp_path).iterdir() if p.is_dir()) == ["best", "test"]
    assert not any(t.startswith("best/") for t in tags)
    assert recipe.step == 6


def test_metrics_json_and_checkpoints(tmp_path: Path) -> None:
    recipe = train(tmp_path, ["trainer.max_epochs=2"])
    result = json.loads((tmp_path / "metrics.json").read_text())
    assert result["monitor"] == "val/loss/total" and result["steps"] == 6 and result["epochs"] == 2
    assert result["best"]["value"] == min(result["best"]["value"], result["final"]["val/loss/total"])
    assert set(result["final"]) == set(recipe.metric_keys)
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "step", "epoch", "config", "balancer"} <= set(state)
    assert isinstance(state["config"], dict) and state["config"]["trainer"]["max_epochs"] == 2
    assert state["step"] == 6


def test_same_seed_same_metrics_other_seed_other_metrics(tmp_path: Path) -> None:
    a = train(tmp_path / "a").best["metrics"]
    b = train(tmp_path / "b").best["metrics"]
    c = train(tmp_path / "c", ["seed=1"]).best["metrics"]
    assert a == b
    assert a != c


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("balancer", [[], ["balancer=rlw"]], ids=["default", "rlw"])  # rlw: its own generator
def test_resume_mid_epoch_gives_the_same_result_as_an_uninterrupted_run(tmp_path: Path, balancer: list[str],
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    overrides = ["trainer.max_epochs=3", "trainer.checkpoint_every_n_steps=1", "model.modality_dropout=0.3",
                 *balancer]
    full = train(tmp_path / "full", overrides)

    # Kill the second run right after the checkpoint of step 4 (in the middle of epoch 2).
    original_save = TrainRecipe.save

    def save_then_die(self: TrainRecipe, name: str) -> None:
        original_save(self, name)
        if self.step == 4:
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
    # TensorBoard continues without duplicated steps.
    steps = [e.step for e in scalars(tmp_path / "resumed").Scalars("train/loss/total")]
    assert steps == sorted(set(steps)) and steps[-1] == 9


def test_a_metric_that_needs_more_labelled_samples_is_nan_not_a_crash(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    # 4 validation samples, one of them labelled for score: R^2 needs two.
    recipe = train(tmp_path, ["dataset.num_val=4"])
    assert math.isnan(recipe.last_metrics["val/score/r2"]) and math.isfinite(recipe.last_metrics["val/score/mae"])
    assert "val/score/r2 is NaN: Needs at least two samples" in caplog.text


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_on_cpu(precision: str, tmp_path: Path) -> None:
    recipe = train(tmp_path, [f"trainer.precision={precision}", "trainer.max_epochs=2"])
    assert all(math.isfinite(v) for k, v in recipe.best["metrics"].items() if "/loss/" in k)
    assert recipe.scaler.is_enabled() == (precision == "fp16")
    assert math.isfinite(recipe.best["value"])


def test_gradient_accumulation_takes_one_step_per_n_batches(tmp_path: Path) -> None:
    recipe = train(tmp_path, ["trainer.accumulate_grad_batches=3", "trainer.limit_train_batches=6",
                              "trainer.max_epochs=2"])
    assert recipe.step == 4


def test_gradient_accumulation_equals_one_batch_of_all_its_samples(tmp_path: Path, one_thread: None) -> None:
    # `score` is labelled on a fraction of the samples, so the two micro-batches of a step hold
    # different numbers of its labels: each micro-batch's mean loss counts by its share of them.
    # (Before: 8e-3 apart in the parameters, and the logged losses were 3 times too large with 3.)
    base = ["modalities=[tabular]", "trainer.max_epochs=1", "dataset.num_train=512", "dataset.num_val=64",
            "trainer.gradient_clip_norm=null", "logger.progress_bar=false", "logger.log_every_n_steps=1"]
    one = train(tmp_path / "one", base + ["trainer.batch_size=96"], tiny=False)
    acc = train(tmp_path / "acc", base + ["trainer.batch_size=32", "trainer.accumulate_grad_batches=3"], tiny=False)
    # 512 = 5 x 96 + 32: the last step is one micro-batch of 32 (trainer.drop_last=false), weighted as one batch.
    assert one.step == acc.step == 6
    params = [torch.cat([p.detach().flatten() for p in r.model.parameters()]) for r in (one, acc)]
    assert torch.allclose(*params, atol=1e-6)
    logged = []
    for run in ("one", "acc"):
        events = EventAccumulator(str(event_dir(tmp_path / run)))
        events.Reload()
        logged.append([e.value for t in ("score", "category") for e in events.Scalars(f"train/loss/{t}")])
    assert len(logged[0]) == 12 and logged[0] == pytest.approx(logged[1], rel=1e-5)


def test_early_stopping(tmp_path: Path) -> None:
    # With a zero learning rate and no BatchNorm statistics to update, nothing ever improves.
    recipe = train(tmp_path, ["trainer.max_epochs=5", "trainer.early_stopping_patience=2", "optimizer.lr=0",
                              "model.encoders.image.batch_norm=false", "model.encoders.audio.batch_norm=false"])
    assert recipe.epoch == 3
    assert json.loads((tmp_path / "metrics.json").read_text())["stopped_early"] is True


def test_monitor_mode_max_tracks_the_largest_value(tmp_path: Path) -> None:
    recipe = train(tmp_path, ["trainer.max_epochs=3", "trainer.monitor=val/category/accuracy",
                              "trainer.monitor_mode=max"])
    history = [json.loads((tmp_path / "metrics.json").read_text())["final"]["val/category/accuracy"]]
    assert recipe.best["value"] >= max(history)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compile(mode: str, tmp_path: Path) -> None:
    recipe = train(tmp_path, ["trainer.compile=true", f"trainer.compile_mode={mode}", "modalities=[tabular]",
                              "tasks=[score]"])
    assert recipe.forward_model is not recipe.model
    assert math.isfinite(recipe.best["value"])


@pytest.mark.parametrize("accumulate", [1, 2])
def test_sigterm_checkpoints_and_resume_gives_the_uninterrupted_result(accumulate: int, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # 3 optimizer steps per epoch either way; with 2 micro-batches a step, the resumed epoch
    # must start at a step's first micro-batch.
    overrides = ["trainer.max_epochs=3", f"trainer.accumulate_grad_batches={accumulate}",
                 f"trainer.limit_train_batches={3 * accumulate}"]
    full = train(tmp_path / "full", overrides)

    original_step = TrainRecipe.optimizer_step

    def step_then_signal(self: TrainRecipe, skip: bool = False) -> None:
        original_step(self, skip)
        if self.step == 5:  # the scheduler of a cluster sends SIGTERM in the middle of epoch 2
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(TrainRecipe, "optimizer_step", step_then_signal)
    with pytest.raises(Preempted, match="stopped by SIGTERM at step 5"):
        train(tmp_path / "run", overrides)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    monkeypatch.setattr(TrainRecipe, "optimizer_step", original_step)
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["step"] == 5

    resumed = train(tmp_path / "run", [*overrides, "trainer.resume=auto"])
    assert resumed.step == full.step == 9 and resumed.best == full.best
    steps = [e.step for e in scalars(tmp_path / "run").Scalars("train/loss/total")]
    assert steps == list(range(1, 10))  # TensorBoard continues without duplicated steps


def test_sigusr2_with_a_requeue_handler_writes_last_pt_then_calls_it(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # submitit installs a SIGUSR2 handler that requeues the job and exits; it must run only after
    # last.pt holds the step the signal interrupted.
    calls = []

    def requeue(signum: int, frame: object) -> None:
        state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
        calls.append((signum, state["step"]))
        raise SystemExit(0)

    original_step = TrainRecipe.optimizer_step

    def step_then_signal(self: TrainRecipe, skip: bool = False) -> None:
        original_step(self, skip)
        if self.step == 2:
            os.kill(os.getpid(), signal.SIGUSR2)

    monkeypatch.setattr(TrainRecipe, "optimizer_step", step_then_signal)
    previous = signal.signal(signal.SIGUSR2, requeue)
    try:
        with pytest.raises(SystemExit):
            train(tmp_path, ["trainer.max_epochs=3"])
        assert calls == [(signal.SIGUSR2, 2)]
        assert signal.getsignal(signal.SIGUSR2) is requeue  # restored
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_sigterm_from_outside_exits_with_the_preempted_status(tmp_path: Path) -> None:
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "mtmm_train", f"hydra.run.dir={run}", *TINY, "trainer.max_epochs=1000"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + HANG_GUARD_S  # a hang guard, not a speed limit
    while not (run / "checkpoints" / "last.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=HANG_GUARD_S)  # SIGTERM stops it: a hang fails
    assert proc.returncode == 3, err[-2000:]
    assert "stopped by SIGTERM" in err and "trainer.resume=auto" in err and "Traceback" not in err
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert 0 < state["step"] < 3000


@pytest.mark.parametrize("policy", ["skip", "stop"])
def test_nonfinite_loss_policy(policy: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mtmm_train.tasks.regression import RegressionTask

    calls = {"n": 0}
    original = RegressionTask.per_sample_loss

    def nan_on_second_batch(self, pred, target, labeled):  # noqa: ANN001, ANN202
        calls["n"] += 1
        loss = original(self, pred, target, labeled)
        return loss * float("nan") if calls["n"] == 2 else loss

    monkeypatch.setattr(RegressionTask, "per_sample_loss", nan_on_second_batch)
    if policy == "stop":
        expected = r"non-finite loss for task\(s\) score at step 2 \(trainer.nonfinite=stop\)"
        with pytest.raises(UserError, match=expected):
            train(tmp_path, ["trainer.nonfinite=stop", "logger.tensorboard=false"])
        return
    recipe = train(tmp_path, ["trainer.nonfinite=skip", "trainer.max_epochs=2"])
    assert recipe.skipped_steps == 1 and recipe.step == 6
    assert all(torch.isfinite(p).all() for p in recipe.model.parameters())
    assert json.loads((tmp_path / "metrics.json").read_text())["skipped_steps"] == 1


@pytest.mark.parametrize(("overrides", "expected"), [
    ([], True), (["trainer.cudnn_benchmark=false"], False), (["trainer.deterministic=true"], False)])
def test_cudnn_benchmark_follows_the_config(overrides: list[str], expected: bool, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # A process-wide flag (no effect on the CPU): set at setup, off whenever runs must be deterministic.
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", not expected)
    try:
        TrainRecipe(compose_cfg(TINY + overrides), tmp_path).setup()
        assert torch.backends.cudnn.benchmark is expected
    finally:
        torch.use_deterministic_algorithms(False)
