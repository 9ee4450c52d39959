"""Screenshots of TensorBoard on real run folders, for the docs (docs/img/tensorboard_*.png).

    python scripts/tensorboard_screenshot.py                      # trains a tiny 3-job sweep first (~1 min, CPU)
    python scripts/tensorboard_screenshot.py --logdir logs/multiruns/<time>     # or any run/sweep folder(s)

Starts ``tensorboard --logdir <folder> --port <a free port>`` on 127.0.0.1, opens it in headless
Chromium (``apt-get install chromium``; ``--browser`` for another binary) and saves the first
screen (TIME SERIES: the training curves) and the HPARAMS tab as PNGs into ``--out``. A docs
tool, not a test: the tests check the event files (tests/test_tensorboard.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The demo: three tiny jobs that differ in what the HParams table should tell apart.
SWEEP = ["fusion=concat,sum", "tasks=null,[score]", "trainer.max_epochs=4", "trainer.limit_train_batches=6",
         "dataset.num_train=512", "dataset.num_val=256", "dataset.num_test=128", "trainer.batch_size=32",
         "logger.progress_bar=false", "logger.log_every_n_steps=2"]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_demo(folder: Path) -> Path:
    """A small sweep into ``folder`` (the CLI, as a user runs it); returns the sweep folder."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "mtmm_train", "-m", f"hydra.sweep.dir={folder}", *SWEEP]
    print("training:", " ".join(command[2:]), flush=True)
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    return folder


def wait_for_runs(url: str, expected: int, timeout: float = 120.0) -> list[str]:
    """Poll TensorBoard until it lists ``expected`` runs (it loads event files in the background)."""
    deadline, runs = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/data/runs", timeout=5) as r:
                runs = json.loads(r.read())
            if len(runs) >= expected:
                time.sleep(3)  # let it finish reading the files it has found
                return runs
        except OSError:
            pass
        time.sleep(1)
    raise SystemExit(f"TensorBoard at {url} listed {len(runs)} of {expected} runs after {timeout:.0f} s")


def screenshot(browser: str, url: str, out: Path, size: str, wait_ms: int) -> None:
    """One headless Chromium screenshot of ``url`` (a fresh profile, no network beyond localhost)."""
    with tempfile.TemporaryDirectory(prefix="mtmm-chromium-") as profile:
        command = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={size}",
                   f"--virtual-time-budget={wait_ms}", f"--screenshot={out}", url]
        subprocess.run(command, check=True, capture_output=True, timeout=180)
    print(f"wrote {out}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", type=Path, help="run or sweep folder(s) to show (default: train a tiny sweep)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img", help="folder of the PNGs")
    parser.add_argument("--browser", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument("--size", default="1400,900", help="window size in pixels, width,height")
    parser.add_argument("--wait-ms", type=int, default=20000, help="page time before each screenshot")
    args = parser.parse_args(argv)
    if not Path(args.browser).exists():
        raise SystemExit(f"no browser at '{args.browser}'; install Chromium (apt-get install chromium) or pass "
                         "--browser <path>")
    with tempfile.TemporaryDirectory(prefix="mtmm-tb-") as scratch:
        logdir = args.logdir or train_demo(Path(scratch) / "sweep")
        expected = max(1, sum(1 for _ in logdir.rglob("events.out.tfevents.*")))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        tb = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host",
                               "127.0.0.1", "--port", str(port), "--load_fast", "false"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            runs = wait_for_runs(url, expected)
            print(f"TensorBoard at {url}: {len(runs)} runs, e.g. {runs[:2]}", flush=True)
            args.out.mkdir(parents=True, exist_ok=True)
            screenshot(args.browser, f"{url}/#timeseries", args.out / "tensorboard_curves.png", args.size,
                       args.wait_ms)
            screenshot(args.browser, f"{url}/#hparams", args.out / "tensorboard_hparams.png", args.size,
                       args.wait_ms)
        finally:
            tb.terminate()
            tb.wait(timeout=30)


if __name__ == "__main__":
    main()
