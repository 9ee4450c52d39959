"""The CLI end to end, in subprocesses on the CPU: default run, bad input, sweep, report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TINY, compose_cfg, run_cli

from mtmm_train.errors import UserError
from mtmm_train.recipe import TrainRecipe


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


# (overrides, text the one-line error must contain). The first ones run through the real CLI
# (exit status, no traceback); all of them run in-process as well, which is fast.
BAD = [
    (["fusion=nope"], "Available options"),
    (["~model.encoders.text"], "modality 'text' of the dataset has no encoder"),
    (["trainer.max_epochs=many"], "trainer.max_epochs"),
    (["trainer.precision=fp8"], "trainer.precision must be one of 32, bf16, fp16, found 'fp8'"),
    (["+encoder@model.encoders.video=mlp"], "no modality 'video'"),
    (["~model.heads.tags"], "task 'tags' of the dataset has no head"),
    (["+trainer.max_epoch=3"], "trainer.max_epoch"),
    (["trainer.batch_size=0"], "trainer.batch_size must be >= 1"),
    (["trainer.monitor=val/loss/nope"], "trainer.monitor is 'val/loss/nope'"),
    (["encoder@model.encoders.tabular=cnn"], "model.encoders.tabular: CNNEncoder reads image input"),
    (["fusion.dim=-3", "fusion=sum"], "fusion (_target_ mtmm_train.fusion.sum.SumFusion) could not be built"),
    (["+fusion.bogus=1"], "unexpected keyword argument 'bogus'"),
    (["tasks=[nope]"], "tasks names unknown task 'nope'"),
    (["dataset.missing_fraction=1.5"], "dataset.missing_fraction must be in [0, 1), found 1.5"),
    (["trainer.resume=/no/such/last.pt"], "checkpoint '/no/such/last.pt' does not exist"),
    (["seed=abc"], "seed must be an integer"),
    (["trainer.device=tpu:x"], "trainer.device 'tpu:x' is not a device"),
    (["trainer.nonfinite=maybe"], "trainer.nonfinite must be one of warn, skip, stop, found 'maybe'"),
]
N_SUBPROCESS = 4


@pytest.mark.parametrize(("overrides", "expected"), BAD[:N_SUBPROCESS],
                         ids=[" ".join(o) for o, _ in BAD[:N_SUBPROCESS]])
def test_bad_config_gives_one_clear_line_from_the_cli(overrides: list[str], expected: str, tmp_path: Path) -> None:
    proc = run_cli([f"hydra.run.dir={tmp_path}/run", *TINY, *overrides], cwd=tmp_path)
    assert proc.returncode != 0
    err = proc.stderr
    assert "Traceback" not in err and "Traceback" not in proc.stdout
    assert expected in err, err
    if "mtmm-train: error:" in err:  # ours: exactly one line and status 2 (Hydra's own: status 1)
        assert len([line for line in err.splitlines() if line.startswith("mtmm-train: error:")]) == 1
        assert proc.returncode == 2
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize(("overrides", "expected"), BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_config_fails_before_training(overrides: list[str], expected: str, tmp_path: Path) -> None:
    with pytest.raises(Exception) as info:  # noqa: B017 - UserError, or Hydra's own composition error
        recipe = TrainRecipe(compose_cfg(TINY + overrides), tmp_path)
        recipe.setup()
    assert expected in str(info.value)
    if isinstance(info.value, UserError):
        assert "\n" not in str(info.value)
    assert not (tmp_path / "checkpoints").exists()


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
