"""Cost of every fusion method at 2, 3 and 4 modalities: parameters, step time, memory.

    python scripts/bench_fusion.py                          # CPU, the default experiment, batch 128
    python scripts/bench_fusion.py --device cuda --precision bf16 --fusions concat tensor low_rank

Each model is the default experiment (synthetic data, all four tasks) with ``fusion=<name>``
and its first M modalities (image, audio, text, tabular). A step is exactly the training
loop's: ``TrainRecipe.train_step`` (forward, losses, balancer backward, optimizer step); the
table shows the median over the timed steps. Memory: the peak CUDA allocation during the steps
(``-`` on CPU, where torch keeps no such count), and, on any device, the activations saved for
backward by one forward pass. The measurement is ``mtmm_train.benchmarking.fusion_table``, which
``scripts/benchmark.py --suite fusion`` runs too.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from mtmm_train.benchmarking import config_names, format_fusion_table, fusion_table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--modalities", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument("--fusions", nargs="+", default=None, choices=config_names("fusion"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--precision", default="32", choices=["32", "bf16", "fp16"])
    parser.add_argument("--json", type=Path, default=None, help="also save the rows here")
    args = parser.parse_args(argv)
    rows = fusion_table(args.device, tuple(args.modalities), tuple(args.fusions) if args.fusions else None,
                        args.steps, args.warmup, args.batch_size, args.precision)
    print(f"fusion cost on {args.device} (batch {args.batch_size}, precision {args.precision}, torch "
          f"{torch.__version__}, median of {args.steps} steps)")
    print(format_fusion_table(rows))
    if args.json:
        args.json.write_text(json.dumps({"device": str(args.device), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
