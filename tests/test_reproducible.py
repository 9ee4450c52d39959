"""Two runs of the same command on the same machine give the same results, bit for bit (CPU).

What docs/reliability.md promises: the same code, config, seed, torch build and number of torch
threads give identical metrics and weights, run to run. The two runs here are fresh processes that
differ in everything else that could leak in: Python's hash seed (set and dict orders), the
environment's size (memory addresses and alignment) and the run folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import run_cli

# The default experiment, shortened to 2 of its 8 epochs (62 optimizer steps, two evaluations).
ARGS = ["seed=7", "trainer.max_epochs=2", "logger.progress_bar=false"]


def results(run: Path) -> dict:
    """metrics.json without what is allowed to differ (timings: the run's seconds, its share waiting for data)."""
    metrics = json.loads((run / "metrics.json").read_text())
    metrics.pop("train_seconds")
    metrics.pop("train_data_wait_frac", None)
    return metrics


@pytest.mark.slow
def test_two_default_runs_agree_bit_for_bit(tmp_path: Path) -> None:
    runs = []
    for k, (hash_seed, pad) in enumerate([("1", ""), ("2", "x" * 4099)]):
        run = tmp_path / f"run{k}"
        proc = run_cli([*ARGS, f"hydra.run.dir={run}"], cwd=tmp_path,
                       env={"PYTHONHASHSEED": hash_seed, "MTMM_TEST_PADDING": pad})
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs.append(run)

    first, second = (results(run) for run in runs)
    assert first["steps"] == 64 and first["epochs"] == 2  # 32 batches an epoch, the last partial one kept
    # JSON keeps a float's every bit (repr round-trips), so == is a bitwise comparison here.
    assert first == second
    for name in ("best.pt", "last.pt"):
        a, b = (torch.load(run / "checkpoints" / name, weights_only=True) for run in runs)
        assert a["model"].keys() == b["model"].keys()
        differ = [key for key in a["model"] if not torch.equal(a["model"][key], b["model"][key])]
        assert not differ, f"{name}: tensors that differ: {differ}"
        assert a["step"] == b["step"]
