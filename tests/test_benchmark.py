"""scripts/benchmark.py runs end to end and reports a recipe/hand ratio per config."""

from __future__ import annotations

import json
import math
from pathlib import Path

from conftest import ROOT, run_cli


def test_benchmark_prints_ratio_for_each_config(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    small = ["dataset.num_train=256", "dataset.num_val=64", "dataset.num_test=64", "trainer.batch_size=32"]
    proc = run_cli([str(ROOT / "scripts" / "benchmark.py"), "--configs", "default", "default", "--rounds", "2",
                    "--steps", "2", "--warmup", "1", "--out", str(tmp_path), "--json", str(out), "--override", *small],
                   cwd=tmp_path, module="")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["config"], r["mode"]) for r in rows] == [("default", "fp32"), ("default", "fp32")]
    for r in rows:
        assert r["recipe_samples_s"] > 0 and r["hand_samples_s"] > 0 and math.isfinite(r["ratio"])
        assert r["gflop_per_step"] > 0
    assert "ratio" in proc.stdout.splitlines()[-4]

    # scripts/gpu_summary.py (gpu_check.sh's last step) reads the rows back from the printed lines.
    summary, rows = summarise(proc.stdout, tmp_path)
    assert [(r["config"], r["mode"]) for r in rows["rows"]] == [("default", "fp32"), ("default", "fp32")]
    assert "recipe/hand >= 0.95 in every mode: " in summary
    assert "reference_large bf16+compile: not measured" in summary


def summarise(stdout: str, tmp_path: Path) -> tuple[str, dict]:
    """Run scripts/gpu_summary.py on a folder holding ``stdout``; its output and ``all_rows.json``."""
    folder = tmp_path / "gpu_out"
    folder.mkdir(exist_ok=True)
    (folder / "bench.txt").write_text(stdout)
    proc = run_cli([str(ROOT / "scripts" / "gpu_summary.py"), str(folder)], cwd=tmp_path, module="")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, json.loads((folder / "all_rows.json").read_text())


def test_ablations_measure_each_technique_off_and_on(tmp_path: Path) -> None:
    out = tmp_path / "ablations.json"
    small = ["dataset.num_train=256", "dataset.num_val=64", "dataset.num_test=64", "trainer.batch_size=32"]
    proc = run_cli([str(ROOT / "scripts" / "benchmark.py"), "--suite", "ablations", "--configs", "default",
                    "--techniques", "host_sync", "channels_last", "--rounds", "2", "--steps", "2", "--warmup", "1",
                    "--out", str(tmp_path), "--json", str(out), "--override", *small], cwd=tmp_path, module="")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["ablations"]
    assert [r["technique"] for r in rows] == ["host_sync", "channels_last"]
    for r in rows:
        assert r["off_samples_s"] > 0 and r["on_samples_s"] > 0 and math.isfinite(r["speedup"])
    assert "speed-up" in proc.stdout
    summary, rows = summarise(proc.stdout, tmp_path)
    assert [r["technique"] for r in rows["ablations"]] == ["host_sync", "channels_last"]
    assert "channels_last" in summary
