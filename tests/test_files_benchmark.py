"""The files suite of scripts/benchmark.py: one model fed from a JPEG + text manifest three ways, and the
decoders' rates. Structure and positive figures only: speed is measured by the suite, never asserted here."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from conftest import ROOT, run_cli
from PIL import Image

from mtmm_train import benchmarking_files as fb


def test_the_manifest_is_written_once_and_looks_like_photos_and_texts(tmp_path: Path) -> None:
    manifest = fb.write_dataset(tmp_path, 12, (60, 80), (90, 120), workers=1)
    rows = list(csv.DictReader(manifest.open()))
    assert len(rows) == 12 and {"image", "text", "v0", "v15", "cls", "bin", "reg", "fold"} <= set(rows[0])
    assert {r["fold"] for r in rows} == {"train", "val"}
    assert all(60 <= len(r["text"].split()) <= 120 for r in rows)
    with Image.open(manifest.parent / rows[0]["image"]) as im:
        assert im.format == "JPEG" and 60 <= im.height <= 90 and 80 <= im.width <= 120
    stamp = manifest.stat().st_mtime_ns
    assert fb.write_dataset(tmp_path, 12, (60, 80), (90, 120), workers=1) == manifest
    assert manifest.stat().st_mtime_ns == stamp  # cached: not written again


def test_the_files_suite_gives_every_row(tmp_path: Path, one_thread: None) -> None:
    manifest = fb.write_dataset(tmp_path, 20, (40, 48), (56, 64), workers=1)
    rows = fb.files_bench("tiny", fb.config_overrides("tiny", []), manifest, tmp_path, workers=1, batches=2,
                          warmup=1)
    by = {r["path"]: r for r in rows}
    assert list(by) == [*fb.PATHS, "host_decode_1core", "device_decode"]
    for path in fb.PATHS:
        r = by[path]
        assert r["train_samples_s"] > 0 and r["loader_samples_s"] > 0 and 0 <= r["data_wait"] <= 1
        assert r["ratio"] > 0 and r["device"] == "cpu" and r["rows"] == 18
    assert by["memory"]["ratio"] == 1.0
    assert by["host_decode_1core"]["decode_samples_s"] > 0 and by["device_decode"]["decode_samples_s"] > 0
    fb.print_files_table(rows)


def test_the_benchmark_script_runs_the_files_suite(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    proc = run_cli([str(ROOT / "scripts" / "benchmark.py"), "--suite", "files", "--rows", "16", "--image-size", "40",
                    "48", "56", "64", "--workers", "1", "--batches", "1", "--warmup", "1", "--out", str(out),
                    "--json", str(tmp_path / "files.json")], cwd=tmp_path, module="")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads((tmp_path / "files.json").read_text())["files"]
    assert [r["path"] for r in rows] == [*fb.PATHS, "host_decode_1core", "device_decode"]
    assert "error" not in proc.stdout and "stream_device" in proc.stdout and "vs memory" in proc.stdout
