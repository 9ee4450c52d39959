"""Step time of every balancer relative to static weights, for 2, 4 and 8 tasks, in both Jacobian spaces.

    python scripts/bench_balancers.py                        # CPU: the reference small model, batch 16
    python scripts/bench_balancers.py --tasks 3 --balancers static upgrad
    python scripts/bench_balancers.py --precision bf16       # on a GPU (batch 256)

The model is built from the project's configs (default: ``experiment=reference_small``, the
small reference model of docs/benchmarks.md) with ``T`` heads, copies of the dataset's
tasks in turn. A step is exactly the training loop's: ``training_step`` (forward, losses,
balancer backward) then the optimizer step. Configurations alternate within each round, so a
drift of the machine's speed hits them alike; the table shows the median step.
``balancer_table`` is what ``scripts/benchmark.py`` calls.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hydra import compose, initialize_config_module  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from mtmm_train.balancers import all_balancers  # noqa: E402
from mtmm_train.batch import Batch, TaskSpec  # noqa: E402
from mtmm_train.data import InMemoryLoader  # noqa: E402
from mtmm_train.instantiate import build  # noqa: E402
from mtmm_train.model import MultiModalModel  # noqa: E402
from mtmm_train.recipe import AMP_DTYPES, training_step  # noqa: E402
from mtmm_train.tasks import TASK_TYPES  # noqa: E402

MODES = ("representation", "parameters")


def every_balancer() -> list[str]:
    """Every balancer of ``mtmm_train.balancers`` (found, not listed): static, loss weighting, aggregation."""
    found = all_balancers()
    return sorted(found, key=lambda name: (name != "static", found[name].family != "weighting", name))


@dataclass
class Bench:
    """A model with ``T`` tasks, a few batches on the device, and the precision settings."""

    cfg: DictConfig
    model: MultiModalModel
    tasks: dict
    batches: list[Batch]
    autocast: torch.autocast
    scaler: torch.amp.GradScaler
    device: torch.device


def compose_cfg(overrides: list[str]) -> DictConfig:
    with initialize_config_module(config_module="mtmm_train.configs", version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def make_bench(device: torch.device, num_tasks: int, overrides: list[str], batch_size: int, precision: str) -> Bench:
    """Build the model of ``overrides`` with ``num_tasks`` heads (the dataset's tasks, cycled)."""
    overrides = [o for o in overrides if o] + [f"dataset.num_train={4 * batch_size}", "dataset.num_val=8", "seed=0"]
    cfg = compose_cfg(overrides)
    torch.manual_seed(0)
    data = build(cfg.dataset, "dataset")
    base = list(data.tasks)
    names = {f"{base[i % len(base)]}{i}": base[i % len(base)] for i in range(num_tasks)}
    encoders = {m: build(cfg.model.encoders[m], f"model.encoders.{m}", modality=spec)
                for m, spec in data.modalities.items()}
    fusion = build(cfg.fusion, "fusion", in_dims={m: e.out_dim for m, e in encoders.items()})
    mtl = build(cfg.mtl, "mtl", in_dim=fusion.out_dim, tasks=list(names))
    specs = {n: TaskSpec(n, data.tasks[b].kind, data.tasks[b].dim) for n, b in names.items()}
    heads = {n: build(cfg.model.heads[b], f"model.heads.{b}", in_dim=mtl.out_dim, out_dim=specs[n].dim)
             for n, b in names.items()}
    model = MultiModalModel(encoders, fusion, mtl, heads).to(device)
    tasks = {n: TASK_TYPES[s.kind](s) for n, s in specs.items()}
    batches = []
    for b in InMemoryLoader(data.splits["train"].to(device), batch_size, drop_last=True).epoch(0):
        batches.append(Batch(b.inputs, b.present, {n: b.targets[s] for n, s in names.items()},
                             {n: b.labeled[s] for n, s in names.items()}))
    dtype = AMP_DTYPES[precision]
    return Bench(cfg, model, tasks, batches, torch.autocast(device.type, dtype=dtype, enabled=dtype is not None),
                 torch.amp.GradScaler(device.type, enabled=precision == "fp16"), device)


def configs(balancers: list[str]) -> list[tuple[str, str | None]]:
    """(balancer, mode) pairs: aggregation runs in both spaces, anything else (loss weighting) has no mode."""
    found = all_balancers()
    return [(b, m) for b in balancers
            for m in (MODES if b in found and found[b].family == "aggregation" else (None,))]


class Runner:
    """One balancer on the bench, with its own optimizer; ``run(n)`` times ``n`` steps."""

    def __init__(self, bench: Bench, name: str, mode: str | None) -> None:
        node = compose_cfg([f"balancer={name}"] + ([f"balancer.mode={mode}"] if mode else [])).balancer
        self.bench = bench
        self.balancer = build(node, "balancer", tasks=list(bench.tasks)).to(bench.device)
        params = list(bench.model.parameters()) + list(self.balancer.parameters())
        self.optimizer = torch.optim.AdamW(params, lr=1e-4)
        self.shared = bench.model.shared_parameters()
        self.step = 0

    def run(self, steps: int) -> list[float]:
        """Seconds of each of ``steps`` steps (synchronised per step: a median then ignores spikes)."""
        b, out = self.bench, []
        for _ in range(steps):
            batch = b.batches[self.step % len(b.batches)]
            sync(b.device)
            t0 = time.perf_counter()
            self.optimizer.zero_grad(set_to_none=True)
            training_step(b.model, b.tasks, self.balancer, batch, b.autocast, b.scaler, self.shared, self.step)
            b.scaler.step(self.optimizer)
            b.scaler.update()
            sync(b.device)
            out.append(time.perf_counter() - t0)
            self.step += 1
        return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def balancer_table(device: torch.device | str, task_counts: tuple[int, ...] = (2, 4, 8),
                   overrides: tuple[str, ...] = ("experiment=reference_small",), batch_size: int | None = None,
                   precision: str = "32", balancers: list[str] | None = None, steps: int = 3, rounds: int = 3,
                   warmup: int = 3) -> list[dict]:
    """Time every balancer against static weights.

    Args:
        device: where to run.
        task_counts: numbers of tasks to try.
        overrides: config overrides that pick the model (and dataset).
        batch_size: default 256 on CUDA, 16 on the CPU.
        precision: ``32``, ``bf16`` or ``fp16`` (autocast, and a GradScaler for fp16).
        balancers: names of ``configs/balancer`` files (default: all); static is always timed.
        steps: timed steps per configuration and round.
        rounds: rounds; configurations alternate within a round.
        warmup: untimed steps per configuration first.

    Returns:
        One row per (tasks, balancer, mode): ``step_ms`` (median over steps), ``ratio`` to static
        at the same number of tasks, or ``error`` when the configuration failed.
    """
    device = torch.device(device)
    batch_size = batch_size or (256 if device.type == "cuda" else 16)
    names = ["static"] + [b for b in (balancers or every_balancer()) if b != "static"]
    rows = []
    for num_tasks in task_counts:
        bench = make_bench(device, num_tasks, list(overrides), batch_size, precision)
        runners, times, errors = {}, {}, {}
        for key in configs(names):
            try:
                runners[key] = Runner(bench, *key)
                runners[key].run(warmup)
                times[key] = []
            except Exception as e:  # record and go on: one failing method must not hide the others
                errors[key] = f"{type(e).__name__}: {e}"[:300]
        for _ in range(rounds):
            for key in times:
                try:
                    times[key] += runners[key].run(steps)
                except Exception as e:
                    errors[key] = f"{type(e).__name__}: {e}"[:300]
        static = statistics.median(times[("static", None)])
        for name, mode in configs(names):
            row = {"tasks": num_tasks, "balancer": name, "mode": mode or "-", "device": str(device),
                   "batch_size": batch_size, "precision": precision}
            if (name, mode) in errors:
                row["error"] = errors[(name, mode)]
            else:
                ms = statistics.median(times[(name, mode)])
                row.update(step_ms=1e3 * ms, ratio=ms / static)
            rows.append(row)
        del bench, runners
    return rows


def print_table(rows: list[dict]) -> None:
    """Ratios to static: one line per (balancer, mode), one column per number of tasks."""
    counts = sorted({r["tasks"] for r in rows})
    head = f"{'balancer':<14} {'mode':<15}" + "".join(f"{f'T={t}':>9}" for t in counts) + "   static ms"
    print(head)
    print("-" * len(head))
    keys = list(dict.fromkeys((r["balancer"], r["mode"]) for r in rows))
    for b, m in keys:
        cells = []
        for t in counts:
            r = next(r for r in rows if (r["balancer"], r["mode"], r["tasks"]) == (b, m, t))
            cells.append(f"{'error':>9}" if "error" in r else f"{r['ratio']:>8.2f}x")
        static = [f"{r['step_ms']:.0f}" for r in rows if r["balancer"] == "static" and (b, m) == ("static", "-")]
        print(f"{b:<14} {m:<15}" + "".join(cells) + ("   " + "/".join(static) if static else ""))
    for r in rows:
        if "error" in r:
            print(f"error: T={r['tasks']} {r['balancer']} {r['mode']}: {r['error']}")


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
    print_table(rows)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
