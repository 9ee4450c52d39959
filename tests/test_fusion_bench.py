"""scripts/bench_fusion.py: the fusion cost table that scripts/benchmark.py reports."""

from __future__ import annotations

import importlib.util

import pytest
from conftest import ROOT

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster




def load_bench():  # noqa: ANN201 - a module loaded from a path
    spec = importlib.util.spec_from_file_location("bench_fusion", ROOT / "scripts" / "bench_fusion.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fusion_table_reports_sizes_time_and_memory() -> None:
    bench = load_bench()
    rows = bench.fusion_table("cpu", modality_counts=(2, 3), fusions=("concat", "tensor", "late"), steps=2,
                              warmup=1, batch_size=16)
    table = {(r["fusion"], r["modalities"]): r for r in rows}
    assert set(table) == {(f, m) for f in ("concat", "tensor", "late") for m in (2, 3)}
    assert table[("concat", 2)]["fused_dim"] == 128 and table[("concat", 3)]["fused_dim"] == 192
    assert table[("tensor", 2)]["fused_dim"] == 9 ** 2 and table[("tensor", 3)]["fused_dim"] == 9 ** 3
    assert table[("concat", 2)]["fusion_parameters"] == 0 < table[("tensor", 2)]["fusion_parameters"]
    for r in rows:
        assert set(r) == set(bench.COLUMNS)
        assert r["parameters"] > 0 and r["step_ms"] > 0 and r["activations_mb"] > 0
        assert r["peak_mem_mb"] is None  # CPU: torch keeps no peak count
    # More modalities mean more parameters (another encoder) and more saved activations.
    assert table[("concat", 3)]["parameters"] > table[("concat", 2)]["parameters"]
    assert table[("tensor", 3)]["activations_mb"] > table[("tensor", 2)]["activations_mb"]
    text = bench.format_table(rows)
    assert text.splitlines()[0].startswith("| fusion | modalities |") and len(text.splitlines()) == 2 + len(rows)
