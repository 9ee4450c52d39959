"""Sweeps at scale: the joblib and submitit launchers, the SLURM preset, and the Optuna search, run from the CLI."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import yaml
from conftest import TINY, run_cli
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from omegaconf import DictConfig


def best_values(sweep: Path) -> dict[str, float]:
    """Job folder name -> the best value of trainer.monitor in its ``metrics.json``."""
    return {p.parent.name: json.loads(p.read_text())["best"]["value"] for p in sweep.glob("*/metrics.json")}


def the_sweep_folder(log_dir: Path) -> Path:
    """The one multirun folder under ``log_dir``: every job must land in the folder the launcher made (its
    ``${now:}`` time is computed once, not again in each job's process)."""
    folders = list((log_dir / "multiruns").iterdir())
    assert len(folders) == 1, folders
    return folders[0]


def report_rows(sweep: Path, cwd: Path) -> list[str]:
    """Run ``mtmm-report`` on ``sweep``; return the table's data rows (the notes under it aside)."""
    proc = run_cli([str(sweep)], cwd=cwd, module="mtmm_train.report")
    assert proc.returncode == 0, proc.stderr
    return [line for line in proc.stdout.splitlines()[2:] if line.startswith("| ")]


def test_joblib_launcher_runs_the_jobs_in_parallel(tmp_path: Path) -> None:
    proc = run_cli(["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"paths.log_dir={tmp_path / 'logs'}",
                    *TINY, "fusion=concat,sum"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    sweep = the_sweep_folder(tmp_path / "logs")
    out = proc.stdout + proc.stderr
    assert "n_jobs=2" in out and "is launching 2 jobs" in out
    assert sorted(best_values(sweep)) == ["0", "1"]
    rows = report_rows(sweep, tmp_path)
    assert [r.split(" | ")[0] for r in rows] == ["| fusion=concat", "| fusion=sum"]


def test_submitit_jobs_return_the_monitor_and_a_rerun_continues_each_job_in_its_folder(tmp_path: Path) -> None:
    # What a requeued (or resubmitted) job does: the same overrides land in the same job folder, and
    # trainer.resume=auto continues from its last.pt.
    args = ["-m", "hydra/launcher=submitit_local", *TINY, "trainer.resume=auto", "fusion=concat,sum"]
    where = f"paths.log_dir={tmp_path / 'logs'}"
    for attempt in ("fresh", "rerun"):
        # Two local jobs share the cores: one thread each (joblib caps its workers' threads by itself).
        proc = run_cli([*args, where], cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
        assert proc.returncode == 0, proc.stderr[-2000:]
        sweep = the_sweep_folder(tmp_path / "logs")
        values = best_values(sweep)
        assert sorted(values) == ["0", "1"]
        # submitit pickles each job's outcome: Hydra's JobReturn, holding what the task function returned.
        results = sorted(sweep.glob(".submitit/*/*_result.pkl"), key=lambda p: p.stat().st_mtime)[-2:]
        returned = {}
        for path in results:
            status, job_return = pickle.loads(path.read_bytes())
            assert status == "success"
            returned[str(job_return.hydra_cfg.hydra.job.num)] = job_return.return_value
        assert returned == pytest.approx(values)
        for job in ("0", "1"):
            log = (sweep / job / "mtmm-train.log").read_text()
            resumed = f"resumed from {sweep / job / 'checkpoints' / 'last.pt'}"
            assert (resumed in log) == (attempt == "rerun"), log
        where = f"hydra.sweep.dir={sweep}"  # the rerun names the first run's folder, as docs/sweeps.md says
    assert len(report_rows(sweep, tmp_path)) == 2


# optuna 2.10 on SQLAlchemy 1.4 warns that its storage will not work with SQLAlchemy 2 (hence the pin).
@pytest.mark.filterwarnings("ignore:Deprecated API features detected:DeprecationWarning")
def test_optuna_search_with_sqlite_storage_returns_the_best_trial(tmp_path: Path) -> None:
    sweep, storage = tmp_path / "sweep", tmp_path / "optuna.db"
    # No -m: the search config sets hydra.mode=MULTIRUN.
    proc = run_cli(["hparams_search=optuna", "hydra.sweeper.n_trials=3", f"hydra.sweeper.storage=sqlite:///{storage}",
                    f"hydra.sweep.dir={sweep}", *TINY], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    values = best_values(sweep)
    assert sorted(values) == ["0", "1", "2"]
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(min(values.values()))  # val/loss/total: minimised
    assert set(results["best_params"]) == {"optimizer.lr", "optimizer.weight_decay", "fusion", "balancer"}
    # The trials persist in SQLite (with SQLAlchemy 2 this storage fails: the sweep extra pins it below 2).
    import optuna

    study = optuna.load_study(study_name="mtmm-train", storage=f"sqlite:///{storage}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    assert study.best_value == pytest.approx(results["best_value"])
    # One row per trial (each has its own parameters); optimization_results.yaml is not a job.
    assert len(report_rows(sweep, tmp_path)) == 3


def compose_with_hydra(overrides: list[str]) -> DictConfig:
    """Compose ``train.yaml`` with ``overrides``, keeping the ``hydra`` node."""
    with initialize_config_module(config_module="mtmm_train.configs", version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize(("mode", "direction"), [("min", "minimize"), ("max", "maximize")])
def test_optuna_direction_follows_the_monitor_mode(mode: str, direction: str) -> None:
    cfg = compose_with_hydra(["hparams_search=optuna", f"trainer.monitor_mode={mode}"])
    assert cfg.hydra.sweeper.direction == direction
    assert cfg.hydra.sweeper.sampler.seed == cfg.seed


def test_slurm_preset_writes_an_sbatch_script_with_gpus_time_limit_and_requeue_signal(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No cluster here: a stand-in srun satisfies submitit's check, and the sbatch call is intercepted.
    import submitit.core.utils

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    submitted: list[list[str]] = []

    def intercept(self: submitit.core.utils.CommandFunction, *args: object, **kwargs: object) -> str:
        submitted.append(self.command)
        raise RuntimeError("intercepted")

    monkeypatch.setattr(submitit.core.utils.CommandFunction, "__call__", intercept)
    sweep = tmp_path / "sweep"
    cfg = compose_with_hydra(["hydra/launcher=slurm", "hydra.launcher.partition=gpu", f"hydra.sweep.dir={sweep}"])
    launcher = instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=lambda c: 0.0, config=cfg)
    with pytest.raises(RuntimeError, match="intercepted"):
        launcher.launch([["seed=0"], ["seed=1"]], initial_job_idx=0)
    assert submitted and submitted[0][0] == "sbatch"
    script = Path(submitted[0][-1]).read_text()
    for line in ("--partition=gpu", "--gpus-per-node=1", "--time=240", "--signal=USR2@120", "--array=0-1%2",
                 "--job-name=mtmm-train", f"--output={sweep}/.submitit/"):
        assert f"#SBATCH {line}" in script, script
