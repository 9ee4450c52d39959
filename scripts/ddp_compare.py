"""Train with N processes under torchrun and with one process on the N-times batch; print how far apart they end.

Usage: ``python scripts/ddp_compare.py [--nproc 2] [--batch 32] [--out DIR] -- OVERRIDES``

Both runs use the same overrides; the data-parallel one uses ``trainer.batch_size=<batch>``
per process, the single one ``<batch> * nproc``. BatchNorm is turned off in the synthetic
dataset's encoders (CPU: no SyncBatchNorm). Prints the largest absolute difference over the
final validation metrics and the metric where it occurs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

BASE = ["model.encoders.image.batch_norm=false", "model.encoders.audio.batch_norm=false", "trainer.max_epochs=2",
        "logger.progress_bar=false", "dataset.num_train=1024", "dataset.num_val=256"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32, help="per-process batch size")
    parser.add_argument("--out", type=Path, default=None, help="where the two runs go (default: a temporary folder)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="ddp_compare_"))
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    common = [*BASE, *args.overrides]
    runs = {
        "ddp": [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
                "-m", "mtmm_train", *common, f"trainer.batch_size={args.batch}", f"hydra.run.dir={out / 'ddp'}"],
        "one": [sys.executable, "-m", "mtmm_train", *common, f"trainer.batch_size={args.batch * args.nproc}",
                f"hydra.run.dir={out / 'one'}"],
    }
    for name, command in runs.items():
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{name} run failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    ddp, one = (json.loads((out / n / "metrics.json").read_text())["final"] for n in ("ddp", "one"))
    worst = max(one, key=lambda k: abs(one[k] - ddp[k]))
    print(f"{' '.join(args.overrides) or '(defaults)'}: max |diff| = {abs(one[worst] - ddp[worst]):.2e} ({worst}); "
          f"val/loss/total {one['val/loss/total']:.6f} (1 process) vs {ddp['val/loss/total']:.6f} ({args.nproc})")


if __name__ == "__main__":
    main()
