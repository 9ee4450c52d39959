"""Recipe vs hand-written loop: samples/s of the project's training step next to a minimal PyTorch
loop over the same model, data and optimizer, alternating in one process (machines are noisy).

    python scripts/benchmark.py                                  # CPU: default + a larger config
    python scripts/benchmark.py --configs reference_small reference_large --modes fp32 tf32 bf16 bf16+compile
    python scripts/benchmark.py --suite fusion balancers     # the fusion and balancer cost tables
    python scripts/benchmark.py --suite ablations --configs reference_small --modes bf16   # each technique off/on

Each config is a list of overrides (named presets below, or ``--override``). The recipe side runs
exactly what the training loop runs per step (``TrainRecipe.micro_step`` and ``optimizer_step``);
the hand side is what a user would write without the project: forward, the same masked losses
summed, backward, the same clipping, optimizer and schedule. Prints a table; ``--json`` saves it.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from hydra import compose, initialize_config_module  # noqa: E402

from mtmm_train.batch import Batch  # noqa: E402
from mtmm_train.recipe import TrainRecipe  # noqa: E402

QUIET = ["logger.progress_bar=false", "logger.tensorboard=false"]
PRESETS = {
    "default": [],
    # A bigger model than the default on the same synthetic data (CPU "larger config").
    "large": ["model.encoders.image.channels=[32,64,128]", "model.encoders.image.out_dim=128",
              "model.encoders.audio.out_dim=128", "model.encoders.text.out_dim=128",
              "model.encoders.tabular.out_dim=128", "model.encoders.tabular.hidden_dims=[256]",
              "mtl.hidden_dims=[512,256]", "trainer.batch_size=256", "dataset.image_size=32"],
    "reference_small": ["experiment=reference_small"],
    "reference_large": ["experiment=reference_large"],
}
MODES = {
    "fp32": ["trainer.precision=32", "trainer.float32_matmul_precision=highest"],
    "tf32": ["trainer.precision=32", "trainer.float32_matmul_precision=high"],
    "bf16": ["trainer.precision=bf16", "trainer.float32_matmul_precision=high"],
    "bf16+compile": ["trainer.precision=bf16", "trainer.float32_matmul_precision=high", "trainer.compile=true"],
    # CUDA graphs through torch.compile(mode="reduce-overhead"): launches replayed, not dispatched.
    "bf16+cudagraphs": ["trainer.precision=bf16", "trainer.float32_matmul_precision=high", "trainer.compile=true",
                        "trainer.compile_mode=reduce-overhead"],
    # Inductor times Triton templates against cuBLAS for each matmul/convolution shape (minutes to compile).
    "bf16+autotune": ["trainer.precision=bf16", "trainer.float32_matmul_precision=high", "trainer.compile=true",
                      "trainer.compile_mode=max-autotune-no-cudagraphs"],
}


def make_recipe(overrides: list[str], out: Path) -> TrainRecipe:
    with initialize_config_module(config_module="mtmm_train.configs", version_base="1.3"):
        cfg = compose(config_name="train", overrides=QUIET + overrides)
    recipe = TrainRecipe(cfg, out)
    recipe.setup()
    return recipe


def hand_step(recipe: TrainRecipe, batch: Batch) -> None:
    """A minimal hand-written step over the recipe's model, optimizer and schedule."""
    model, opt = recipe.forward_model, recipe.optimizer
    with recipe.autocast:
        preds, _ = model(batch.inputs, batch.present)
        loss = 0.0
        for t, task in recipe.tasks.items():
            p, y, m = preds[t].float(), batch.targets[t], batch.labeled[t]
            kind = task.spec.kind
            if kind == "multiclass":
                per = F.cross_entropy(p, torch.where(m, y, 0), reduction="none")
            elif kind == "binary":
                per = F.binary_cross_entropy_with_logits(p.squeeze(-1), y.float(), reduction="none")
            elif kind == "multilabel":
                per = F.binary_cross_entropy_with_logits(p, y.float(), reduction="none").mean(-1)
            else:
                per = F.mse_loss(p, y.float().view(p.shape), reduction="none").flatten(1).mean(1)
            loss = loss + torch.where(m, per, 0.0).sum() / m.sum().clamp_min(1)
    opt.zero_grad(set_to_none=True)
    recipe.scaler.scale(loss).backward()
    if recipe.trainer.gradient_clip_norm is not None:
        recipe.scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(recipe.model.parameters(), recipe.trainer.gradient_clip_norm)
    recipe.scaler.step(opt)
    recipe.scaler.update()
    recipe.scheduler.step()


def recipe_step(recipe: TrainRecipe, batch: Batch) -> None:
    """Exactly the training loop's work for one optimizer step (no gradient accumulation)."""
    recipe.micro_step(batch)
    recipe.optimizer_step()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(fn, recipe: TrainRecipe, batches: list[Batch], steps: int) -> float:
    """Samples/s of ``steps`` calls of ``fn``, cycling over ``batches``."""
    sync(recipe.device)
    t0 = time.perf_counter()
    for i in range(steps):
        fn(recipe, batches[i % len(batches)])
    sync(recipe.device)
    return steps * batches[0].size / (time.perf_counter() - t0)


def step_flops(recipe: TrainRecipe, batch: Batch) -> float:
    """FLOPs of one training step (forward + backward), counted by torch.utils.flop_counter."""
    from torch.utils.flop_counter import FlopCounterMode

    compiled, recipe.forward_model = recipe.forward_model, recipe.model  # count on the eager model
    try:
        with FlopCounterMode(display=False) as counter:
            hand_step(recipe, batch)
    finally:
        recipe.forward_model = compiled
    return float(counter.get_total_flops())


def bf16_peak_tflops() -> float:
    """Measured dense bf16 matmul throughput of this GPU (the MFU denominator)."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    return 2 * 8192**3 * 10 / (time.perf_counter() - t0) / 1e12


def compare(name: str, mode: str, overrides: list[str], rounds: int, steps: int, warmup: int, out: Path,
            peak: float | None, round_seconds: float = 0.0) -> dict:
    recipe = make_recipe(overrides + MODES[mode], out / f"{name}-{mode}")
    loader = recipe.train_loader
    batches = [b for _, b in zip(range(8), loader.epoch(0), strict=False)]
    flops = step_flops(recipe, batches[0])
    for fn in (recipe_step, hand_step):  # warm-up (and compilation) of both paths
        time_steps(fn, recipe, batches, warmup)
    # Rounds of at least `round_seconds` each: fast configs need many steps to rise above noise.
    rate = time_steps(hand_step, recipe, batches, warmup)
    steps = max(steps, int(round_seconds * rate / batches[0].size))
    ours, hand = [], []
    for r in range(rounds):  # alternate, and swap the order each round
        pair = (recipe_step, hand_step) if r % 2 == 0 else (hand_step, recipe_step)
        for fn in pair:
            (ours if fn is recipe_step else hand).append(time_steps(fn, recipe, batches, steps))
    med_ours, med_hand = statistics.median(ours), statistics.median(hand)
    row = {"config": name, "mode": mode, "device": str(recipe.device), "batch_size": batches[0].size,
           "recipe_samples_s": med_ours, "hand_samples_s": med_hand, "ratio": med_ours / med_hand,
           "gflop_per_step": flops / 1e9, "recipe_tflops": flops / (batches[0].size / med_ours) / 1e12,
           "rounds": rounds, "steps_per_round": steps, "recipe_all": ours, "hand_all": hand}
    if peak:
        row["mfu"] = row["recipe_tflops"] / peak
    if recipe.device.type == "cuda":
        row["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()
    return row


def print_table(rows: list[dict]) -> None:
    head = (f"{'config':<16} {'mode':<15} {'batch':>5} {'recipe/s':>10} {'hand/s':>10} {'ratio':>6} "
            f"{'TFLOP/s':>8} {'MFU':>6}")
    print(head)
    print("-" * len(head))
    for r in rows:
        if "error" in r:
            print(f"{r['config']:<16} {r['mode']:<15} error: {r['error'][:80]}")
            continue
        mfu = f"{100 * r['mfu']:5.1f}%" if "mfu" in r else "   n/a"
        print(f"{r['config']:<16} {r['mode']:<15} {r['batch_size']:>5} {r['recipe_samples_s']:>10,.0f} "
              f"{r['hand_samples_s']:>10,.0f} {r['ratio']:>6.3f} {r['recipe_tflops']:>8.3f} {mfu}")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["default", "large"], help=f"presets: {', '.join(PRESETS)}")
    parser.add_argument("--override", nargs="*", default=[], help="extra overrides for every config")
    parser.add_argument("--modes", nargs="+", default=None,
                        help=f"{', '.join(MODES)} (default: fp32 on CPU, all on CUDA)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20, help="steps per round and path")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--round-seconds", type=float, default=0.0,
                        help="lengthen rounds to at least this many seconds (more steps for fast configs)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/mtmm-benchmark"), help="scratch folder of the runs")
    parser.add_argument("--json", type=Path, help="write the rows as JSON here")
    parser.add_argument("--suite", nargs="+", default=["recipe"],
                        choices=["recipe", "fusion", "balancers", "ablations"],
                        help="recipe: recipe vs hand loop; fusion: parameters, step time and memory per fusion at "
                             "2/3/4 modalities (scripts/bench_fusion.py); balancers: step time vs static weights "
                             "for 2/4/8 tasks in both Jacobian spaces (scripts/bench_balancers.py); ablations: each "
                             "speed technique off and on (scripts/bench_ablations.py)")
    parser.add_argument("--techniques", nargs="+", default=None,
                        help="ablations to run: host_sync, fused_adamw, channels_last, compile, cudnn_benchmark "
                             "(default: all)")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    if "fusion" in args.suite:
        import bench_fusion

        print(bench_fusion.format_table(bench_fusion.fusion_table("cuda" if cuda else "cpu")), flush=True)
    if "balancers" in args.suite:
        import bench_balancers

        bench_balancers.print_table(bench_balancers.balancer_table("cuda" if cuda else "cpu"))
    if "ablations" in args.suite:
        import bench_ablations

        rows = measure(({"technique": technique, "config": name, "mode": mode}, functools.partial(
            bench_ablations.ablate, technique, name, mode, args.rounds, args.steps, args.warmup, args.out,
            args.round_seconds, args.override))
            for technique in args.techniques or list(bench_ablations.TECHNIQUES)
            for name in args.configs for mode in args.modes or ["fp32"])
        print()
        bench_ablations.print_table(rows)
        write_json(args.json, {"ablations": rows})
    if "recipe" not in args.suite:
        return []
    modes = args.modes or (list(MODES) if cuda else ["fp32"])
    peak = bf16_peak_tflops() if cuda else None
    print(f"torch {torch.__version__}, device {torch.cuda.get_device_name() if cuda else 'cpu'}, "
          f"threads {torch.get_num_threads()}" + (f", measured bf16 peak {peak:.0f} TFLOP/s" if peak else ""),
          flush=True)
    rows = measure(({"config": name, "mode": mode}, functools.partial(
        compare, name, mode, PRESETS.get(name, [name]) + args.override, args.rounds, args.steps, args.warmup,
        args.out, peak, args.round_seconds)) for name in args.configs for mode in modes)
    print()
    print_table(rows)
    write_json(args.json, {"peak_bf16_tflops": peak, "rows": rows})
    return rows


def measure(jobs: Iterable[tuple[dict, Callable[[], dict]]]) -> list[dict]:
    """Run each ``(label, job)``; a failing job becomes its label with ``error``, so the others still run.

    Prints each row as JSON as it comes (without the per-round lists).
    """
    rows = []
    for label, job in jobs:
        try:
            row = job()
        except Exception as e:  # record and go on: one failing mode must not hide the others
            row = {**label, "error": repr(e)[:500]}
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if not k.endswith("_all")}), flush=True)
    return rows


def write_json(path: Path | None, payload: dict) -> None:
    """``--json``: save the rows."""
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=1))


if __name__ == "__main__":
    main()
