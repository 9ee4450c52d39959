"""One table of every benchmark row a ``scripts/gpu_check.sh`` run left in its folder.

Reads the JSON lines that ``scripts/benchmark.py`` prints as each row finishes (so a stage cut
short by the time budget still counts), and checks the GPU goals: every mode's recipe/hand ratio
at least 0.95, and reference_large in bf16 + compile at least 4,400 samples/s (on an H100).

    python scripts/gpu_summary.py /path/to/gpu_check_out
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mtmm_train.benchmarking import MODES, print_ablation_table, print_recipe_table

TARGET_SAMPLES_S = 4400.0  # reference_large, bf16 + compile, on an H100 (the project's target)
MIN_RATIO = 0.95


def read_rows(folder: Path) -> tuple[list[dict], list[dict]]:
    """``(recipe vs hand rows, ablation rows)`` from every ``*.txt`` under ``folder``, in file order."""
    rows, ablations = [], []
    for path in sorted(folder.glob("*.txt")):
        for line in path.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "technique" in row:
                ablations.append(row)
            elif "config" in row and "mode" in row:
                rows.append(row)
    order = list(MODES)
    rows.sort(key=lambda r: (r["config"], order.index(r["mode"]) if r["mode"] in order else len(order)))
    return rows, ablations


def verdicts(rows: list[dict], gpu_name: str) -> list[str]:
    """One line per goal: met, missed, or not measured."""
    lines = []
    measured = [r for r in rows if "error" not in r]
    low = [f"{r['config']} {r['mode']} {r['ratio']:.3f}" for r in measured if r["ratio"] < MIN_RATIO]
    lines.append(f"recipe/hand >= {MIN_RATIO} in every mode: "
                 + ("not measured" if not measured else "missed: " + ", ".join(low) if low else
                    f"met ({len(measured)} rows, lowest {min(r['ratio'] for r in measured):.3f})"))
    target = [r for r in measured if r["config"] == "reference_large" and r["mode"] == "bf16+compile"]
    if not target:
        lines.append("reference_large bf16+compile: not measured")
    else:
        best = max(r["recipe_samples_s"] for r in target)
        met = "met" if best >= TARGET_SAMPLES_S else "missed"
        on = "" if "H100" in gpu_name else f" (the goal is for an H100; this is {gpu_name or 'an unknown GPU'})"
        lines.append(f"reference_large bf16+compile: {best:,.0f} samples/s, goal {TARGET_SAMPLES_S:,.0f}: {met}{on}")
    for r in rows:
        if "error" in r:
            lines.append(f"error in {r['config']} {r['mode']}: {r['error'][:200]}")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="the $OUT folder of a gpu_check.sh run")
    args = parser.parse_args(argv)
    rows, ablations = read_rows(args.folder)
    gpu = args.folder / "gpu.txt"
    gpu_name = gpu.read_text().splitlines()[0] if gpu.exists() and gpu.read_text().strip() else ""
    if rows:
        print_recipe_table(rows)
    if ablations:
        print()
        print_ablation_table(ablations)
    print()
    for line in verdicts(rows, gpu_name):
        print(line)
    (args.folder / "all_rows.json").write_text(json.dumps({"rows": rows, "ablations": ablations}, indent=1))


if __name__ == "__main__":
    main()
