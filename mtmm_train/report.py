"""``mtmm-report <multirun folder>``: per-configuration metrics as mean +- std over seeds.

Reads every job folder of a Hydra multirun (``metrics.json`` and ``.hydra/overrides.yaml``),
groups the jobs by their overrides without ``seed``, and prints one row per configuration;
writes ``report.md`` and ``report.csv`` (and ``report.png`` with ``--plot``) into the folder.
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import json
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mtmm_train.errors import UserError

IGNORED_OVERRIDES = ("seed", "hydra.", "trainer.resume")
LOWER_IS_BETTER = ("mae", "mse", "rmse", "loss")  # metric names (last part of the key); the rest: higher


@dataclass
class Job:
    """One finished run of the sweep."""

    folder: Path
    config: str
    seed: str
    metrics: dict[str, float]


@dataclass
class Row:
    """One configuration: its metrics over seeds."""

    config: str
    seeds: list[str] = field(default_factory=list)
    values: dict[str, list[float]] = field(default_factory=dict)

    def mean_std(self, key: str) -> tuple[float, float]:
        """Mean and sample standard deviation (0 for one seed) of ``key``; NaN when absent."""
        vals = [v for v in self.values.get(key, []) if math.isfinite(v)]
        if not vals:
            return float("nan"), float("nan")
        return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def load_jobs(folder: Path, which: str = "best") -> tuple[list[Job], list[Path]]:
    """Every job folder under ``folder`` with a ``metrics.json``; also the folders without one."""
    if not folder.is_dir():
        raise UserError(f"'{folder}' is not a folder; pass a multirun folder (e.g. logs/multiruns/<time>)")
    jobs, unfinished = [], []
    def job_order(path: Path) -> tuple:
        # Job folders are numbered 0, 1, ..., 10: sort numbers as numbers, in the order the sweep ran.
        return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in path.relative_to(folder).parts)

    for overrides_file in sorted(folder.rglob(".hydra/overrides.yaml"), key=job_order):
        job_dir = overrides_file.parent.parent
        metrics_file = job_dir / "metrics.json"
        if not metrics_file.is_file():
            unfinished.append(job_dir)
            continue
        overrides = yaml.safe_load(overrides_file.read_text()) or []
        kept = [o for o in overrides if not o.lstrip("+~").startswith(IGNORED_OVERRIDES)]
        seed = next((o.split("=", 1)[1] for o in overrides if o.startswith("seed=")), "0")
        result = json.loads(metrics_file.read_text())
        metrics = dict(result["best"]["metrics"] if which == "best" else result["final"])
        metrics["monitor"] = result["best"]["value"] if which == "best" else metrics.get(result["monitor"], math.nan)
        jobs.append(Job(job_dir, " ".join(kept), seed, metrics))
    # Overrides that every job shares say nothing about the difference between rows.
    common = set.intersection(*(set(j.config.split()) for j in jobs)) if jobs else set()
    for job in jobs:
        job.config = " ".join(o for o in job.config.split() if o not in common) or "(defaults)"
    return jobs, unfinished


def group(jobs: list[Job]) -> list[Row]:
    """One row per configuration, in the order the sweep ran them."""
    rows: dict[str, Row] = {}
    for job in jobs:
        row = rows.setdefault(job.config, Row(job.config))
        row.seeds.append(job.seed)
        for k, v in job.metrics.items():
            row.values.setdefault(k, []).append(float(v))
    return list(rows.values())


def metric_keys(rows: list[Row], patterns: list[str] | None) -> list[str]:
    """The columns: ``monitor`` then task metrics (not losses), or those matching ``patterns``."""
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row.values if k not in keys]
    if patterns:
        return [k for k in keys if any(fnmatch.fnmatch(k, p) for p in patterns)]
    return ["monitor"] + [k for k in keys if k.startswith("val/") and "/loss/" not in k]


def baseline_metrics(folder: Path, which: str = "best") -> dict[str, float]:
    """Single-task baselines: each ``val/`` metric's mean over the runs of ``folder`` that report it."""
    jobs, _ = load_jobs(folder, which)
    if not jobs:
        raise UserError(f"--baselines: no finished run under '{folder}'; train the single-task runs first, "
                        "e.g. mtmm-train -m 'tasks=[category],[score]' seed=0,1,2")
    values: dict[str, list[float]] = {}
    for job in jobs:
        for k, v in job.metrics.items():
            if k.startswith("val/") and "/loss/" not in k and math.isfinite(v):
                values.setdefault(k, []).append(float(v))
    return {k: statistics.fmean(v) for k, v in values.items()}


def delta_m_keys(baselines: dict[str, float], patterns: list[str] | None = None) -> list[str]:
    """The metrics Delta_m averages: those matching ``patterns``, or the first metric of each task."""
    if patterns:
        return [k for k in baselines if any(fnmatch.fnmatch(k, p) for p in patterns)]
    first: dict[str, str] = {}
    for k in baselines:
        first.setdefault(k.split("/")[1], k)
    return list(first.values())


def add_delta_m(rows: list[Row], baselines: dict[str, float], keys: list[str]) -> None:
    """Add ``delta_m`` to every row, per seed: the mean relative improvement over the single-task
    baselines in percent, ``100/T sum_t s_t (M_t - B_t) / B_t`` with ``s_t = -1`` where lower is
    better (Maninis et al., 2019); metrics a row lacks are left out of its mean."""
    for row in rows:
        per_seed = []
        for i in range(len(row.seeds)):
            terms = []
            for k in keys:
                vals = row.values.get(k, [])
                if i < len(vals) and math.isfinite(vals[i]) and baselines.get(k):
                    sign = -1.0 if k.rsplit("/", 1)[-1] in LOWER_IS_BETTER else 1.0
                    terms.append(sign * (vals[i] - baselines[k]) / abs(baselines[k]))
            per_seed.append(100 * statistics.fmean(terms) if terms else math.nan)
        row.values["delta_m"] = per_seed


def _fmt(mean: float, std: float) -> str:
    return "n/a" if math.isnan(mean) else f"{mean:.4f} ± {std:.4f}"


def to_markdown(rows: list[Row], keys: list[str], monitor: str) -> str:
    """A Markdown table: configuration, seeds, then ``mean ± std`` per metric."""
    names = [monitor if k == "monitor" else k.removeprefix("val/") for k in keys]
    lines = ["| configuration | seeds | " + " | ".join(names) + " |", "|" + " --- |" * (len(keys) + 2)]
    for row in rows:
        cells = [_fmt(*row.mean_std(k)) for k in keys]
        lines.append(f"| {row.config} | {len(row.seeds)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_csv(rows: list[Row], keys: list[str], path: Path) -> None:
    """One line per configuration: ``<metric>_mean`` and ``<metric>_std`` columns."""
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["configuration", "seeds"] + [f"{k}_{s}" for k in keys for s in ("mean", "std")])
        for row in rows:
            w.writerow([row.config, len(row.seeds)] + [x for k in keys for x in row.mean_std(k)])


def plot(rows: list[Row], key: str, label: str, path: Path) -> None:
    """A bar chart of ``key`` per configuration, with the std over seeds as error bars."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("--plot needs matplotlib; install it with: pip install matplotlib") from None
    means, stds = zip(*(row.mean_std(key) for row in rows), strict=True)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(rows)), 3.5))
    ax.bar(range(len(rows)), means, yerr=stds, capsize=4)
    ax.set_xticks(range(len(rows)), [r.config for r in rows], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(label)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(folder: Path, patterns: list[str] | None = None, which: str = "best", make_plot: bool = False,
           out: Path | None = None, baselines: Path | None = None, delta_patterns: list[str] | None = None) -> str:
    """Build the report of a multirun folder; write the files; return the Markdown table."""
    jobs, unfinished = load_jobs(folder, which)
    if not jobs:
        raise UserError(f"no finished run (a job folder with metrics.json and .hydra/overrides.yaml) under '{folder}'")
    monitor = json.loads((jobs[0].folder / "metrics.json").read_text())["monitor"]
    rows = group(jobs)
    keys = metric_keys(rows, patterns)
    if not keys:
        raise UserError(f"--metrics {patterns} matches no metric; metrics: {', '.join(rows[0].values)}")
    if baselines is not None:
        base = baseline_metrics(baselines, which)
        delta_keys = delta_m_keys(base, delta_patterns)
        if not delta_keys:
            raise UserError(f"--delta-metrics {delta_patterns} matches no baseline metric; metrics: {', '.join(base)}")
        add_delta_m(rows, base, delta_keys)
        keys.append("delta_m")
    out = out or folder
    out.mkdir(parents=True, exist_ok=True)
    table = to_markdown(rows, keys, monitor)
    note = f"\n\n{len(unfinished)} unfinished job(s) left out: " + ", ".join(str(u) for u in unfinished) \
        if unfinished else ""
    (out / "report.md").write_text(f"# Sweep report: {folder}\n\n{which} metrics, mean ± std over seeds\n\n"
                                   f"{table}{note}\n")
    write_csv(rows, keys, out / "report.csv")
    if make_plot:
        plot(rows, "monitor", f"{monitor} ({which})", out / "report.png")
    return table + note


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    parser = argparse.ArgumentParser(prog="mtmm-report", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a multirun folder (logs/multiruns/<time>)")
    parser.add_argument("--metrics", nargs="+", help="glob patterns of metric keys, e.g. 'val/match/*'")
    parser.add_argument("--which", choices=("best", "final"), default="best",
                        help="metrics at the best epoch (by trainer.monitor) or at the end")
    parser.add_argument("--plot", action="store_true", help="also write report.png (needs matplotlib)")
    parser.add_argument("--out", type=Path, help="folder for report.md/.csv/.png (default: the multirun folder)")
    parser.add_argument("--baselines", type=Path,
                        help="a multirun folder of single-task runs (tasks=[<task>]): adds Delta_m, the mean relative "
                             "improvement over them in percent")
    parser.add_argument("--delta-metrics", nargs="+",
                        help="glob patterns of the metrics Delta_m averages (default: the first metric of each task)")
    args = parser.parse_args(argv)
    try:
        print(report(args.folder, args.metrics, args.which, args.plot, args.out, args.baselines, args.delta_metrics))
    except UserError as e:
        print(f"mtmm-report: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
