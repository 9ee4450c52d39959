"""Step time of every balancer relative to static weights, for 2, 4 and 8 tasks, in both Jacobian spaces.

    python scripts/bench_balancers.py                        # CPU: the reference small model, batch 16
    python scripts/bench_balancers.py --tasks 3 --balancers static upgrad
    python scripts/bench_balancers.py --precision bf16       # on a GPU (batch 256)

The model is built from the project's configs (default: ``experiment=reference_small``, the
small reference model of docs/benchmarks.md) with ``T`` heads, copies of the dataset's
tasks in turn. A step is exactly the training loop's: ``training_step`` (forward, losses,
balancer backward) then the optimizer step. Configurations alternate within each round, so a
drift of the machine's speed hits them alike; the table shows the median step. Every balancer
of ``mtmm_train.balancers`` is found, not listed. The measurement is
``mtmm_train.benchmarking.balancer_table``, which ``scripts/benchmark.py --suite balancers`` runs too.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from mtmm_train.benchmarking import balancer_table, print_balancer_table, write_json
from mtmm_train.builders import AMP_DTYPES

__all__ = ["balancer_table", "main", "print_balancer_table"]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--balancers", nargs="+", help="default: all")
    parser.add_argument("--override", nargs="*", default=["experiment=reference_small"], help="model config")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--precision", default="32", choices=list(AMP_DTYPES))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per configuration")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}", flush=True)
    rows = balancer_table(args.device, tuple(args.tasks), tuple(args.override), args.batch_size, args.precision,
                          args.balancers, args.steps, args.rounds, args.warmup)
    print_balancer_table(rows)
    write_json(args.json, rows)
    return rows


if __name__ == "__main__":
    main()
