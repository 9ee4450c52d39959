"""scripts/benchmark.py runs end to end and reports a recipe/hand ratio per config."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
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


# ---------------------------------------------------------------------- GPU-sized suites and the GPU summary
def load_script(name: str):
    """``scripts/<name>.py`` as a module (in this process: faster than a subprocess)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_script_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_feature_cache_bench_reports_the_extraction_throughput(tmp_path: Path, one_thread: None,
                                                               capsys: pytest.CaptureFixture) -> None:
    from mtmm_train import benchmarking as bench

    tiny = ["dataset.image_size=32", "model.encoders.image.model_name=test_vit"]
    overrides = bench.feature_cache_config("vit_tiny+text", tmp_path) + tiny
    row = bench.feature_cache_bench("vit_tiny+text", overrides, ["image", "text"], 1, tmp_path)
    assert row["device"] == "cpu" and row["samples"] == 64 and row["extract_rows"] == 64 + 16 + 16
    assert 0 < row["extract_s"] < row["build_s"]  # the cold setup's extra time over the warm one
    assert row["extract_samples_s"] == pytest.approx(row["extract_rows"] / row["extract_s"])
    assert row["encode_samples_s"] > 0 and row["epoch_s_cache"] > 0 and row["cache_mb"] > 0
    bench.print_feature_cache_table([row])
    assert "extract/s" in capsys.readouterr().out


def test_gpu_sized_configs_compose_to_vit_b16_and_bert_base_at_128_tokens(tmp_path: Path) -> None:
    from mtmm_train import benchmarking as bench

    assert bench.TEXT_SIZES["vit_b16+bert_base"] == {"vocab_size": 30522, "hidden": 768, "layers": 12}
    assert "vit_b16+bert_base" not in bench.FEATURE_CACHE_CPU  # never in the CPU's default run
    text = ["encoder@model.encoders.text=hf", "model.encoders.text.model_name=/nowhere/bert",
            "model.encoders.text.pretrained=false"]
    cache = bench.compose_cfg(bench.FEATURE_CACHE_DATA + bench.FEATURE_CACHE_CONFIGS["vit_b16+bert_base"] + text)
    tune = bench.compose_cfg(bench.finetune_overrides("vit_b16+bert_base", "lora", "/nowhere/bert", tmp_path))
    for cfg in (cache, tune):
        assert cfg.model.encoders.image.model_name == "vit_base_patch16_224" and cfg.dataset.image_size == 224
        assert cfg.dataset.text_length == 128
    assert (cache.trainer.batch_size, cache.dataset.num_train) == (256, 2048)
    assert tune.trainer.batch_size == 64 and tune.model.encoders.image.adapter == "lora"


def test_finetune_table_shows_peak_cuda_memory_only_when_measured(capsys: pytest.CaptureFixture) -> None:
    from mtmm_train import benchmarking as bench

    row = {"config": "vit_b16+bert_base", "choice": "full", "step_ms": 100.0, "peak_rss_mb": 3000.0,
           "step_rss_mb": 10.0, "activations_mb": 900.0, "trainable_params": 196_000_000,
           "optimizer_state_mb": 1500.0, "peak_cuda_mb": None}
    bench.print_finetune_table([row])
    assert "peak CUDA MB" not in capsys.readouterr().out
    bench.print_finetune_table([{**row, "peak_cuda_mb": 23456.0}, {**row, "choice": "lora"}])
    out = capsys.readouterr().out
    assert "peak CUDA MB" in out and "23,456" in out


def issue_rows(device: str, backbone_ratio: float, large_samples_s: float) -> list[dict]:
    """Rows as the benchmark prints them, for scripts/gpu_summary.py."""
    recipe = {"mode": "bf16+compile", "device": device, "batch_size": 256, "hand_samples_s": 1000.0,
              "gflop_per_step": 1.0, "recipe_tflops": 1.0}
    return [{**recipe, "config": "backbone_reference", "ratio": backbone_ratio, "recipe_samples_s": 2000.0,
             "mfu": 0.41},
            {**recipe, "config": "reference_large", "ratio": 1.0, "recipe_samples_s": large_samples_s},
            *({"config": "backbone_reference", "device": device, "batch_size": 256, "workers": 15, "rows": 2048,
               "path": p, "train_samples_s": 2000.0 * r, "data_wait": 0.01, "loader_samples_s": 9000.0, "ratio": r}
              for p, r in (("memory", 1.0), ("stream_host", 0.62), ("stream_device", 0.93))),
            {"config": "vit_b16+bert_base", "frozen": "image+text", "device": device, "samples": 2048,
             "epoch_s_recompute": 1.5, "epoch_s_cache": 0.01, "speedup": 150.0, "build_s": 9.0, "hit_setup_s": 4.0,
             "extract_s": 5.0, "extract_rows": 2560, "extract_samples_s": 512.0, "encode_samples_s": 3000.0,
             "cache_mb": 5.0},
            *({"config": "vit_b16+bert_base", "choice": c, "step_ms": 100.0, "peak_rss_mb": 3000.0,
               "step_rss_mb": 1.0, "activations_mb": 1.0, "trainable_params": 10, "optimizer_state_mb": 1.0,
               "peak_cuda_mb": 1000.0 * (i + 1) if device == "cuda:0" else None}
              for i, c in enumerate(["frozen+cache", "frozen", "lora", "full", "full+checkpointing"]))]


@pytest.mark.parametrize("device", ["cuda:0", "cpu"])
def test_gpu_summary_gives_each_issue_item_its_verdict(device: str, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    summary = load_script("gpu_summary")
    (tmp_path / "gpu.txt").write_text("NVIDIA H100 80GB HBM3, 81559 MiB\n" if device != "cpu" else "cpu (smoke)\n")
    (tmp_path / "bench.txt").write_text("\n".join(json.dumps(r) for r in issue_rows(device, 0.99, 4900.0)))
    (tmp_path / "gpu_tests.txt").write_text("14 passed, 2 deselected in 80.1s\n")
    summary.main([str(tmp_path)])
    out = capsys.readouterr().out
    items = {i["item"][0]: i for i in json.loads((tmp_path / "all_rows.json").read_text())["items"]}
    assert sorted(items) == ["1", "2", "3", "4", "5", "6"]
    if device == "cpu":  # smoke figures: never a verdict
        assert {i["verdict"] for i in items.values()} <= {"pending", "pending (CPU figure)", "pending (CPU variants)"}
        return
    assert items["1"]["verdict"] == "met" and "MFU 41.0%" in items["1"]["figure"]
    assert items["2"]["verdict"] == "met" and items["2"]["figure"].startswith("0.930 (stream_device")
    assert items["3"]["verdict"] == "measured" and "extract 512/s" in items["3"]["figure"]
    assert items["4"]["verdict"] == "not reached" and "4,900/s" in items["4"]["figure"]
    assert items["5"]["verdict"] == "measured" and "full+checkpointing 5,000 MB" in items["5"]["figure"]
    assert items["6"] == {**items["6"], "figure": "14 passed, 2 deselected", "verdict": "met"}
    assert "peak CUDA MB" in out and "issue 17 item" in out
