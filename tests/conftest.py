"""Shared fixtures: compose configs, train in-process on a tiny budget, run the CLI."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from mtmm_train.recipe import TrainRecipe

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"

# Hang guard for subprocesses, never a speed limit: no test may fail because a machine is slow. The
# slowest subprocess here (the default run) takes 15-60 s on a loaded 2-core CPU, so an hour is ~60x
# that; it still turns a real hang (a deadlock, a lost signal) into a failure that names the test,
# before CI's own limit would stop the whole suite without saying where it hung.
HANG_GUARD_S = 3600

# .ci/run sets MTMM_REQUIRE_SYSTEM_DEPS=1: a test whose system package is missing fails there instead
# of being skipped, so CI cannot pass by skipping (see require_program).
REQUIRE_SYSTEM_DEPS = "MTMM_REQUIRE_SYSTEM_DEPS"

# The whole suite (no paths named: pytest's testpaths) runs on this many processes at most through
# pytest-xdist, one file per process at a time, so that module fixtures run once: see workers().
MAX_WORKERS = 4
# The files that take longest (``pytest --durations=0``, summed per file, on 2 cores), longest first:
# they start first. The order only balances the processes' loads.
SLOWEST_FIRST = [
    "test_distributed.py", "test_filesystem_faults.py", "test_crash_safety.py", "test_configs.py", "test_sweeps.py",
    "test_backbone_integration.py", "test_cli.py", "test_checkpoint_security.py", "test_bad_values.py",
    "test_scripts.py", "test_runlock.py", "test_bad_inputs.py", "test_export.py", "test_docs.py",
]

# A few seconds of CPU: small data, one short epoch, no progress bar.
TINY = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=3",
    "trainer.batch_size=32",
    "dataset.num_train=256",
    "dataset.num_val=128",
    "dataset.num_test=64",
    "logger.progress_bar=false",
    "logger.log_every_n_steps=1",
]


def workers() -> int:
    """How many processes run the whole suite: one per CPU core this process may use, 2 to ``MAX_WORKERS``;
    0 (this process alone) on one core."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(cores, MAX_WORKERS) if cores >= 2 else 0


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """Run the whole suite (``python -m pytest -q``, as README and CI do) in ``workers()`` processes.

    Only where pytest-xdist is installed (the ``test`` extra), no ``-n`` was given (``-n 0``: this process
    alone) and no paths were named: ``pytest tests/test_x.py`` and ``scripts/gpu_check.sh`` stay in one
    process. Files, not tests, are shared out (``--dist loadfile``): a module fixture (a good run that many
    tests read) runs once. Runs before xdist's own hook, which turns the count into processes.
    """
    if getattr(config.option, "numprocesses", 0) is not None or os.environ.get("PYTEST_XDIST_WORKER"):
        return  # no xdist, -n given, or in a worker already
    if config.args_source != pytest.Config.ArgsSource.TESTPATHS or config.option.markexpr != "not gpu":
        return
    config.option.numprocesses = workers()
    if config.option.dist == "no" and config.option.numprocesses:
        config.option.dist = "loadfile"
        config.option.loadscopereorder = False  # not the biggest files first: the slowest (SLOWEST_FIRST)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In an xdist worker, order the files ``SLOWEST_FIRST``, then the rest as collected (each file's tests
    keep their order): the scheduler hands files out in this order, so no long file starts last while the
    other processes have nothing left to do."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def pytest_configure(config: pytest.Config) -> None:
    """In an xdist worker, split the cores between the workers: torch's threads here, and OMP_NUM_THREADS for
    the commands the tests start (unless set already); two workers with two threads each on two cores would
    fight for them."""
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if os.environ.get("PYTEST_XDIST_WORKER") and count > 1:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        threads = max(1, cores // count)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def compose_cfg(overrides: list[str] | None = None) -> DictConfig:
    """Compose ``configs/train.yaml`` with ``overrides`` (as the CLI would, without running)."""
    with initialize_config_module(config_module="mtmm_train.configs", version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides or []))


def train(output_dir: Path, overrides: list[str] | None = None, tiny: bool = True) -> TrainRecipe:
    """Compose, set up and train in this process; return the recipe (metrics in ``recipe.best``)."""
    cfg = compose_cfg((TINY if tiny else []) + list(overrides or []))
    recipe = TrainRecipe(cfg, output_dir)
    recipe.setup()
    recipe.train()
    return recipe


def run_cli(args: list[str], cwd: Path, module: str = "mtmm_train", timeout: float = HANG_GUARD_S,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m <module> <args>`` (a script: ``module=""``) in ``cwd`` on the CPU; capture its output.

    mtmm-train's own commands run as a child forked from a server that has imported what they import
    (``tests/cli_server.py``), which saves 5-9 s of start-up each; the command, its output and its exit
    status are those of ``python -m``. Scripts, other modules and an ``env`` that sets variables read at
    import time start a real process (``MTMM_TEST_FORK=0``: always).
    """
    full_env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT), **(env or {})}
    command = [sys.executable, "-m", module, *args] if module else [sys.executable, *args]
    if forkable(module, env):
        return _fork_servers.run(command, module, args, cwd, full_env, timeout)
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


# Environment variables a forked command may set differently from its server: read at run time only,
# by mtmm-train or torch (OMP_NUM_THREADS: cli_server sets torch's threads from it).
RUN_TIME_ENV = {"OMP_NUM_THREADS", "MKL_NUM_THREADS", "MTMM_CACHE_DIR", "HYDRA_FULL_ERROR", "COLUMNS"}


def forkable(module: str, env: dict[str, str] | None) -> bool:
    """Whether ``run_cli`` may fork the command from a server (see :func:`run_cli`)."""
    return (os.environ.get("MTMM_TEST_FORK", "1") != "0" and module.split(".")[0] == "mtmm_train"
            and set(env or {}) <= RUN_TIME_ENV and hasattr(os, "fork"))


class ForkServers:
    """``tests/cli_server.py`` processes, started when first needed: one per command running at once."""

    def __init__(self) -> None:
        self.idle: list[subprocess.Popen] = []
        self.lock = threading.Lock()

    def start(self) -> subprocess.Popen:
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
        server = subprocess.Popen([sys.executable, str(ROOT / "tests" / "cli_server.py")], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, env=env, cwd=ROOT, bufsize=0)
        if server.stdout.readline() != b"ready\n":
            raise RuntimeError(f"tests/cli_server.py did not start (exit {server.wait()})")
        return server

    def run(self, command: list[str], module: str, args: list[str], cwd: Path, env: dict[str, str],
            timeout: float) -> subprocess.CompletedProcess:
        with self.lock:
            server = self.idle.pop() if self.idle else None
        if server is None or server.poll() is not None:
            server = self.start()
        with tempfile.TemporaryDirectory() as tmp:
            out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
            request = {"module": module, "args": [str(a) for a in args], "cwd": str(cwd), "env": env,
                       "stdout": str(out), "stderr": str(err)}
            server.stdin.write((json.dumps(request) + "\n").encode())
            pid = int(server.stdout.readline())
            ready, _, _ = select.select([server.stdout], [], [], timeout)
            if not ready:  # the hang guard, as subprocess.run's timeout: kill the command, then fail
                os.kill(pid, signal.SIGKILL)
            code = int(server.stdout.readline())
            stdout, stderr = (p.read_text(errors="replace") if p.exists() else "" for p in (out, err))
        with self.lock:
            self.idle.append(server)
        if not ready:
            raise subprocess.TimeoutExpired(command, timeout, stdout, stderr)
        return subprocess.CompletedProcess(command, code, stdout, stderr)


_fork_servers = ForkServers()


def require_program(name: str, package: str) -> None:
    """Skip the calling test, with the reason, when the system program ``name`` is not installed; fail
    instead where ``MTMM_REQUIRE_SYSTEM_DEPS=1`` (.ci/run), where every system package must be there."""
    if shutil.which(name):
        return
    reason = f"needs {name}, which is not installed (Debian/Ubuntu: apt-get install {package})"
    if os.environ.get(REQUIRE_SYSTEM_DEPS) == "1":
        pytest.fail(f"{reason}; {REQUIRE_SYSTEM_DEPS}=1 forbids skipping it", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def espeak_ng() -> None:
    """The test speaks digits with espeak-ng (dataset=av_digits): skip without it, fail in CI."""
    require_program("espeak-ng", "espeak-ng")


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Run a test on one torch thread: tiny models are faster so, and do not fight other jobs for the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny() -> list[str]:
    """The tiny-budget overrides, for tests that build their own command lines."""
    return list(TINY)
