"""The CLI end to end, in subprocesses on the CPU: default run, sweep, report (bad input: test_bad_inputs.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TINY, run_cli


@pytest.mark.slow
def test_default_run_beats_chance_on_every_task(tmp_path: Path) -> None:
    # Exactly what a new user runs, only the run folder is pinned.
    proc = run_cli([f"hydra.run.dir={tmp_path}/run", "logger.progress_bar=false"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())["best"]["metrics"]
    # Chance: category 1/4 accuracy; match and tags AUROC 0.5; score R^2 0.
    assert metrics["val/category/accuracy"] > 0.6
    assert metrics["val/match/auroc"] > 0.65
    assert metrics["val/tags/auroc"] > 0.65
    assert metrics["val/score/r2"] > 0.3
    for name in ("last.pt", "best.pt"):
        assert (run / "checkpoints" / name).is_file()
    assert (run / ".hydra" / "config.yaml").is_file()
    assert (run / "mtmm-train.log").is_file()
    assert "results (validation)" in (run / "mtmm-train.log").read_text()


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
    assert len(csv_lines) == 3 and csv_lines[0].startswith("configuration,seeds,monitor_mean,monitor_std")


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
