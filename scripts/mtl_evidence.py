"""Does multi-task training help the sparse-label task? Single-task runs against a balancer sweep.

    python scripts/mtl_evidence.py                                # all balancers, 3 seeds (CPU: hours)
    python scripts/mtl_evidence.py --balancers static upgrad famo --seeds 2 --override trainer.max_epochs=4

On the built-in synthetic data, ``score`` (regression) is labelled on 25% of the samples; it
depends on the tabular features and on the image's class, which ``category`` (labelled on every
sample) teaches the shared encoders. The script runs two Hydra multiruns with the CLI:

1. single-task baselines, one task per run (``tasks=[<task>]``), over seeds;
2. multi-task runs over ``balancer=...`` and seeds;

then prints ``mtmm-report`` of the second with Delta_m against the first, and the sparse task's
metrics side by side. Everything lands in ``--out`` (``single/``, ``multi/``, ``evidence.md``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from mtmm_train.benchmarking import every_balancer
from mtmm_train.report import baseline_metrics, cell, group, load_jobs, report

ROOT = Path(__file__).resolve().parents[1]
TASKS = ["category", "match", "tags", "score"]
SPARSE = "score"


def multirun(folder: Path, sweep: list[str], overrides: list[str]) -> None:
    """``python -m mtmm_train -m <sweep> <overrides>`` into ``folder`` (skipped if it has finished runs)."""
    if folder.is_dir() and any(folder.rglob("metrics.json")):
        print(f"reusing {folder}", flush=True)
        return
    cmd = [sys.executable, "-m", "mtmm_train", "-m", *sweep, *overrides, f"hydra.sweep.dir={folder}",
           "logger=none"]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def sparse_table(single: Path, multi: Path) -> str:
    """The sparse task's metrics: its single-task runs against each multi-task configuration."""
    keys = [k for k in baseline_metrics(single) if k.startswith(f"val/{SPARSE}/")]
    rows = [(f"single-task ({r.config})", r) for r in group(load_jobs(single)[0]) if SPARSE in r.config]
    rows += [(r.config, r) for r in group(load_jobs(multi)[0])]
    lines = ["| runs | n | " + " | ".join(k.removeprefix("val/") for k in keys) + " |",
             "|" + " --- |" * (len(keys) + 2)]
    for name, row in rows:
        lines.append(f"| {name} | {len(row.seeds)} | " + " | ".join(cell(row, k) for k in keys) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; ``--balancers`` defaults to every balancer the package has."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "logs" / "mtl_evidence")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--balancers", nargs="+", default=every_balancer(),
                        help="default: every balancer (static, then loss weighting, then gradient aggregation)")
    parser.add_argument("--override", nargs="*", default=[], help="overrides for every run, e.g. trainer.max_epochs=4")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    seeds = "seed=" + ",".join(str(s) for s in range(args.seeds))
    out = args.out.resolve()
    multirun(out / "single", ["tasks=" + ",".join(f"[{t}]" for t in TASKS), seeds], args.override)
    multirun(out / "multi", ["balancer=" + ",".join(args.balancers), seeds], args.override)
    table = report(out / "multi", patterns=["val/*/accuracy", "val/tags/auroc", f"val/{SPARSE}/*"],
                   baselines=out / "single")
    sparse = sparse_table(out / "single", out / "multi")
    text = (f"# Multi-task vs single-task on the synthetic data\n\noverrides: {args.override or 'none'}; "
            f"seeds: {args.seeds}\n\n## Sweep over balancers (Delta_m vs single-task, %)\n\n{table}\n\n"
            f"## The sparse-label task ({SPARSE}, 25% labelled)\n\n{sparse}\n")
    (out / "evidence.md").write_text(text)
    (out / "evidence.json").write_text(json.dumps({"overrides": args.override, "seeds": args.seeds}))
    print(text)


if __name__ == "__main__":
    main()
