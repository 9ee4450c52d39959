"""Cost of every fusion method at 2, 3 and 4 modalities: parameters, step time, memory.

    python scripts/bench_fusion.py                          # CPU, the default experiment, batch 128
    python scripts/bench_fusion.py --device cuda --precision bf16 --fusions concat tensor low_rank

Each model is the default experiment (synthetic data, all four tasks) with ``fusion=<name>``
and its first M modalities (image, audio, text, tabular). A step is exactly the training
loop's: ``TrainRecipe.micro_step`` (forward, losses, balancer backward) then
``optimizer_step``; the table shows the median over the timed steps. Memory: the peak CUDA
allocation during the steps (``-`` on CPU, where torch keeps no such count), and, on any
device, the activations saved for backward by one forward pass. ``fusion_table`` is what
``scripts/benchmark.py`` calls.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hydra import compose, initialize_config_module  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from mtmm_train.errors import UserError  # noqa: E402
from mtmm_train.recipe import TrainRecipe  # noqa: E402

MODALITIES = ("image", "audio", "text", "tabular")
FUSIONS = sorted(p.stem for p in (ROOT / "configs" / "fusion").glob("*.yaml"))
COLUMNS = ("fusion", "modalities", "fused_dim", "parameters", "fusion_parameters", "step_ms", "peak_mem_mb",
           "activations_mb")


def compose_cfg(overrides: list[str]) -> DictConfig:
    """Compose ``train.yaml``, inside the caller's Hydra context if there is one."""
    if GlobalHydra.instance().is_initialized():
        return compose(config_name="train", overrides=overrides)
    with initialize_config_module(config_module="mtmm_train.configs", version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def saved_activation_bytes(recipe: TrainRecipe, batch: Any) -> int:
    """Bytes of the tensors one forward pass saves for backward (what training keeps alive)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        # Parameters are saved too but are not activations; storages shared by views count once.
        if not isinstance(t, torch.nn.Parameter):
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), recipe.autocast:
        preds, _ = recipe.model(batch.inputs, batch.present)
    del preds
    return sum(seen.values())


def build_bench(fusion: str, num_modalities: int, device: torch.device, steps: int, batch_size: int,
                precision: str, out: Path) -> tuple[dict[str, Any], TrainRecipe | None]:
    """The row's static columns and the recipe to time (``None`` if the fusion refuses the configuration)."""
    row: dict[str, Any] = {"fusion": fusion, "modalities": num_modalities}
    mods = ",".join(MODALITIES[:num_modalities])
    cfg = compose_cfg([f"fusion={fusion}", f"modalities=[{mods}]", f"trainer.device={device}",
                       f"trainer.precision={precision}", f"trainer.batch_size={batch_size}",
                       f"dataset.num_train={batch_size * steps}", "dataset.num_val=16", "dataset.num_test=16",
                       "logger=none", "seed=0"])
    recipe = TrainRecipe(cfg, out)
    try:
        recipe.setup()
    except UserError as e:  # e.g. a tensor fusion larger than its limit
        return {**row, "error": str(e)}, None
    model = recipe.model
    row["fused_dim"] = model.fusion.out_dim
    row["parameters"] = sum(p.numel() for p in model.parameters())
    row["fusion_parameters"] = sum(p.numel() for p in model.fusion.parameters())
    row["activations_mb"] = saved_activation_bytes(recipe, next(iter(recipe.train_loader.epoch(0)))) / 2**20
    return row, recipe


def timed_step(recipe: TrainRecipe, batch: Any) -> tuple[float, float | None]:
    """Seconds of one training step (the loop's own), and the peak CUDA memory in MiB during it."""
    cuda = recipe.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(recipe.device)
        torch.cuda.reset_peak_memory_stats(recipe.device)
    start = time.perf_counter()
    recipe.micro_step(batch)
    recipe.optimizer_step()
    if cuda:
        torch.cuda.synchronize(recipe.device)
    return time.perf_counter() - start, torch.cuda.max_memory_allocated(recipe.device) / 2**20 if cuda else None


def fusion_table(device: str | torch.device, modality_counts: tuple[int, ...] = (2, 3, 4),
                 fusions: tuple[str, ...] | None = None, steps: int = 20, warmup: int = 3, batch_size: int = 128,
                 precision: str = "32") -> list[dict[str, Any]]:
    """Parameters, step time and memory of each fusion at each number of modalities.

    Every configuration is built first; then the steps go round the configurations one at a
    time, so that a machine whose speed drifts slows all of them alike.

    Args:
        device: where to run (``cpu``, ``cuda``, ``cuda:N``).
        modality_counts: numbers of modalities M (the first M of image, audio, text, tabular).
        fusions: fusion config names (default: every ``configs/fusion/*.yaml``).
        steps: timed training steps per configuration (the median is reported).
        warmup: untimed steps before them.
        batch_size: samples per step.
        precision: ``32``, ``bf16`` or ``fp16`` (``trainer.precision``).

    Returns:
        One dict per (fusion, M) with the keys of ``COLUMNS`` (``error`` instead, for a
        configuration the fusion refuses).
    """
    device = torch.device(device)
    with tempfile.TemporaryDirectory() as tmp:
        benches = [build_bench(f, m, device, steps, batch_size, precision, Path(tmp))
                   for f in fusions or FUSIONS for m in modality_counts]
        loaders = [list(recipe.train_loader.epoch(0)) if recipe else [] for _, recipe in benches]
        times: list[list[float]] = [[] for _ in benches]
        peaks: list[list[float]] = [[] for _ in benches]
        for i in range(warmup + steps):
            for j, (_, recipe) in enumerate(benches):
                if recipe is None:
                    continue
                seconds, peak = timed_step(recipe, loaders[j][i % len(loaders[j])])
                if i >= warmup:
                    times[j].append(seconds)
                    peaks[j].append(peak or 0.0)
    rows = []
    for (row, recipe), t, pk in zip(benches, times, peaks, strict=True):
        if recipe is not None:
            row["step_ms"] = 1000 * statistics.median(t)
            row["peak_mem_mb"] = max(pk) if device.type == "cuda" else None
        rows.append({c: row.get(c) for c in COLUMNS} if "error" not in row else row)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of :func:`fusion_table`'s rows."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|---" * len(COLUMNS) + "|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['fusion']} | {r['modalities']} | refused: {r['error'][:80]} |")
            continue
        cells = [f"{r[c]:,}" if isinstance(r[c], int) else "-" if r[c] is None else f"{r[c]:.2f}"
                 if isinstance(r[c], float) else str(r[c]) for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--modalities", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument("--fusions", nargs="+", default=None, choices=FUSIONS)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--precision", default="32", choices=["32", "bf16", "fp16"])
    parser.add_argument("--json", type=Path, default=None, help="also save the rows here")
    args = parser.parse_args()
    rows = fusion_table(args.device, tuple(args.modalities), tuple(args.fusions) if args.fusions else None,
                        args.steps, args.warmup, args.batch_size, args.precision)
    print(f"fusion cost on {args.device} (batch {args.batch_size}, precision {args.precision}, torch "
          f"{torch.__version__}, median of {args.steps} steps)")
    print(format_table(rows))
    if args.json:
        args.json.write_text(json.dumps({"device": str(args.device), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
