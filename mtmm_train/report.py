"""``mtmm-report <multirun folder>``: per-configuration metrics as mean +- std over seeds.

Reads every job folder of a Hydra multirun (``metrics.json``, ``.hydra/overrides.yaml`` and the
composed ``.hydra/config.yaml``), groups the jobs by their overrides without ``seed``, and prints
one row per configuration with n, its number of runs; writes ``report.md`` and ``report.csv``
(and ``report.png`` with ``--plot``) into the folder.
"""

from __future__ import annotations

import argparse
import csv
import difflib
import fnmatch
import io
import json
import math
import statistics
import sys
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mtmm_train import fileio
from mtmm_train.errors import UserError

IGNORED_OVERRIDES = ("seed", "hydra.", "trainer.resume")
LOWER_IS_BETTER = ("mae", "mse", "rmse", "loss")  # metric names (last part of the key); the rest: higher
# Settings that say nothing about what a baseline learns, never compared when runs are matched to
# their baselines (a key, or a group with everything under it): the seed, the tasks (a baseline
# trains fewer by design), the monitored metric (a single-task run cannot monitor another task's),
# where files go, and what changes the speed only.
UNMATCHED_SETTINGS = ("seed", "tasks", "hydra", "paths", "logger", "hparams_search", "trainer.resume",
                      "trainer.device", "trainer.monitor", "trainer.monitor_mode", "trainer.checkpoint_every_n_steps",
                      "trainer.eval_batch_size", "trainer.num_threads", "trainer.test", "trainer.compile",
                      "trainer.compile_mode", "trainer.cudnn_benchmark", "dataset.seed", "dataset.cache",
                      "dataset.cache_dir")
SPLITS = ("val", "test")


@dataclass
class Job:
    """One finished run of the sweep."""

    folder: Path
    config: str
    seed: str
    metrics: dict[str, float]
    monitor: str = "monitor"  # the name of trainer.monitor in its metrics.json
    monitor_mode: str = "min"  # trainer.monitor_mode: min or max
    settings: dict[str, str] = field(default_factory=dict)  # its composed config, flat (or its overrides)
    dataset: str = "(default)"  # the dataset config's name, and its manifest when it has one


@dataclass
class Row:
    """One configuration: its metrics over seeds."""

    config: str
    seeds: list[str] = field(default_factory=list)
    values: dict[str, list[float]] = field(default_factory=dict)
    settings: dict[str, str] = field(default_factory=dict)
    dataset: str = "(default)"

    def mean_std(self, key: str) -> tuple[float, float]:
        """Mean and sample standard deviation (0 for one seed) of ``key``; NaN when absent."""
        mean, std, count = self.stats(key)
        return mean, (0.0 if count == 1 else std)

    def stats(self, key: str) -> tuple[float, float, int]:
        """Mean, sample standard deviation (NaN below two values) and count of the finite values of ``key``."""
        vals = [v for v in self.values.get(key, []) if math.isfinite(v)]
        if not vals:
            return float("nan"), float("nan"), 0
        return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else float("nan")), len(vals)


class Unreadable(Exception):
    """A job's file that cannot be used; the message names it and says why."""


def warn(message: str) -> None:
    """One warning line on stderr: a job left out of the report."""
    print(f"mtmm-report: warning: {message}", file=sys.stderr)


def lower_is_better(key: str, monitor_mode: str = "min") -> bool:
    """A metric's direction: losses and errors (``*/loss/*``, ``mae``, ``mse``, ``rmse``) are better lower, the
    rest (accuracy, AUROC, R^2, F1, ``delta_m``) higher; ``monitor`` follows ``trainer.monitor_mode``."""
    if key == "monitor":
        return monitor_mode == "min"
    return "/loss/" in f"/{key}/" or key.rsplit("/", 1)[-1] in LOWER_IS_BETTER


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
    epoch (or the ``final`` ones) plus ``monitor``, its value, plus the test split's (``test/...``,
    the best checkpoint's, when the run evaluated one).

    Raises:
        Unreadable: the file cannot be read, is cut short (invalid JSON), or lacks the entries.
    """
    result = _read_json(path)
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
    test = result.get("test") if isinstance(result.get("test"), dict) else {}
    chosen = {**chosen, **{k if k.startswith("test/") else f"test/{k}": v for k, v in test.items()}}
    metrics = {k: float(v) for k, v in chosen.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    metrics["monitor"] = float(value) if isinstance(value, (int, float)) else math.nan
    return monitor, metrics


def _read_json(path: Path) -> dict:
    try:
        result = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise Unreadable(f"{path} cannot be read ({getattr(e, 'strerror', None) or e})") from None
    except json.JSONDecodeError as e:
        raise Unreadable(f"{path} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}): cut short, "
                         "or being written by an older mtmm-train") from None
    return result if isinstance(result, dict) else {}


def flatten(node: object, prefix: str = "") -> dict[str, str]:
    """A nested config as ``{"a.b.c": value}``, each value as text (lists and ``null`` as JSON)."""
    if isinstance(node, dict) and node:
        out: dict[str, str] = {}
        for k, v in node.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: node if isinstance(node, str) else json.dumps(node)}


def read_settings(job_dir: Path, overrides: list[str]) -> tuple[dict[str, str], str]:
    """A job's settings and dataset, to match it with its baselines.

    The settings are its composed config (``.hydra/config.yaml``) flattened to dotted keys, or,
    without that file, its overrides (``key=value``). The dataset is the name of its dataset
    config (Hydra's choice, ``.hydra/hydra.yaml``), with ``dataset.manifest`` when it is set.
    """
    hydra_dir = job_dir / ".hydra"
    config = _read_yaml(hydra_dir / "config.yaml")
    if isinstance(config, dict):
        settings = flatten(config)
        hydra = _read_yaml(hydra_dir / "hydra.yaml")
        choices = hydra.get("hydra", {}).get("runtime", {}).get("choices", {}) if isinstance(hydra, dict) else {}
        name = str((choices or {}).get("dataset") or settings.get("dataset._target_", "(default)"))
    else:
        settings = {}
        for o in overrides:
            key, _, value = o.lstrip("+~").partition("=")
            settings[key] = value
        name = settings.get("dataset", "(default)")
    manifest = settings.get("dataset.manifest", "null")
    return settings, (name if manifest == "null" else f"{name} ({manifest})")


def _read_yaml(path: Path) -> object:
    try:
        return yaml.safe_load(path.read_text()) if path.is_file() else None
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None


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
        mode = str(_read_json(metrics_file).get("monitor_mode") or ("max" if not lower_is_better(monitor) else "min"))
        settings, dataset = read_settings(job_dir, overrides)
        jobs.append(Job(job_dir, " ".join(kept), seed, metrics, monitor, mode, settings, dataset))
    # Overrides that every job shares say nothing about the difference between rows.
    common = set.intersection(*(set(j.config.split()) for j in jobs)) if jobs else set()
    for job in jobs:
        job.config = " ".join(o for o in job.config.split() if o not in common) or "(defaults)"
    return jobs, unfinished


def group(jobs: list[Job]) -> list[Row]:
    """One row per configuration, in the order the sweep ran them."""
    rows: dict[str, Row] = {}
    for job in jobs:
        row = rows.setdefault(job.config, Row(job.config, settings=job.settings, dataset=job.dataset))
        row.seeds.append(job.seed)
        for k, v in job.metrics.items():
            row.values.setdefault(k, []).append(float(v))
    return list(rows.values())


def metric_keys(rows: list[Row], patterns: list[str] | None, split: str = "val") -> list[str]:
    """The columns: ``monitor`` then the ``split``'s task metrics (not losses), or those matching ``patterns``."""
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row.values if k not in keys]
    if patterns:
        return [k for k in keys if any(fnmatch.fnmatch(k, p) for p in patterns)]
    return ["monitor"] + [k for k in keys if k.startswith(f"{split}/") and "/loss/" not in k]


# ---------------------------------------------------------------------- baselines and Delta_m
def tasks_of(metrics: Sequence[str], split: str = "val") -> list[str]:
    """The tasks with a metric ``<split>/<task>/<metric>`` among ``metrics`` (losses aside), in order."""
    tasks: list[str] = []
    for k in metrics:
        parts = k.split("/")
        if len(parts) == 3 and parts[0] == split and parts[1] != "loss" and parts[1] not in tasks:
            tasks.append(parts[1])
    return tasks


def swept_settings(jobs: list[Job]) -> set[str]:
    """The settings whose value differs among ``jobs`` (a setting some jobs lack counts as differing)."""
    keys = set().union(*(j.settings for j in jobs)) if jobs else set()
    return {k for k in keys if len({j.settings.get(k) for j in jobs}) > 1}


def _unmatched(key: str, also: Sequence[str] = ()) -> bool:
    return any(key == p or key.startswith(f"{p}.") for p in (*UNMATCHED_SETTINGS, *also))


def differences(a: dict[str, str], b: dict[str, str], skip: set[str], also: Sequence[str] = ()) -> list[str]:
    """The settings (keys) where ``a`` and ``b`` differ, but for ``skip`` and the unmatched ones."""
    return [k for k in sorted(a.keys() | b.keys())
            if k not in skip and not _unmatched(k, also) and a.get(k) != b.get(k)]


@dataclass
class Match:
    """The baselines of one task of one configuration: the runs, their mean per metric, or why none."""

    runs: list[Job] = field(default_factory=list)
    values: dict[str, float] = field(default_factory=dict)
    why_none: str = ""


def match_baselines(row: Row, swept: set[str], baselines: list[Job], split: str = "val",
                    ignore: Sequence[str] = ()) -> dict[str, Match]:
    """Each task of ``row``'s baselines: the runs of ``baselines`` that

    - trained on the same dataset (its config's name and ``dataset.manifest``),
    - report the task (a metric ``<split>/<task>/...``), and
    - have the row's value of every setting but the ``swept`` ones (those that differ among the
      reported runs), the unmatched ones (``UNMATCHED_SETTINGS``: seed, tasks, paths, ...) and ``ignore``.

    Among them, those that also share the row's swept settings, when there are any (a fusion=sum
    baseline for the fusion=sum row); else all of them. Their mean per metric of the task.
    """
    matches: dict[str, Match] = {}
    for task in tasks_of(row.values, split):
        found = [b for b in baselines if b.dataset == row.dataset and task in tasks_of(b.metrics, split)]
        if not found:
            matches[task] = Match(why_none=f"no baseline run reports {split}/{task}/... on dataset {row.dataset}")
            continue
        same = [b for b in found if not differences(b.settings, row.settings, swept, ignore)]
        if not same:
            closest = min(found, key=lambda b: len(differences(b.settings, row.settings, swept, ignore)))
            diff = differences(closest.settings, row.settings, swept, ignore)
            shown = ", ".join(f"{k}={closest.settings.get(k, '(unset)')} (here: {row.settings.get(k, '(unset)')})"
                              for k in diff[:3])
            more = f" and {len(diff) - 3} more" if len(diff) > 3 else ""
            matches[task] = Match(why_none=f"the closest, {closest.folder}, has {shown}{more}")
            continue
        runs = [b for b in same if not differences(b.settings, row.settings, set(), ignore)] or same
        values: dict[str, list[float]] = {}
        for b in runs:
            for k, v in b.metrics.items():
                if k.startswith(f"{split}/{task}/") and math.isfinite(v):
                    values.setdefault(k, []).append(v)
        matches[task] = Match(runs, {k: statistics.fmean(v) for k, v in values.items()})
    return matches


def load_baselines(folders: Sequence[Path], which: str = "best") -> list[Job]:
    """The finished runs of every baseline folder.

    Raises:
        UserError: a folder holds no finished run.
    """
    jobs: list[Job] = []
    for folder in folders:
        found, _ = load_jobs(folder, which)
        if not found:
            raise UserError(f"--baselines: no finished run under '{folder}'; train the single-task runs first, "
                            "e.g. mtmm-train -m 'tasks=[category],[score]' seed=0,1,2")
        jobs += found
    return jobs


def baseline_metrics(folder: Path, which: str = "best") -> dict[str, float]:
    """Each ``val/`` metric's mean over the runs of ``folder`` that report it (every run, unmatched)."""
    values: dict[str, list[float]] = {}
    for job in load_baselines([folder], which):
        for k, v in job.metrics.items():
            if k.startswith("val/") and "/loss/" not in k and math.isfinite(v):
                values.setdefault(k, []).append(float(v))
    return {k: statistics.fmean(v) for k, v in values.items()}


def delta_m_keys(baselines: Sequence[str], patterns: list[str] | None = None) -> list[str]:
    """The metrics Delta_m averages: those matching ``patterns``, or the first metric of each task."""
    if patterns:
        return [k for k in baselines if any(fnmatch.fnmatch(k, p) for p in patterns)]
    first: dict[str, str] = {}
    for k in baselines:
        first.setdefault(k.split("/")[1], k)
    return list(first.values())


def add_delta_m(rows: list[Row], baselines: dict[str, float] | list[dict[str, float]], keys: list[str]) -> None:
    """Add ``delta_m`` to every row, per seed: the mean relative improvement over the single-task
    baselines in percent, ``100/T sum_t s_t (M_t - B_t) / B_t`` with ``s_t = -1`` where lower is
    better (Maninis et al., 2019); metrics a row (or its baselines) lack are left out of its mean.
    ``baselines``: one dict for every row, or one per row."""
    per_row = baselines if isinstance(baselines, list) else [baselines] * len(rows)
    for row, base in zip(rows, per_row, strict=True):
        per_seed = []
        for i in range(len(row.seeds)):
            terms = []
            for k in keys:
                vals = row.values.get(k, [])
                if i < len(vals) and math.isfinite(vals[i]) and base.get(k):
                    sign = -1.0 if lower_is_better(k) else 1.0
                    terms.append(sign * (vals[i] - base[k]) / abs(base[k]))
            per_seed.append(100 * statistics.fmean(terms) if terms else math.nan)
        row.values["delta_m"] = per_seed


def _runs(jobs: list[Job]) -> str:
    return ", ".join(str(j.folder) for j in jobs)


def apply_baselines(rows: list[Row], jobs: list[Job], folders: Sequence[Path], which: str, split: str,
                    delta_patterns: list[str] | None, ignore: Sequence[str], on_warning: Callable[[str], None]) -> str:
    """Match every row to its baselines, add ``delta_m``; return the report's note on what was matched
    (one warning per task without a baseline)."""
    baselines = load_baselines(folders, which)
    swept = swept_settings(jobs)
    matches = [match_baselines(row, swept, baselines, split, ignore) for row in rows]
    per_row = [{k: v for m in found.values() for k, v in m.values.items()} for found in matches]
    every = [k for base in per_row for k in base]
    keys = delta_m_keys(list(dict.fromkeys(every)), delta_patterns)
    if delta_patterns and not keys:
        raise UserError(f"--delta-metrics {delta_patterns} matches no baseline metric; metrics: "
                        f"{', '.join(dict.fromkeys(every)) or 'none (no baseline matched)'}")
    add_delta_m(rows, per_row, keys)
    lines = [f"Baselines (Delta_m over {', '.join(keys) or 'no metric'}): runs on the same dataset with the same "
             "settings, but for those swept here (" + (", ".join(sorted(k for k in swept if not _unmatched(k, ignore)))
                                                      or "none") + ")"]
    missing: dict[str, list[str]] = {}
    for row, found in zip(rows, matches, strict=True):
        cells = []
        for task, m in found.items():
            if m.runs:
                cells.append(f"{task}: {len(m.runs)} run(s) ({_runs(m.runs)})")
            else:
                cells.append(f"{task}: none")
                missing.setdefault(task, []).append(f"'{row.config}' ({m.why_none})")
        lines.append(f"- {row.config}: " + "; ".join(cells))
    for task, where in missing.items():
        on_warning(f"no baseline for task '{task}' of {len(where)} of {len(rows)} configuration(s), so their "
                   f"Delta_m leaves it out: {where[0]}" + (f"; and {len(where) - 1} more" if len(where) > 1 else ""))
    return "\n".join(lines)


# ---------------------------------------------------------------------- output
def cell(row: Row, key: str) -> str:
    """``mean ± std`` of ``key`` over the row's runs; the mean alone for one run; ``(n=k)`` when only k of
    the row's runs have the metric; ``n/a`` for none."""
    mean, std, count = row.stats(key)
    if count == 0:
        return "n/a"
    text = f"{mean:.4f}" if count < 2 else f"{mean:.4f} ± {std:.4f}"
    return text if count == len(row.seeds) else f"{text} (n={count})"


def best_row(rows: list[Row], key: str, monitor_mode: str = "min") -> int | None:
    """The index of the row with the best mean of ``key`` (by its direction); None when no row has it."""
    means = [(row.stats(key)[0], i) for i, row in enumerate(rows)]
    means = [(m, i) for m, i in means if math.isfinite(m)]
    if not means:
        return None
    pick = min if lower_is_better(key, monitor_mode) else max
    return pick(means, key=lambda mi: mi[0])[1]


def column_name(key: str, monitor: str) -> str:
    return monitor if key == "monitor" else key.removeprefix("val/")


def to_markdown(rows: list[Row], keys: list[str], monitor: str) -> str:
    """A Markdown table: configuration, n (its runs), then ``mean ± std`` per metric."""
    names = [column_name(k, monitor) for k in keys]
    lines = ["| configuration | n | " + " | ".join(names) + " |", "|" + " --- |" * (len(keys) + 2)]
    for row in rows:
        lines.append(f"| {row.config} | {len(row.seeds)} | " + " | ".join(cell(row, k) for k in keys) + " |")
    return "\n".join(lines)


def best_note(rows: list[Row], keys: list[str], monitor: str, monitor_mode: str) -> str:
    """One line per metric: the best configuration (lowest or highest mean, by the metric's direction)."""
    if len(rows) < 2:
        return ""
    lines = []
    for k in keys:
        i = best_row(rows, k, monitor_mode)
        if i is not None:
            way = "lowest" if lower_is_better(k, monitor_mode) else "highest"
            lines.append(f"- {column_name(k, monitor)} ({way}): {rows[i].config}")
    return "Best configuration per metric (by the mean):\n" + "\n".join(lines) if lines else ""


def write_csv(rows: list[Row], keys: list[str], path: Path) -> None:
    """One line per configuration: ``n``, then ``<metric>_mean`` and ``<metric>_std`` columns (the std empty
    below two runs); written atomically."""
    text = io.StringIO(newline="")
    w = csv.writer(text)
    w.writerow(["configuration", "n"] + [f"{k}_{s}" for k in keys for s in ("mean", "std")])
    for row in rows:
        cells: list[object] = []
        for k in keys:
            mean, std, count = row.stats(k)
            cells += [mean, std if count > 1 else ""]
        w.writerow([row.config, len(row.seeds)] + cells)
    fileio.write_text(path, text.getvalue())


def plot(rows: list[Row], keys: list[str], path: Path, monitor: str = "monitor", monitor_mode: str = "min",
         title: str = "") -> None:
    """One panel per metric: each configuration's runs (small dots), their mean (a large dot) and
    standard deviation (a bar, from two runs), on an axis that spans the data, not from zero; the
    best configuration in orange with a star (lowest for losses and errors, highest otherwise)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("--plot needs matplotlib; install it with: pip install matplotlib") from None
    ncols = min(3, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    labels = [textwrap.shorten(r.config, 48, placeholder="...") + f"  (n={len(r.seeds)})" for r in rows]
    height = max(1.8, 0.32 * len(rows) + 1.0)
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.6 + 3.6 * ncols, height * nrows), sharey=True, squeeze=False)
    y = list(range(len(rows)))[::-1]  # the first configuration on top
    for ax, key in zip(axes.flat, keys, strict=False):
        best = best_row(rows, key, monitor_mode)
        for i, row in enumerate(rows):
            mean, std, count = row.stats(key)
            if count == 0:
                continue
            colour = "tab:orange" if i == best else "tab:blue"
            runs = [v for v in row.values.get(key, []) if math.isfinite(v)]
            ax.plot(runs, [y[i]] * len(runs), "o", ms=3, color="0.55", alpha=0.7, zorder=2)
            ax.errorbar([mean], [y[i]], xerr=[std] if count > 1 else None, fmt="*" if i == best else "o",
                        ms=11 if i == best else 7, color=colour, capsize=3, zorder=3)
        way = "lower is better" if lower_is_better(key, monitor_mode) else "higher is better"
        ax.set_title(f"{column_name(key, monitor)}\n({way})", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        ax.margins(x=0.12, y=0.5 / max(1, len(rows)))
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[len(keys):]:
        ax.set_visible(False)
    axes[0, 0].set_yticks(y, labels, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    try:
        fileio.save_figure(fig, path, dpi=120)
    finally:
        plt.close(fig)


def report(folder: Path, patterns: list[str] | None = None, which: str = "best", make_plot: bool = False,
           out: Path | None = None, baselines: Path | Sequence[Path] | None = None,
           delta_patterns: list[str] | None = None, split: str = "val", ignore: Sequence[str] = ()) -> str:
    """Build the report of a multirun folder; write the files; return the Markdown table and its notes.

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
    monitor, monitor_mode = jobs[0].monitor, jobs[0].monitor_mode
    rows = group(jobs)
    keys = metric_keys(rows, patterns, split)
    if not keys:
        raise UserError(f"--metrics {patterns} matches no metric; metrics: {', '.join(rows[0].values)}")
    if split == "test" and not patterns and not any(k.startswith("test/") for k in keys):
        raise UserError(f"--split test: no run under '{folder}' has test metrics (metrics.json 'test'); train with "
                        "trainer.test=true (the default) on data with a test split, or use --split val")
    notes = []
    if baselines is not None:
        folders = [baselines] if isinstance(baselines, (str, Path)) else list(baselines)
        notes.append(apply_baselines(rows, jobs, [Path(f) for f in folders], which, split, delta_patterns, ignore,
                                     warn))
        keys.append("delta_m")
    # The output folder before anything is written: a file, or read-only, is one line (exit 2).
    fileio.check_folder(out or folder, "--out" if out else "the multirun folder (where the report goes without --out)",
                        "pass --out <a writable folder> (it is created if missing)")
    out = out or folder
    table = to_markdown(rows, keys, monitor)
    notes.append(best_note(rows, keys, monitor, monitor_mode))
    if unfinished:
        notes.append(f"{len(unfinished)} unfinished job(s) left out: " + ", ".join(str(u) for u in unfinished))
    if skipped:
        notes.append(f"{len(skipped)} unreadable job(s) left out: " + "; ".join(skipped))
    note = "".join(f"\n\n{n}" for n in notes if n)
    what = f"{which} epoch's metrics" + (", test split of the best checkpoint" if split == "test" else "")
    fileio.write_text(out / "report.md", f"# Sweep report: {folder}\n\n{what}; mean ± std over the n runs (seeds) "
                                         f"of each configuration, the mean alone when n = 1\n\n{table}{note}\n")
    write_csv(rows, keys, out / "report.csv")
    if make_plot:
        plot(rows, keys, out / "report.png", monitor, monitor_mode, title=f"{folder.name}: {what}")
    return table + note


def unknown_argument(arg: str, parser: argparse.ArgumentParser) -> str:
    """The message for an argument ``mtmm-report`` does not take: a misspelt option, a ``key=value`` setting
    as the other commands take them (``splt=val``: ``did you mean --split val?``), or a second folder.

    Args:
        arg: the first argument the parser did not recognise.
        parser: the command's parser (its ``--`` options are listed).
    """
    options = [o for a in parser._actions for o in a.option_strings if o.startswith("--") and o != "--help"]
    name, sep, value = arg.lstrip("-").partition("=")
    if not arg.startswith("-") and not sep:  # a word, not an option: a second folder
        close, hint = [], "it takes one multirun folder; "
    else:
        close, hint = difflib.get_close_matches(f"--{name.replace('_', '-')}", options, n=1) if name else [], ""
    if close:
        hint = f"did you mean {close[0]}{f' {value}' if value else ''}? "
    form = " (written --option value, not key=value)" if sep and not arg.startswith("-") else ""
    return f"unknown argument '{arg}'; {hint}the options are {', '.join(options)}{form}"


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    parser = argparse.ArgumentParser(prog="mtmm-report", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a multirun folder (logs/multiruns/<time>)")
    parser.add_argument("--metrics", nargs="+", help="glob patterns of metric keys, e.g. 'val/match/*' 'test/*/auroc'")
    parser.add_argument("--split", choices=SPLITS, default="val",
                        help="the default columns and Delta_m: validation metrics, or the test split's (the best "
                             "checkpoint's, written with trainer.test=true)")
    parser.add_argument("--which", choices=("best", "final"), default="best",
                        help="metrics at the best epoch (by trainer.monitor) or at the end")
    parser.add_argument("--plot", action="store_true",
                        help="also write report.png, a panel per metric (needs matplotlib)")
    parser.add_argument("--out", type=Path, help="folder for report.md/.csv/.png (default: the multirun folder)")
    parser.add_argument("--baselines", type=Path, nargs="+",
                        help="multirun folders of single-task runs (tasks=[<task>]): adds Delta_m, the mean relative "
                             "improvement over the runs that match each configuration (same dataset and settings, "
                             "but for those swept here), in percent")
    parser.add_argument("--delta-metrics", nargs="+",
                        help="glob patterns of the metrics Delta_m averages (default: the first metric of each task)")
    parser.add_argument("--ignore-settings", nargs="+", default=[], metavar="KEY",
                        help="settings (or groups) not compared when matching baselines, e.g. balancer mtl")
    args, extra = parser.parse_known_args(argv)
    if extra:  # argparse would print its usage and "unrecognized arguments": one line instead, with the closest
        print(f"mtmm-report: error: {unknown_argument(extra[0], parser)}", file=sys.stderr)
        sys.exit(2)
    try:
        print(report(args.folder, args.metrics, args.which, args.plot, args.out, args.baselines, args.delta_metrics,
                     args.split, args.ignore_settings))
    except UserError as e:
        print(f"mtmm-report: error: {e}", file=sys.stderr)
        sys.exit(2)
    except fileio.WriteError as e:  # the disk filled up (or went read-only) while writing
        print(f"mtmm-report: error: cannot write {fileio.explain(e)}; the files there from before are intact: make "
              "room, or pass --out <another folder>", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
