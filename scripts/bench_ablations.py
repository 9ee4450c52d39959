"""Before/after of each speed technique of the training step, measured side by side in one process.

    python scripts/benchmark.py --suite ablations --configs reference_small --modes bf16

For each technique the recipe's step runs with it off and on, alternating rounds (machines are
noisy); the table gives samples/s of both and the speed-up (on / off):

* ``host_sync``: off = a ``.item()`` read of the losses after every step (what per-step logging
  costs), on = the loop as it is (losses summed on the device, read every N steps).
* ``fused_adamw``: ``optimizer.fused`` false vs true (the recipe's default on CUDA).
* ``channels_last``: the image CNN's convolutions in NCHW vs channels-last memory format.
* ``compile``: ``trainer.compile`` false vs true.
* ``cudnn_benchmark``: ``torch.backends.cudnn.benchmark`` false vs true (``trainer.cudnn_benchmark``;
  a global flag, so each side sets it before its steps). No effect on a CPU.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path

import torch
from benchmark import MODES, PRESETS, make_recipe, recipe_step, time_steps

from mtmm_train.batch import Batch
from mtmm_train.recipe import TrainRecipe


def synced_step(recipe: TrainRecipe, batch: Batch) -> None:
    """The recipe's step plus the per-step host read the loop avoids."""
    recipe_step(recipe, batch)
    recipe.sums.sum().item()


def cudnn_benchmark_step(on: bool) -> Callable[[TrainRecipe, Batch], None]:
    """The recipe's step with ``torch.backends.cudnn.benchmark`` set first (process-wide, like the recipe does)."""
    def step(recipe: TrainRecipe, batch: Batch) -> None:
        torch.backends.cudnn.benchmark = on
        recipe_step(recipe, batch)
    return step


# technique -> (overrides off, overrides on, step off, step on)
TECHNIQUES: dict[str, tuple[list[str], list[str], Callable, Callable]] = {
    "host_sync": ([], [], synced_step, recipe_step),
    "fused_adamw": (["+optimizer.fused=false"], ["+optimizer.fused=true"], recipe_step, recipe_step),
    "channels_last": (["model.encoders.image.channels_last=false"], ["model.encoders.image.channels_last=true"],
                      recipe_step, recipe_step),
    "compile": (["trainer.compile=false"], ["trainer.compile=true"], recipe_step, recipe_step),
    "cudnn_benchmark": (["trainer.cudnn_benchmark=false"], ["trainer.cudnn_benchmark=true"],
                        cudnn_benchmark_step(False), cudnn_benchmark_step(True)),
}


def ablate(technique: str, config: str, mode: str, rounds: int, steps: int, warmup: int, out: Path,
           round_seconds: float = 0.0, extra: list[str] | None = None) -> dict:
    """Samples/s of the recipe with ``technique`` off and on (medians of alternating rounds).

    Args:
        extra: overrides for both sides (``--override``).
    """
    off_overrides, on_overrides, off_step, on_step = TECHNIQUES[technique]
    # The mode's settings; its trainer.compile only when compile is not the technique under test.
    mode_overrides = [o for o in MODES[mode] if technique != "compile" or not o.startswith("trainer.compile")]
    base = PRESETS.get(config, [config]) + list(extra or []) + mode_overrides
    sides = {"off": (make_recipe(base + off_overrides, out / f"{config}-{mode}-{technique}-off"), off_step),
             "on": (make_recipe(base + on_overrides, out / f"{config}-{mode}-{technique}-on"), on_step)}
    batches = {k: [b for _, b in zip(range(8), r.train_loader.epoch(0), strict=False)] for k, (r, _) in sides.items()}
    for k, (recipe, step) in sides.items():  # warm-up (and compilation)
        time_steps(step, recipe, batches[k], warmup)
    recipe, step = sides["off"]
    rate = time_steps(step, recipe, batches["off"], warmup)
    steps = max(steps, int(round_seconds * rate / batches["off"][0].size))
    rates: dict[str, list[float]] = {"off": [], "on": []}
    for r in range(rounds):
        for k in (("off", "on") if r % 2 == 0 else ("on", "off")):
            recipe, step = sides[k]
            rates[k].append(time_steps(step, recipe, batches[k], steps))
    off, on = statistics.median(rates["off"]), statistics.median(rates["on"])
    return {"technique": technique, "config": config, "mode": mode, "device": str(sides["on"][0].device),
            "off_samples_s": off, "on_samples_s": on, "speedup": on / off, "rounds": rounds, "steps_per_round": steps,
            "off_all": rates["off"], "on_all": rates["on"]}


def print_table(rows: list[dict]) -> None:
    """One line per (technique, config, mode)."""
    head = f"{'technique':<16} {'config':<16} {'mode':<15} {'off/s':>10} {'on/s':>10} {'speed-up':>8}"
    print(head)
    print("-" * len(head))
    for r in rows:
        if "error" in r:
            print(f"{r['technique']:<16} {r['config']:<16} {r['mode']:<15} error: {r['error'][:80]}")
            continue
        print(f"{r['technique']:<16} {r['config']:<16} {r['mode']:<15} {r['off_samples_s']:>10,.0f} "
              f"{r['on_samples_s']:>10,.0f} {r['speedup']:>8.3f}")
