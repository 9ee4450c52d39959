"""``mtmm-report <multirun folder>``: per-configuration metrics as mean +- std over seeds.

Reads every job folder of a Hydra multirun (``metrics.json`` and ``.hydra/overrides.yaml``),
groups the jobs by their overrides without ``seed``, and prints one row per configuration;
writes ``report.md`` and ``report.csv`` (and ``report.png`` with ``--plot``) into the folder.
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import io
import json
import math
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mtmm_train import fileio
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
    monitor: str = "monitor"  # the name of trainer.monitor in its metrics.json


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


class Unreadable(Exception):
    """A job's file that cannot be used; the message names it and says why."""


def warn(message: str) -> None:
    """One warning line on stderr: a job left out of the report."""
    print(f"mtmm-report: warning: {message}", file=sys.stderr)


def read_overrides(path: Path) -> list[str]:
    """A job's ``.hydra/overrides.yaml``: its command-line overrides.

    Raises:
        Unreadable: the file cannot be read, is not YAML, or not a list of overrides.
    """
    try:
        overrides = yaml.safe_load(path.read_text()) or []
    except (OSError, UnicodeDecodeError) as e:
        raise Unreadable(f"{path} cannot be read ({getattr(e, 'strerror', None) or e})") from None
    except yaml.YAMLError as e:
        raise Unreadable(f"{path} is not valid YAML ({' '.join(str(e).split())[:120]})") from None
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise Unreadable(f"{path} is not a list of overrides (not written by Hydra?)")
    return overrides


def read_metrics(path: Path, which: str = "best") -> tuple[str, dict[str, float]]:
    """A job's ``metrics.json``: the name of its monitored metric, and the metrics of the ``best``
    epoch (or the ``final`` ones) plus ``monitor``, its value.

    Raises:
        Unreadable: the file cannot be read, is cut short (invalid JSON), or lacks the entries.
    """
    try:
        result = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise Unreadable(f"{path} cannot be read ({getattr(e, 'strerror', None) or e})") from None
    except json.JSONDecodeError as e:
        raise Unreadable(f"{path} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}): cut short, "
                         "or being written by an older mtmm-train") from None
    best = result.get("best") if isinstance(result, dict) else None
    if not isinstance(best, dict) or not isinstance(best.get("metrics"), dict) \
            or not isinstance(best.get("value"), (int, float)):
        raise Unreadable(f"{path} has no 'best' entry with a 'value' and 'metrics' (not written by mtmm-train?)")
    monitor = str(result.get("monitor", "monitor"))
    if which == "best":
        chosen, value = best["metrics"], best["value"]
    else:
        chosen = result.get("final")
        if not isinstance(chosen, dict):
            raise Unreadable(f"{path} has no 'final' entry (use --which best)")
        value = chosen.get(monitor, math.nan)
    metrics = {k: float(v) for k, v in chosen.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    metrics["monitor"] = float(value) if isinstance(value, (int, float)) else math.nan
    return monitor, metrics


def load_jobs(folder: Path, which: str = "best",
              on_skip: Callable[[str], None] = warn) -> tuple[list[Job], list[Path]]:
    """Every job folder under ``folder`` with a ``metrics.json``; also the folders without one.

    A job whose files cannot be used (a ``metrics.json`` cut short, or without ``best``) is left
    out, and ``on_skip`` is told why (default: one warning line on stderr).
    """
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
        try:
            overrides = read_overrides(overrides_file)
            monitor, metrics = read_metrics(metrics_file, which)
        except Unreadable as e:
            on_skip(f"left out {job_dir}: {e}")
            continue
        kept = [o for o in overrides if not o.lstrip("+~").startswith(IGNORED_OVERRIDES)]
        seed = next((o.split("=", 1)[1] for o in overrides if o.startswith("seed=")), "0")
        jobs.append(Job(job_dir, " ".join(kept), seed, metrics, monitor))
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
    """One line per configuration: ``<metric>_mean`` and ``<metric>_std`` columns (written atomically)."""
    text = io.StringIO(newline="")
    w = csv.writer(text)
    w.writerow(["configuration", "seeds"] + [f"{k}_{s}" for k in keys for s in ("mean", "std")])
    for row in rows:
        w.writerow([row.config, len(row.seeds)] + [x for k in keys for x in row.mean_std(k)])
    fileio.write_text(path, text.getvalue())


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
    try:
        fileio.save_figure(fig, path, dpi=120)
    finally:
        plt.close(fig)


def report(folder: Path, patterns: list[str] | None = None, which: str = "best", make_plot: bool = False,
           out: Path | None = None, baselines: Path | None = None, delta_patterns: list[str] | None = None) -> str:
    """Build the report of a multirun folder; write the files; return the Markdown table.

    Jobs whose files cannot be used are left out with a warning line each (and a note in the
    report); every file is written atomically.

    Raises:
        UserError: no finished job, no metric matches, or the output folder is unusable.
        mtmm_train.fileio.WriteError: a file could not be written (e.g. the disk is full).
    """
    skipped: list[str] = []

    def skip(message: str) -> None:
        warn(message)
        skipped.append(message.removeprefix("left out "))

    jobs, unfinished = load_jobs(folder, which, skip)
    if not jobs:
        raise UserError(f"no finished run (a job folder with metrics.json and .hydra/overrides.yaml) under '{folder}'")
    monitor = jobs[0].monitor
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
    # The output folder before anything is written: a file, or read-only, is one line (exit 2).
    fileio.check_folder(out or folder, "--out" if out else "the multirun folder (where the report goes without --out)",
                        "pass --out <a writable folder> (it is created if missing)")
    out = out or folder
    table = to_markdown(rows, keys, monitor)
    note = f"\n\n{len(unfinished)} unfinished job(s) left out: " + ", ".join(str(u) for u in unfinished) \
        if unfinished else ""
    if skipped:
        note += f"\n\n{len(skipped)} unreadable job(s) left out: " + "; ".join(skipped)
    fileio.write_text(out / "report.md", f"# Sweep report: {folder}\n\n{which} metrics, mean ± std over seeds\n\n"
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
    except fileio.WriteError as e:  # the disk filled up (or went read-only) while writing
        print(f"mtmm-report: error: cannot write {fileio.explain(e)}; the files there from before are intact: make "
              "room, or pass --out <another folder>", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
