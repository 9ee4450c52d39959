"""Two runs, one folder: the run folder's lock (mtmm_train/runlock.py), through the real CLI.

A lock is held deterministically by a helper process that takes it and then waits on its stdin
(or by a real run paused before training the same way): no sleeps, no timing.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import HANG_GUARD_S, ROOT, TINY, run_cli, train

from mtmm_train import runlock
from mtmm_train.errors import UserError
from mtmm_train.tensorboard import event_dir

ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}

# Takes the lock of argv[1], says so, and holds it until a line arrives on stdin.
HOLDER = r"""
import sys
from mtmm_train import runlock
lock = runlock.acquire(sys.argv[1])
print("held", flush=True)
sys.stdin.readline()
lock.release()
"""

# The real mtmm-train, paused after setup (lock held, nothing trained) until a line arrives on stdin.
PAUSED_RUN = r"""
import sys
from mtmm_train import cli
from mtmm_train.recipe import TrainRecipe
setup = TrainRecipe.setup
def paused(self):
    setup(self)
    print("set up", flush=True)
    sys.stdin.readline()
TrainRecipe.setup = paused
sys.argv = ["mtmm-train", *sys.argv[1:]]
cli.main()
"""


def start(code: str, *args: str, stderr: Path) -> subprocess.Popen:
    """Start ``python -c code args``; wait (on its stdout, not the clock) until it says it holds the lock."""
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=stderr.open("w"), text=True, env=ENV)
    for line in proc.stdout:  # Hydra's console log comes first, for a real run
        if line.strip() in ("held", "set up"):
            return proc
    proc.wait(timeout=HANG_GUARD_S)
    raise AssertionError(f"the holder exited with {proc.returncode} without the lock: {stderr.read_text()[-2000:]}")


def let_go(proc: subprocess.Popen) -> int:
    """Tell a holder to release and end; its exit status."""
    proc.communicate("\n", timeout=HANG_GUARD_S)
    return proc.returncode


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (Hydra's files and logs included) and a hash of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(proc: subprocess.CompletedProcess, tool: str = "mtmm-train") -> str:
    """The single line on stderr (no traceback); returns it."""
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"{tool}: error: "), proc.stderr[-3000:]
    return lines[0]


@pytest.fixture
def finished_run(tmp_path: Path) -> Path:
    """A run folder as a finished run leaves it (files only: what must survive a refused second run)."""
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    (run / ".hydra" / "overrides.yaml").write_text("- seed=1\n")
    (run / ".hydra" / "config.yaml").write_text("seed: 1\n")
    (run / "metrics.json").write_text('{"best": {"value": 0.5, "metrics": {}}}')
    (run / "checkpoints" / "best.pt").write_bytes(b"seed 1 weights")
    (run / "mtmm-train.log").write_text("[seed 1] results\n")
    return run


def test_a_second_run_fails_at_once_naming_the_holder_and_changes_nothing(finished_run: Path, tmp_path: Path) -> None:
    before = snapshot(finished_run)
    holder = start(HOLDER, str(finished_run), stderr=tmp_path / "holder.err")
    try:
        proc = run_cli([f"hydra.run.dir={finished_run}", "seed=2", *TINY], cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
        assert proc.returncode == 2, proc.stderr[-3000:]
        line = one_error_line(proc)
        assert f"hydra.run.dir '{finished_run}' is in use by another run (pid {holder.pid} on host " \
               f"{socket.gethostname()}" in line
        assert "wait for it to end, or pass another hydra.run.dir" in line
        # Refused before Hydra wrote anything: the first run's .hydra/ and log are untouched too.
        during = snapshot(finished_run)
        assert during.pop(runlock.LOCK_NAME) and during == before
    finally:
        assert let_go(holder) == 0
    assert snapshot(finished_run) == before  # the holder's lock file is gone with it


def test_two_real_runs_in_one_folder_the_second_is_refused_the_first_finishes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    first = start(PAUSED_RUN, f"hydra.run.dir={run}", "seed=1", *TINY, stderr=tmp_path / "first.err")
    try:
        second = run_cli([f"hydra.run.dir={run}", "seed=2", *TINY], cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
        assert second.returncode == 2, second.stderr[-3000:]
        assert f"is in use by another run (pid {first.pid} on host" in one_error_line(second)
    finally:
        status = let_go(first)
    assert status == 0, (tmp_path / "first.err").read_text()[-3000:]
    # Everything in the folder is the first run's: its overrides, results, and one TensorBoard file.
    assert (run / ".hydra" / "overrides.yaml").read_text().count("seed=1") == 1
    assert json.loads((run / "metrics.json").read_text())["steps"] == 3
    assert len(list(event_dir(run).glob("events.out.tfevents.*"))) == 1
    assert not (run / runlock.LOCK_NAME).exists()


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path: Path) -> None:
    run = tmp_path / "run"
    holder = start(HOLDER, str(run), stderr=tmp_path / "holder.err")
    holder.send_signal(signal.SIGKILL)  # kill -9: no clean-up runs; the kernel drops the lock
    holder.communicate(timeout=HANG_GUARD_S)
    assert holder.returncode == -signal.SIGKILL
    assert str(holder.pid) in (run / runlock.LOCK_NAME).read_text()  # the stale lock file is still there
    proc = run_cli([f"hydra.run.dir={run}", *TINY], cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run / "metrics.json").is_file() and not (run / runlock.LOCK_NAME).exists()


def test_cfg_job_needs_no_folder_and_no_lock(finished_run: Path, tmp_path: Path) -> None:
    holder = start(HOLDER, str(finished_run), stderr=tmp_path / "holder.err")
    try:
        for folder in (finished_run, tmp_path / "never-made"):
            proc = run_cli(["--cfg", "job", f"hydra.run.dir={folder}"], cwd=tmp_path)
            assert proc.returncode == 0, proc.stderr[-3000:]
            assert "encoders:" in proc.stdout
        assert not (tmp_path / "never-made").exists()
    finally:
        assert let_go(holder) == 0


def test_a_second_sweep_in_the_same_sweep_folder_is_refused(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    holder = start(HOLDER, str(sweep), stderr=tmp_path / "holder.err")
    try:
        proc = run_cli(["-m", f"hydra.sweep.dir={sweep}", *TINY, "fusion=concat,sum"], cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert f"hydra.sweep.dir '{sweep}' is in use by another run (pid {holder.pid}" in one_error_line(proc)
        assert sorted(p.name for p in sweep.iterdir()) == [runlock.LOCK_NAME]  # no job started
    finally:
        assert let_go(holder) == 0


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("trained")
    train(run, ["logger=none", "modalities=[image,tabular]", "tasks=[category]"])
    return run / "checkpoints" / "best.pt"


EVAL_FAST = ["subsets=false", "noise=[1.0]", "zero=[]", "drop=[]", "plot=false"]


def test_mtmm_eval_locks_its_output_folder_not_the_run(checkpoint: Path, tmp_path: Path) -> None:
    run = checkpoint.parent.parent
    out = run / "eval" / "best"
    training = start(HOLDER, str(run), stderr=tmp_path / "training.err")  # the run trains on meanwhile
    try:
        proc = run_cli([f"checkpoint={checkpoint}", *EVAL_FAST], cwd=tmp_path, module="mtmm_train.evaluate",
                       env={"OMP_NUM_THREADS": "1"})
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert (out / "robustness.json").is_file()
        before = snapshot(out)
        evaluating = start(HOLDER, str(out), stderr=tmp_path / "evaluating.err")
        try:
            proc = run_cli([f"checkpoint={checkpoint}", *EVAL_FAST], cwd=tmp_path, module="mtmm_train.evaluate")
            assert proc.returncode == 2, proc.stderr[-3000:]
            assert f"hydra.run.dir '{out}' is in use by another run (pid {evaluating.pid}" in \
                one_error_line(proc, "mtmm-eval")
        finally:
            assert let_go(evaluating) == 0
        assert snapshot(out) == before
    finally:
        assert let_go(training) == 0


# ---------------------------------------------------------------------- the lock itself, in this process
@pytest.fixture
def folder(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "f"
    runlock.release_all()


def test_the_lock_is_reentrant_in_one_process_and_its_file_goes_with_the_last_release(folder: Path) -> None:
    first = runlock.acquire(folder)
    assert runlock.acquire(folder) is first  # cli.run after the Hydra callback: the same lock
    first.release()
    assert (folder / runlock.LOCK_NAME).exists()
    first.release()
    assert not (folder / runlock.LOCK_NAME).exists()


def test_another_process_is_refused_while_held_and_succeeds_after(folder: Path, tmp_path: Path) -> None:
    lock = runlock.acquire(folder)
    probe = [sys.executable, "-c", "import sys; from mtmm_train import runlock; runlock.acquire(sys.argv[1])",
             str(folder)]
    refused = subprocess.run(probe, capture_output=True, text=True, env=ENV, timeout=HANG_GUARD_S)
    assert refused.returncode != 0 and f"(pid {os.getpid()} on host" in refused.stderr
    lock.release()
    assert subprocess.run(probe, capture_output=True, env=ENV, timeout=HANG_GUARD_S).returncode == 0


def test_a_forked_child_does_not_keep_the_lock(folder: Path) -> None:
    # DataLoader workers are forked: after a kill -9 of the run they must not hold its folder.
    lock = runlock.acquire(folder)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: forgets the lock, waits until the parent has checked
        os.close(write)
        os.read(read, 1)
        os._exit(0 if not runlock._held else 1)
    os.close(read)
    try:
        lock.release()  # the child still runs, with its copy of the descriptor closed at fork
        other = subprocess.run([sys.executable, "-c", HOLDER.replace("sys.stdin.readline()", ""), str(folder)],
                               capture_output=True, text=True, env=ENV, timeout=HANG_GUARD_S)
        assert other.returncode == 0 and other.stdout.strip() == "held", other.stderr[-2000:]
    finally:
        os.write(write, b"x")
        os.close(write)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_folder_that_cannot_be_a_run_folder_is_refused_before_locking(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match=r"hydra.run.dir '.*file' is a file, not a folder; pass hydra.run.dir="):
        runlock.acquire(tmp_path / "file")
