"""One table of every figure a ``scripts/gpu_check.sh`` run left in its folder, each issue item against its goal.

Reads the JSON lines that ``scripts/benchmark.py`` prints as each row finishes (so a stage cut short by the
time budget still counts) and the tests' summary line, prints the recipe-vs-hand, ablation, files,
feature-cache and fine-tuning tables, then one line per item of the GPU issue (17) with its figure, its goal
and a verdict: met, not reached, or pending (not measured, or measured on a CPU: ``GPU_CHECK_SMOKE=1``).

    python scripts/gpu_summary.py /path/to/gpu_check_out
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from mtmm_train.benchmarking import (
    MODES,
    print_ablation_table,
    print_feature_cache_table,
    print_finetune_table,
    print_recipe_table,
)

TARGET_SAMPLES_S = 5000.0  # reference_large, bf16 + compile, on an H100 (issue 17, item 4)
MIN_RATIO = 0.95  # every recipe/hand row (the earlier issues' goal)
BACKBONE_MIN_RATIO = 0.97  # backbone_reference bf16 + compile (item 1)
FILES_MIN_RATIO = 0.9  # end to end from files against GPU-resident data (item 2)
GOAL_MODE = "bf16+compile"
MEMORY_CHOICES = ("frozen", "frozen+cache", "lora", "full", "full+checkpointing")


def read_rows(folder: Path) -> dict[str, list[dict]]:
    """Every benchmark row printed under ``folder`` (``*.txt``, in file order), by kind: ``recipe``,
    ``ablations``, ``files``, ``feature_cache``, ``finetune``."""
    kinds: dict[str, list[dict]] = {k: [] for k in ("recipe", "ablations", "files", "feature_cache", "finetune")}
    for path in sorted(folder.glob("*.txt")):
        for line in path.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "technique" in row:
                kinds["ablations"].append(row)
            elif "choice" in row:
                kinds["finetune"].append(row)
            elif "frozen" in row:
                kinds["feature_cache"].append(row)
            elif "path" in row:  # benchmark.py --suite files (mtmm_train/benchmarking_files.py)
                kinds["files"].append(row)
            elif "config" in row and "mode" in row:
                kinds["recipe"].append(row)
    order = list(MODES)
    kinds["recipe"].sort(key=lambda r: (r["config"], order.index(r["mode"]) if r["mode"] in order else len(order)))
    return kinds


def verdicts(rows: list[dict], gpu_name: str) -> list[str]:
    """The recipe rows' goals, one line each: every mode's recipe/hand ratio, and reference_large's samples/s."""
    lines = []
    measured = [r for r in rows if "error" not in r]
    low = [f"{r['config']} {r['mode']} {r['ratio']:.3f}" for r in measured if r["ratio"] < MIN_RATIO]
    lines.append(f"recipe/hand >= {MIN_RATIO} in every mode: "
                 + ("not measured" if not measured else "missed: " + ", ".join(low) if low else
                    f"met ({len(measured)} rows, lowest {min(r['ratio'] for r in measured):.3f})"))
    target = [r for r in measured if r["config"] == "reference_large" and r["mode"] == GOAL_MODE]
    if not target:
        lines.append(f"reference_large {GOAL_MODE}: not measured")
    else:
        best = max(r["recipe_samples_s"] for r in target)
        met = "met" if best >= TARGET_SAMPLES_S else "missed"
        on = "" if "H100" in gpu_name else f" (the goal is for an H100; this is {gpu_name or 'an unknown GPU'})"
        lines.append(f"reference_large {GOAL_MODE}: {best:,.0f} samples/s, goal {TARGET_SAMPLES_S:,.0f}: {met}{on}")
    for r in rows:
        if "error" in r:
            lines.append(f"error in {r['config']} {r['mode']}: {r['error'][:200]}")
    return lines


def on_gpu(row: dict) -> bool:
    return str(row.get("device", "")).startswith("cuda")


def verdict(value: float | None, goal: float, row: dict | None) -> str:
    """met / not reached / pending (nothing measured, or a CPU figure: no verdict)."""
    if value is None or row is None:
        return "pending"
    if not on_gpu(row):
        return "pending (CPU figure)"
    return "met" if value >= goal else "not reached"


def best_recipe_row(rows: list[dict], config: str) -> dict | None:
    """``config``'s row in the goal's mode (else in any other mode, whose figure is then no verdict's)."""
    ok = [r for r in rows if r["config"] == config and "error" not in r]
    goal = [r for r in ok if r["mode"] == GOAL_MODE]
    pool = goal or ok
    return max(pool, key=lambda r: r["recipe_samples_s"]) if pool else None


def tests_line(folder: Path) -> tuple[str, str]:
    """The tests' figure (pytest's counts) and verdict, from ``gpu_tests.txt``."""
    path = folder / "gpu_tests.txt"
    text = path.read_text(errors="replace") if path.exists() else ""
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|errors?|skipped|deselected)", text)}
    if not counts:
        return "not run", "pending"
    figure = ", ".join(f"{n} {k}" for k, n in counts.items())
    bad = counts.get("failed", 0) + counts.get("error", 0) + counts.get("errors", 0)
    info = folder / "gpu.txt"
    gpu = info.exists() and not info.read_text(errors="replace").startswith("cpu")  # smoke: the CPU variants
    if bad or not counts.get("passed"):
        return figure, "not reached"
    return figure, "met" if gpu else "pending (CPU variants)"


def issue_items(kinds: dict[str, list[dict]], folder: Path, gpu_name: str) -> list[tuple[str, str, str, str]]:
    """``(item, figure, goal, verdict)`` per item of the GPU issue."""
    items = []
    row = best_recipe_row(kinds["recipe"], "backbone_reference")
    if row is None:
        items.append(("1 backbone_reference recipe/hand", "not measured", f">= {BACKBONE_MIN_RATIO}", "pending"))
    else:
        mfu = f", MFU {100 * row['mfu']:.1f}%" if "mfu" in row else ""
        figure = f"{row['ratio']:.3f} ({row['recipe_samples_s']:,.0f}/s, {row['mode']}{mfu})"
        items.append(("1 backbone_reference recipe/hand", figure, f">= {BACKBONE_MIN_RATIO}",
                      verdict(row["ratio"], BACKBONE_MIN_RATIO, row) if row["mode"] == GOAL_MODE else "pending"))
    # The best path from files (workers, or GPU decoding) against the GPU-resident one ("memory").
    files = [r for r in kinds["files"] if "error" not in r and "ratio" in r and r["path"] != "memory"]
    if not files:
        items.append(("2 from files / GPU-resident", "not measured", f">= {FILES_MIN_RATIO}", "pending"))
    else:
        row = max(files, key=lambda r: r["ratio"])
        figure = (f"{row['ratio']:.3f} ({row['path']}, {row['train_samples_s']:,.0f}/s, "
                  f"data wait {row['data_wait']:.2f})")
        items.append(("2 from files / GPU-resident", figure, f">= {FILES_MIN_RATIO}",
                      verdict(row["ratio"], FILES_MIN_RATIO, row)))
    cache = [r for r in kinds["feature_cache"] if "error" not in r]
    if not cache:
        items.append(("3 feature cache on the GPU", "not measured", "extraction/s, epoch cached vs recomputed",
                      "pending"))
    else:
        row = cache[-1]
        figure = (f"{row['config']}: extract {row.get('extract_samples_s', 0):,.0f}/s, epoch "
                  f"{row['epoch_s_cache']:.3f} s vs {row['epoch_s_recompute']:.3f} s ({row['speedup']:.0f}x)")
        items.append(("3 feature cache on the GPU", figure, "measured",
                      "measured" if on_gpu(row) else "pending (CPU figure)"))
    row = best_recipe_row(kinds["recipe"], "reference_large")
    goal = f">= {TARGET_SAMPLES_S:,.0f}/s (H100)"
    if row is None:
        items.append(("4 reference_large samples/s", "not measured", goal, "pending"))
    else:
        note = "" if "H100" in gpu_name or not on_gpu(row) else f" on {gpu_name}"
        items.append(("4 reference_large samples/s", f"{row['recipe_samples_s']:,.0f}/s ({row['mode']}){note}", goal,
                      verdict(row["recipe_samples_s"], TARGET_SAMPLES_S, row) if row["mode"] == GOAL_MODE
                      else "pending"))
    tune = [r for r in kinds["finetune"] if "error" not in r]
    peaks = {r["choice"]: r.get("peak_cuda_mb") for r in tune}
    if not tune:
        items.append(("5 peak memory per setting", "not measured", "a table in docs/gpu.md", "pending"))
    elif all(v is None for v in peaks.values()):
        items.append(("5 peak memory per setting", f"{tune[0]['config']}: CPU only (no CUDA peak)",
                      "a table in docs/gpu.md", "pending (CPU figure)"))
    else:
        figure = ", ".join(f"{c} {peaks[c]:,.0f} MB" for c in MEMORY_CHOICES if peaks.get(c) is not None)
        missing = [c for c in MEMORY_CHOICES if peaks.get(c) is None]
        items.append(("5 peak memory per setting", f"{tune[0]['config']}: {figure}", "a table in docs/gpu.md",
                      "measured" if not missing else "missing " + ", ".join(missing)))
    figure, result = tests_line(folder)
    items.append(("6 tests marked gpu", figure, "all pass", result))
    return items


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="the $OUT folder of a gpu_check.sh run")
    args = parser.parse_args(argv)
    kinds = read_rows(args.folder)
    gpu = args.folder / "gpu.txt"
    gpu_name = gpu.read_text().splitlines()[0] if gpu.exists() and gpu.read_text().strip() else ""
    for kind, printer in (("recipe", print_recipe_table), ("ablations", print_ablation_table),
                          ("feature_cache", print_feature_cache_table), ("finetune", print_finetune_table)):
        if kinds[kind]:
            printer(kinds[kind])
            print()
    if kinds["files"]:
        from mtmm_train.benchmarking_files import print_files_table

        print_files_table(kinds["files"])
        print()
    for line in verdicts(kinds["recipe"], gpu_name):
        print(line)
    print()
    items = issue_items(kinds, args.folder, gpu_name)
    head = f"{'issue 17 item':<34} {'figure':<70} {'goal':<24} verdict"
    print(head)
    print("-" * len(head))
    for item, figure, goal, result in items:
        print(f"{item:<34} {figure:<70} {goal:<24} {result}")
    (args.folder / "all_rows.json").write_text(json.dumps({
        "rows": kinds["recipe"], "ablations": kinds["ablations"], "files": kinds["files"],
        "feature_cache": kinds["feature_cache"], "finetune": kinds["finetune"],
        "items": [dict(zip(("item", "figure", "goal", "verdict"), i, strict=True)) for i in items]}, indent=1))


if __name__ == "__main__":
    main()
