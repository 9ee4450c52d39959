"""The fusion cost table that scripts/bench_fusion.py and scripts/benchmark.py --suite fusion report."""

from __future__ import annotations

import pytest
from conftest import CONFIGS

from mtmm_train import benchmarking

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster


def test_fusion_table_reports_sizes_time_and_memory() -> None:
    rows = benchmarking.fusion_table("cpu", modality_counts=(2, 3), fusions=("concat", "tensor", "late"), steps=2,
                                     warmup=1, batch_size=16)
    table = {(r["fusion"], r["modalities"]): r for r in rows}
    assert set(table) == {(f, m) for f in ("concat", "tensor", "late") for m in (2, 3)}
    assert table[("concat", 2)]["fused_dim"] == 128 and table[("concat", 3)]["fused_dim"] == 192
    assert table[("tensor", 2)]["fused_dim"] == 9 ** 2 and table[("tensor", 3)]["fused_dim"] == 9 ** 3
    assert table[("concat", 2)]["fusion_parameters"] == 0 < table[("tensor", 2)]["fusion_parameters"]
    for r in rows:
        assert set(r) == set(benchmarking.FUSION_COLUMNS)
        assert r["parameters"] > 0 and r["step_ms"] > 0 and r["activations_mb"] > 0
        assert r["peak_mem_mb"] is None  # CPU: torch keeps no peak count
    # More modalities mean more parameters (another encoder) and more saved activations.
    assert table[("concat", 3)]["parameters"] > table[("concat", 2)]["parameters"]
    assert table[("tensor", 3)]["activations_mb"] > table[("tensor", 2)]["activations_mb"]
    text = benchmarking.format_fusion_table(rows)
    assert text.splitlines()[0].startswith("| fusion | modalities |") and len(text.splitlines()) == 2 + len(rows)


def test_every_fusion_config_is_benchmarked() -> None:
    assert benchmarking.config_names("fusion") == sorted(p.stem for p in (CONFIGS / "fusion").glob("*.yaml"))
