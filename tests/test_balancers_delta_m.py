"""Delta_m in ``mtmm-report --baselines``: hand-computed on fake multirun folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mtmm_train.errors import UserError
from mtmm_train.report import main, report


def fake_run(folder: Path, overrides: list[str], metrics: dict[str, float]) -> None:
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    result = {"monitor": "val/loss/total", "best": {"value": 1.0, "metrics": {"val/loss/total": 1.0, **metrics}},
              "final": {"val/loss/total": 1.0, **metrics}}
    (folder / "metrics.json").write_text(json.dumps(result))


def test_delta_m_against_a_hand_computation(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    single, multi = tmp_path / "single", tmp_path / "multi"
    # Baselines: accuracy 0.8 (mean of two seeds), MAE 0.5.
    fake_run(single / "0", ["tasks=[category]", "seed=0"], {"val/category/accuracy": 0.7, "val/category/f1": 0.1})
    fake_run(single / "1", ["tasks=[category]", "seed=1"], {"val/category/accuracy": 0.9, "val/category/f1": 0.1})
    fake_run(single / "2", ["tasks=[score]", "seed=0"], {"val/score/mae": 0.5})
    # Multi-task: +10% accuracy and 20% lower MAE -> +15; then -5% and +10% MAE -> -7.5.
    fake_run(multi / "0", ["balancer=upgrad", "seed=0"], {"val/category/accuracy": 0.88, "val/score/mae": 0.4,
                                                          "val/category/f1": 0.3})
    fake_run(multi / "1", ["balancer=upgrad", "seed=1"], {"val/category/accuracy": 0.76, "val/score/mae": 0.55,
                                                          "val/category/f1": 0.3})
    fake_run(multi / "2", ["balancer=static", "seed=0"], {"val/category/accuracy": 0.8, "val/score/mae": 0.5,
                                                          "val/category/f1": 0.3})
    table = report(multi, baselines=single)
    lines = {line.split("|")[1].strip(): line for line in table.splitlines()[2:] if line.startswith("| ")}
    assert "delta_m" in table.splitlines()[0]
    assert lines["balancer=upgrad"].rstrip(" |").endswith("3.7500 ± 15.9099")  # mean, sample std of 15, -7.5
    assert lines["balancer=static"].rstrip(" |").endswith("| 0.0000")  # one run: the value, no ± 0
    # Which baselines each task of each configuration was matched to.
    assert f"- balancer=static: category: 2 run(s) ({single / '0'}, {single / '1'}); score: 1 run(s)" in table
    # Other metrics on request: f1 alone, +200%.
    assert [r for r in report(multi, baselines=single, delta_patterns=["*/f1"]).splitlines()
            if r.startswith("| balancer=static")][0].rstrip(" |").endswith("| 200.0000")
    main([str(multi), "--baselines", str(single)])
    assert "delta_m" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="--baselines"):
        report(multi, baselines=tmp_path / "empty")


def test_mtl_evidence_script_reports_the_sparse_task(tmp_path: Path) -> None:
    import sys

    from conftest import ROOT

    sys.path.insert(0, str(ROOT / "scripts"))
    import mtl_evidence

    # Finished sweeps are reused, so fake ones stand in for the training runs here.
    for i, task in enumerate(mtl_evidence.TASKS):
        fake_run(tmp_path / "single" / str(i), [f"tasks=[{task}]", "seed=0"], {f"val/{task}/mae": 1.0})
    for i, balancer in enumerate(["static", "famo"]):
        fake_run(tmp_path / "multi" / str(i), [f"balancer={balancer}", "seed=0"],
                 {f"val/{t}/mae": 0.5 + i for t in mtl_evidence.TASKS})
    mtl_evidence.main(["--out", str(tmp_path), "--seeds", "1"])
    text = (tmp_path / "evidence.md").read_text()
    assert "| single-task (tasks=[score]) | 1 | 1.0000 |" in text  # one seed: no ±
    assert "| balancer=static | 1 | 0.5000 |" in text
    assert "| 50.0000 |" in text and "| -50.0000 |" in text  # Delta_m of static and famo
