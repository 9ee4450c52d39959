"""Data parallelism under torchrun (CPU, gloo, 2 processes) against one process with the global batch."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import HANG_GUARD_S, ROOT, compose_cfg, run_cli, train

from mtmm_train import resolvers
from mtmm_train.data import InMemoryLoader
from mtmm_train.instantiate import build
from mtmm_train.tensorboard import event_dir

# No BatchNorm: torch's SyncBatchNorm is GPU-only, and per-rank batch statistics differ from the
# global batch's. Dropout-free, so two processes must match one process to float rounding.
SMALL = [
    "model.encoders.image.batch_norm=false",
    "model.encoders.audio.batch_norm=false",
    "dataset.num_train=512",
    "dataset.num_val=128",
    "dataset.num_test=64",
    "trainer.max_epochs=2",
    "logger.progress_bar=false",
    "logger.log_every_n_steps=2",
]
TORCHRUN = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "mtmm_train"]
ENV = {"OMP_NUM_THREADS": "1"}
TOLERANCE = 1e-5  # float rounding: gradients are summed in another order


def final_metrics(run_dir: Path) -> dict[str, float]:
    return json.loads((run_dir / "metrics.json").read_text())["final"]


def assert_same_metrics(a: dict[str, float], b: dict[str, float]) -> None:
    assert a.keys() == b.keys()
    diff = {k: abs(a[k] - b[k]) for k in a}
    worst = max(diff, key=diff.get)
    assert diff[worst] <= TOLERANCE, f"{worst}: {a[worst]} vs {b[worst]}"


@pytest.mark.slow
@pytest.mark.parametrize(("balancer", "accumulate"), [
    # weights from the representation's Gramian, and state from loss values
    (["balancer=gradnorm"], 1),
    # writes .grad itself (averaged outside DDP's hooks); two micro-batches per step, each
    # weighted by the balancer on its own (so one process accumulates two as well)
    (["balancer=upgrad", "balancer.mode=parameters"], 2),
], ids=["gradnorm", "upgrad-parameters-accumulated"])
def test_two_processes_match_one_process_with_the_global_batch(balancer: list[str], accumulate: int, tmp_path: Path,
                                                               one_thread: None) -> None:
    batch = [f"trainer.batch_size={32 // accumulate}", f"trainer.accumulate_grad_batches={accumulate}"]
    logs = tmp_path / "logs"
    done = run_cli([*TORCHRUN, *SMALL, *balancer, *batch, f"paths.log_dir={logs}"],
                   cwd=tmp_path, module="", env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]

    # One run folder for both ranks (${mtmm_now:} is rank 0's time); rank 1 keeps its own
    # .hydra and log file there; only rank 0 writes TensorBoard events and checkpoints.
    runs = list((logs / "runs").iterdir())
    assert len(runs) == 1, runs
    run = runs[0]
    assert (run / ".hydra" / "config.yaml").is_file() and (run / ".hydra_rank1" / "config.yaml").is_file()
    assert "(rank 1 of 2)" in (run / "mtmm-train_rank1.log").read_text()
    assert "(rank 1 of 2)" not in done.stdout + done.stderr  # rank 1: warnings only on the console
    assert len(list(event_dir(run).glob("events.out.tfevents.*"))) == 1
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    assert json.loads((run / "metrics.json").read_text())["world_size"] == 2

    one = train(tmp_path / "one", [*SMALL, *balancer, f"trainer.batch_size={64 // accumulate}",
                                   f"trainer.accumulate_grad_batches={accumulate}"], tiny=False)
    assert_same_metrics(final_metrics(run), one.last_metrics)


@pytest.mark.slow
def test_a_rank_without_labels_of_a_task_in_its_validation_share(tmp_path: Path, one_thread: None) -> None:
    # 12 validation samples, 10% of them labelled for score: rank 0's six hold none, rank 1's three.
    # Metrics are computed from the gathered predictions, the same as in one process.
    args = [*SMALL, "dataset.num_val=12", "dataset.label_fraction.score=0.1", "trainer.max_epochs=1"]
    val = build(compose_cfg(args).dataset, "dataset").splits["val"].labeled["score"]
    assert int(val[0::2].sum()) == 0 and int(val[1::2].sum()) == 3
    done = run_cli([*TORCHRUN, *args, "trainer.batch_size=32", f"hydra.run.dir={tmp_path / 'two'}"], cwd=tmp_path,
                   module="", env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    one = train(tmp_path / "one", [*args, "trainer.batch_size=64"], tiny=False)
    assert_same_metrics(final_metrics(tmp_path / "two"), one.last_metrics)


def test_a_training_split_smaller_than_one_global_batch_is_a_clear_error(tmp_path: Path) -> None:
    done = run_cli([*TORCHRUN, "dataset.num_train=6", "trainer.batch_size=8", f"hydra.run.dir={tmp_path}"],
                   cwd=tmp_path, module="", env=ENV)  # run_cli's hang guard: the error, not a hang
    assert done.returncode != 0
    assert "mtmm-train: error: the training split has 6 samples, fewer than one global batch " \
           "(trainer.batch_size=8 x 2 processes)" in done.stderr


@pytest.mark.slow
def test_sigterm_to_torchrun_checkpoints_every_rank_at_one_step_and_resume_is_exact(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = [*SMALL, "dataset.num_train=4096", "trainer.max_epochs=3", "trainer.batch_size=32",
            f"hydra.run.dir={run}"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT), **ENV}
    proc = subprocess.Popen([sys.executable, *TORCHRUN, *args], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    log = run / "mtmm-train.log"
    deadline = time.monotonic() + HANG_GUARD_S  # a hang guard, not a speed limit
    while not (log.is_file() and "epoch 1:" in log.read_text()):  # training is under way
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)  # what SLURM sends torchrun before the time limit
    _, err = proc.communicate(timeout=HANG_GUARD_S)  # both ranks stop: a hang fails
    stops = re.findall(r"mtmm-train: stopped by SIGTERM at step (\d+)", err)  # the ranks' lines may interleave
    assert len(stops) == 2 and stops[0] == stops[1], err[-3000:]  # both ranks, at the same step
    assert (run / "checkpoints" / "last.pt").is_file()
    assert not (run / "metrics.json").exists()

    done = run_cli([*TORCHRUN, *args, "trainer.resume=auto"], cwd=tmp_path, module="", env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    # Exactly the uninterrupted two-process run (against one process the runs agree only to float
    # rounding, which 384 steps amplify to about 1e-4 in some metrics).
    whole = tmp_path / "whole"
    done = run_cli([*TORCHRUN, *args[:-1], f"hydra.run.dir={whole}"], cwd=tmp_path, module="", env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    assert final_metrics(run) == final_metrics(whole)


def test_ranks_split_each_training_batch_of_one_process_and_share_evaluation(one_thread: None) -> None:
    split = build(compose_cfg(["dataset.num_train=100"]).dataset, "dataset").splits["train"]
    one = InMemoryLoader(split, 20, shuffle=True, drop_last=True, seed=3)
    ranks = [InMemoryLoader(split, 10, shuffle=True, drop_last=True, seed=3, rank=r, world_size=2) for r in (0, 1)]
    assert len(one) == len(ranks[0]) == len(ranks[1]) == 5
    for batch, part0, part1 in zip(one.indices(1), ranks[0].indices(1), ranks[1].indices(1), strict=True):
        assert torch.equal(batch, torch.cat([part0, part1]))
    # Evaluation: every sample once, over ranks of (almost) equal shares.
    shares = [torch.cat(list(InMemoryLoader(split, 7, rank=r, world_size=3).indices(0))) for r in range(3)]
    assert sorted(len(s) for s in shares) == [33, 33, 34]
    assert sorted(torch.cat(shares).tolist()) == list(range(100))


def test_run_folder_time_is_fixed_per_process_and_rank_suffix_names_other_ranks(monkeypatch) -> None:
    from omegaconf import OmegaConf

    monkeypatch.setattr(resolvers, "RUN_TIME", 1_000_000_000.0)
    cfg = OmegaConf.create({"dir": "${mtmm_now:%Y}", "sub": ".hydra${mtmm_rank_suffix:}"})
    monkeypatch.setenv("RANK", "0")
    assert cfg.dir == time.strftime("%Y", time.localtime(1_000_000_000.0)) and cfg.sub == ".hydra"
    monkeypatch.setenv("RANK", "3")
    assert cfg.sub == ".hydra_rank3"
