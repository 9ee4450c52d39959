"""The CLI end to end, in subprocesses on the CPU: default run, sweep, report (bad input: test_bad_inputs.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY, compose_cfg, run_cli

from mtmm_train.instantiate import build


def chance_bounds(overrides: list[str]) -> dict[str, float]:
    """What a predictor that ignores the inputs could score on the validation split, by luck, at 4 standard
    errors (a chance of about 1 in 30,000 per metric), computed from the split's own labels:

    - accuracy: at most the most frequent class's share, plus 4 sqrt(1/4n);
    - AUROC: 0.5 plus 4 times its standard error sqrt((n0 + n1 + 1) / (12 n0 n1)) (the Mann-Whitney
      statistic's; for the macro AUROC of several labels, the largest of theirs);
    - R^2: at most 0 (the validation mean's own) and, even rescaled at best, a sample correlation's square,
      so 16 / n.
    """
    val = build(compose_cfg(overrides).dataset, "dataset").splits["val"]
    bounds = {}
    y = val.targets["category"][val.labeled["category"]]
    bounds["val/category/accuracy"] = torch.bincount(y).max().item() / len(y) + 4 * (0.25 / len(y)) ** 0.5
    for task in ("match", "tags"):
        y = val.targets[task][val.labeled[task]].reshape(int(val.labeled[task].sum()), -1)
        n1 = y.sum(0)
        n0 = len(y) - n1
        bounds[f"val/{task}/auroc"] = 0.5 + 4 * ((n0 + n1 + 1) / (12 * n0 * n1)).sqrt().max().item()
    bounds["val/score/r2"] = 16 / int(val.labeled["score"].sum())
    return bounds


@pytest.mark.slow
def test_default_run_beats_chance_on_every_task(tmp_path: Path) -> None:
    # Exactly what a new user runs, only the run folder is pinned.
    proc = run_cli([f"hydra.run.dir={tmp_path}/run", "logger.progress_bar=false"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())["best"]["metrics"]
    # Each task beats what chance could give on these validation labels (no margin tuned to a seed): a
    # model that learned nothing for a task fails. match needs image AND audio, so it checks the fusion.
    bounds = chance_bounds([])
    assert 0.25 < bounds["val/category/accuracy"] < 0.4 and 0.5 < bounds["val/match/auroc"] < 0.6  # sane bounds
    beaten = {key: (metrics[key], bound) for key, bound in bounds.items() if not metrics[key] > bound}
    assert not beaten, f"(metric, chance bound) of the tasks that did not beat chance: {beaten}"
    for name in ("last.pt", "best.pt"):
        assert (run / "checkpoints" / name).is_file()
    assert (run / ".hydra" / "config.yaml").is_file()
    assert (run / "mtmm-train.log").is_file()
    log = (run / "mtmm-train.log").read_text()
    assert "results (validation, test)" in log and f"run folder: {run}" in log


def test_cfg_job_prints_the_composed_config(tmp_path: Path) -> None:
    proc = run_cli(["--cfg", "job", "fusion=sum"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "mtmm_train.fusion.sum.SumFusion" in proc.stdout
    assert "encoders:" in proc.stdout


def test_two_job_sweep_and_report(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", f"hydra.sweep.dir={sweep}", *TINY, "fusion=concat,sum"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    jobs = sorted(p.parent for p in sweep.glob("*/metrics.json"))
    assert [j.name for j in jobs] == ["0", "1"]
    # Each job ran its own fusion in its own folder.
    assert "fusion=concat" in (jobs[0] / ".hydra" / "overrides.yaml").read_text()
    assert "fusion=sum" in (jobs[1] / ".hydra" / "overrides.yaml").read_text()

    proc = run_cli([str(sweep)], cwd=tmp_path, module="mtmm_train.report")
    assert proc.returncode == 0, proc.stderr
    assert "| fusion=concat | 1 |" in proc.stdout and "| fusion=sum | 1 |" in proc.stdout
    assert (sweep / "report.md").is_file()
    csv_lines = (sweep / "report.csv").read_text().splitlines()
    assert len(csv_lines) == 3 and csv_lines[0].startswith("configuration,n,monitor_mean,monitor_std")


def test_report_on_a_folder_without_runs_is_a_clear_error(tmp_path: Path) -> None:
    proc = run_cli([str(tmp_path)], cwd=tmp_path, module="mtmm_train.report")
    assert proc.returncode == 2
    assert "no finished run" in proc.stderr and "Traceback" not in proc.stderr


def test_own_config_folder_with_cd(tmp_path: Path) -> None:
    (tmp_path / "myconf" / "fusion").mkdir(parents=True)
    (tmp_path / "myconf" / "fusion" / "sum32.yaml").write_text("_target_: mtmm_train.fusion.sum.SumFusion\ndim: 32\n")
    proc = run_cli(["-cd", "myconf", "fusion=sum32", "--cfg", "job"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "dim: 32" in proc.stdout and "SumFusion" in proc.stdout
