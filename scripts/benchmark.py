"""Recipe vs hand-written loop: samples/s of the project's training step next to a minimal PyTorch
loop over the same model, data and optimizer, alternating in one process (machines are noisy).

    python scripts/benchmark.py                                  # CPU: default + a larger config
    python scripts/benchmark.py --configs reference_small reference_large --modes fp32 tf32 bf16 bf16+compile
    python scripts/benchmark.py --suite fusion balancers     # the fusion and balancer cost tables
    python scripts/benchmark.py --suite ablations --configs reference_small --modes bf16   # each technique off/on
    python scripts/benchmark.py --suite feature_cache      # frozen ViT/ResNet + BERT: epoch time, cache vs recompute
    python scripts/benchmark.py --suite feature_cache finetune --configs vit_b16+bert_base   # GPU-sized (docs/gpu.md)
    python scripts/benchmark.py --suite finetune --rounds 1 --steps 4 --warmup 1   # memory/step time per fine-tuning
    python scripts/benchmark.py --suite files --configs backbone_reference --rows 4096   # JPEG files (docs/files.md)

Each config is a list of overrides (named presets, or ``--override``). The recipe side runs
exactly what the training loop runs per step (``TrainRecipe.train_step``); the hand side is what
a user would write without the project: forward, the same masked losses summed, backward, the
same clipping, optimizer and schedule. Prints a table; ``--json`` saves it. The measurements
themselves are in ``mtmm_train/benchmarking.py``.
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import torch

from mtmm_train import benchmarking as bench


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["default", "large"],
                        help=f"presets: {', '.join(bench.PRESETS)}")
    parser.add_argument("--override", nargs="*", default=[], help="extra overrides for every config")
    parser.add_argument("--modes", nargs="+", default=None,
                        help=f"{', '.join(bench.MODES)} (default: fp32 on CPU, all on CUDA)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20, help="steps per round and path")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--round-seconds", type=float, default=0.0,
                        help="lengthen rounds to at least this many seconds (more steps for fast configs)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/mtmm-benchmark"), help="scratch folder of the runs")
    parser.add_argument("--json", type=Path, help="write the rows as JSON here")
    parser.add_argument("--suite", nargs="+", default=["recipe"],
                        choices=["recipe", "fusion", "balancers", "ablations", "feature_cache", "finetune", "files"],
                        help="recipe: recipe vs hand loop; fusion: parameters, step time and memory per fusion at "
                             "2/3/4 modalities (also scripts/bench_fusion.py); balancers: step time vs static "
                             "weights for 2/4/8 tasks in both Jacobian spaces (also scripts/bench_balancers.py); "
                             "ablations: each speed technique off and on; feature_cache: epoch time of frozen "
                             "backbones served from the feature cache vs recomputed; finetune: step time and peak "
                             "memory per fine-tuning choice (frozen + cache, frozen, LoRA, full, full + gradient "
                             "checkpointing), each in its own process; files: one model fed from a JPEG + text "
                             "manifest: memory vs streamed with host workers vs decode=device, data wait "
                             "(mtmm_train/benchmarking_files.py; --configs tiny on a CPU)")
    parser.add_argument("--rows", type=int, default=512, help="files: rows of the manifest it writes (cached in --out)")
    parser.add_argument("--image-size", type=int, nargs=4, default=[240, 320, 375, 500], metavar=("MIN_H", "MIN_W",
                        "MAX_H", "MAX_W"), help="files: the JPEGs' sizes, drawn between these")
    parser.add_argument("--workers", type=int, default=None, help="files: DataLoader workers (default: cores - 1)")
    parser.add_argument("--batches", type=int, default=20, help="files: timed batches per path")
    parser.add_argument("--decode-ahead", type=int, nargs="+", default=[1], metavar="N",
                        help="files: the decode=device path once per value of loader.decode_ahead (batches decoded "
                             "ahead of the step in a thread; 0: in the training thread), e.g. 1 0 side by side")
    parser.add_argument("--choices", nargs="+", default=None,
                        help=f"finetune: the choices to measure: {', '.join(bench.FINETUNE_CHOICES)} (default: all)")
    parser.add_argument("--techniques", nargs="+", default=None,
                        help=f"ablations to run: {', '.join(bench.TECHNIQUES)} (default: all)")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    if "fusion" in args.suite:
        print(bench.format_fusion_table(bench.fusion_table("cuda" if cuda else "cpu")), flush=True)
    if "balancers" in args.suite:
        bench.print_balancer_table(bench.balancer_table("cuda" if cuda else "cpu"))
    if "ablations" in args.suite:
        rows = bench.run_jobs(({"technique": technique, "config": name, "mode": mode}, functools.partial(
            bench.ablate, technique, name, mode, args.rounds, args.steps, args.warmup, args.out,
            args.round_seconds, args.override))
            for technique in args.techniques or list(bench.TECHNIQUES)
            for name in args.configs for mode in args.modes or ["fp32"])
        print()
        bench.print_ablation_table(rows)
        bench.write_json(args.json, {"ablations": rows})
    if "feature_cache" in args.suite:  # default: the CPU configs; vit_b16+bert_base is GPU-sized
        rows = bench.run_jobs(({"config": name}, lambda name=name: bench.feature_cache_bench(
            name, bench.feature_cache_config(name, args.out) + args.override, ["image", "text"], args.rounds,
            args.out)) for name in bench.FEATURE_CACHE_CONFIGS
            if name in args.configs
            or (args.configs == parser.get_default("configs") and name in bench.FEATURE_CACHE_CPU))
        print()
        bench.print_feature_cache_table(rows)
        bench.write_json(args.json, {"feature_cache": rows})
    if "finetune" in args.suite:
        rows = []
        for name in bench.FINETUNE_CONFIGS:
            if name not in args.configs and (args.configs != parser.get_default("configs") or name != "vit_tiny+bert"):
                continue
            try:
                new = bench.finetune_bench(name, args.rounds, args.steps, args.warmup, args.out, args.choices,
                                           args.override)
            except Exception as e:  # record and go on to the next config
                new = [{"config": name, "error": repr(e)[:500]}]
            for row in new:
                print(json.dumps({k: v for k, v in row.items() if not k.endswith("_all")}), flush=True)
            rows += new
        print()
        bench.print_finetune_table(rows)
        bench.write_json(args.json, {"finetune": rows})
    if "files" in args.suite:
        from mtmm_train import benchmarking_files as fb

        manifest = fb.write_dataset(args.out, args.rows, tuple(args.image_size[:2]), tuple(args.image_size[2:]))
        rows = []
        for name in args.configs if args.configs != parser.get_default("configs") else ["tiny"]:
            overrides = fb.config_overrides(name, args.modes or (["bf16"] if cuda else [])) + args.override
            try:
                new = fb.files_bench(name, overrides, manifest, args.out, args.workers, args.batches, args.warmup,
                                     tuple(args.decode_ahead))
            except Exception as e:  # record and go on to the next config
                new = [{"config": name, "error": repr(e)[:500]}]
            for row in new:
                print(json.dumps(row), flush=True)
            rows += new
        print()
        fb.print_files_table(rows)
        bench.write_json(args.json, {"files": rows})
    if "recipe" not in args.suite:
        return []
    modes = args.modes or (list(bench.MODES) if cuda else ["fp32"])
    peak = bench.bf16_peak_tflops() if cuda else None
    print(f"torch {torch.__version__}, device {torch.cuda.get_device_name() if cuda else 'cpu'}, "
          f"threads {torch.get_num_threads()}" + (f", measured bf16 peak {peak:.0f} TFLOP/s" if peak else ""),
          flush=True)
    rows = bench.run_jobs(({"config": name, "mode": mode}, functools.partial(
        bench.compare, name, mode, bench.preset(name) + args.override, args.rounds, args.steps, args.warmup,
        args.out, peak, args.round_seconds)) for name in args.configs for mode in modes)
    print()
    bench.print_recipe_table(rows)
    bench.write_json(args.json, {"peak_bf16_tflops": peak, "rows": rows})
    return rows


if __name__ == "__main__":
    main()
