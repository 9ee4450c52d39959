"""Cost of each gradient aggregator's solver, ``weights(G)`` per call, next to torchjd's where it has one.

    python scripts/bench_aggregators.py                   # T=8, float64 Gramians, the CPU
    python scripts/bench_aggregators.py --tasks 2 4 8 --calls 100

Every aggregator of ``mtmm_train.balancers`` (found, not listed) is built with its defaults and
called on the same float64 Gramians of ``T`` random gradients in ``R^1000``: half with norms of
one order, half with norms spread over 1e-3 .. 1e3. torchjd's weighting of the same method runs
on the same Gramians (CAGrad's and Nash-MTL's need cvxpy, which the project does not install:
``-``). Each cell is the median time per call over ``--rounds`` rounds of ``--calls`` calls,
methods alternating within a round. This is the part of a representation-space step that grows
with ``T`` on the host; ``scripts/bench_balancers.py`` times whole steps.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from mtmm_train.balancers import all_balancers, torchjd_api

#: balancer -> (torchjd weighting, its parameters at the balancer's defaults)
TORCHJD = {
    "upgrad": ("upgrad", {"norm_eps": 1e-4, "reg_eps": 1e-4}),
    "mgda": ("mgda", {"epsilon": 1e-3, "max_iters": 100}),
    "pcgrad": ("pcgrad", {}),
    "imtl_g": ("imtl_g", {}),
    "aligned_mtl": ("aligned_mtl", {"scale_mode": "min"}),
}


def gramians(num_tasks: int, count: int = 8, dim: int = 1000, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(count):
        jac = torch.randn(num_tasks, dim, generator=g, dtype=torch.float64)
        if i % 2:
            jac *= 10.0 ** (6 * torch.rand(num_tasks, 1, generator=g, dtype=torch.float64) - 3)
        out.append(jac @ jac.T)
    return out


def time_per_call(fn: Callable[[torch.Tensor], torch.Tensor], grams: list[torch.Tensor], calls: int) -> float:
    start = time.perf_counter()
    for i in range(calls):
        fn(grams[i % len(grams)])
    return (time.perf_counter() - start) / calls


def measure(num_tasks: int, calls: int, rounds: int) -> list[dict]:
    """One row per aggregator: ``own_ms``, ``torchjd_ms`` (None without one) per call of ``weights``."""
    grams = gramians(num_tasks)
    tasks = [f"t{i}" for i in range(num_tasks)]
    fns: dict[tuple[str, str], Callable[[torch.Tensor], torch.Tensor]] = {}
    for name, cls in all_balancers().items():
        if cls.family == "aggregation":
            fns[(name, "own")] = cls(tasks).weights
            if name in TORCHJD:
                fns[(name, "torchjd")] = torchjd_api.gramian_weighting(TORCHJD[name][0], **TORCHJD[name][1])
    times: dict[tuple[str, str], list[float]] = {key: [] for key in fns}
    for fn in fns.values():  # warm-up: imports (SciPy), first calls
        time_per_call(fn, grams, 2)
    for _ in range(rounds):
        for key, fn in fns.items():
            times[key].append(time_per_call(fn, grams, calls))
    rows = []
    for name in dict.fromkeys(name for name, _ in fns):
        own = 1e3 * statistics.median(times[(name, "own")])
        jd = 1e3 * statistics.median(times[(name, "torchjd")]) if (name, "torchjd") in times else None
        rows.append({"tasks": num_tasks, "aggregator": name, "own_ms": own, "torchjd_ms": jd})
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[8])
    parser.add_argument("--calls", type=int, default=50, help="calls per round and method")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; ms per weights() call on a float64 "
          "Gramian", flush=True)
    print(f"{'T':>3} {'aggregator':<12} {'this project':>13} {'torchjd':>9} {'ratio':>7}")
    rows = []
    for t in args.tasks:
        for row in measure(t, args.calls, args.rounds):
            own, jd = row["own_ms"], row["torchjd_ms"]
            jd_cell, ratio = ("-", "-") if jd is None else (f"{jd:.3f}", f"{own / jd:.2f}x")
            print(f"{t:>3} {row['aggregator']:<12} {own:>13.3f} {jd_cell:>9} {ratio:>7}", flush=True)
            rows.append(row)
    return rows


if __name__ == "__main__":
    main()
