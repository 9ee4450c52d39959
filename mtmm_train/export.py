"""``mtmm-export``: a trained model as a ``torch.export`` program (``.pt2``), for serving without mtmm-train.

    mtmm-export checkpoint=logs/runs/<time>/checkpoints/best.pt [output=model.pt2] [dynamic_batch=true]

The model is rebuilt from its checkpoint (:func:`mtmm_train.evaluate.load_run`) and exported with
:func:`torch.export.export` on a few samples of its validation split, with the batch dimension dynamic.
The program takes ``(inputs, present)``, two dicts keyed by modality (the tensors a
:class:`~mtmm_train.batch.Batch` holds: inputs as the readers make them, presence as bool), and returns
a dict of the heads' raw outputs per task (logits for classification, standardised values for
regression: ``mtmm-predict`` turns them into classes and units). Load it with
``torch.export.load(path).module()``. Before writing, the exported program's outputs are compared with
the eager model's, on the export batch and on a batch of another size. ONNX is not offered: the
``onnx`` package is not a dependency (``torch.onnx.export(..., dynamo=True)`` on the same program
would need it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import MISSING
from torch import Tensor, nn

from mtmm_train import fileio
from mtmm_train.commands import run_command
from mtmm_train.errors import UserError, check
from mtmm_train.evaluate import load_run

log = logging.getLogger("mtmm_train")


@dataclass
class ExportConfig:
    """Settings of ``mtmm-export`` (``key=value`` on the command line).

    Attributes:
        checkpoint: the ``.pt`` file written by ``mtmm-train``.
        output: the ``.pt2`` file; null: ``<checkpoint stem>.pt2`` next to the checkpoint.
        batch_size: samples of the validation split to export with (at least 2, so that the batch
            dimension can be dynamic).
        dynamic_batch: any batch size (false: the program takes ``batch_size`` samples only).
        atol: the largest difference allowed between the program's outputs and the eager model's.
        allow_foreign_targets: as in ``mtmm-eval`` (trusted checkpoints only).
    """

    checkpoint: str = MISSING
    output: str | None = None
    batch_size: int = 4
    dynamic_batch: bool = True
    atol: float = 1e-4
    allow_foreign_targets: bool = False


class Predictions(nn.Module):
    """The model with the outputs a server needs: ``(inputs, present)`` -> task -> head outputs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: dict[str, Tensor], present: dict[str, Tensor]) -> dict[str, Tensor]:
        preds, _ = self.model(inputs, present)
        return preds


def export_model(model: nn.Module, inputs: dict[str, Tensor], present: dict[str, Tensor],
                 dynamic_batch: bool = True) -> torch.export.ExportedProgram:
    """``torch.export`` the model (in eval mode) on one batch; the batch dimension dynamic if asked.

    Raises:
        Exception: whatever ``torch.export`` raises for a model it cannot trace.
    """
    wrapped = Predictions(model).eval()
    shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1, max=1 << 20)
        shapes = ({m: {0: batch} for m in inputs}, {m: {0: batch} for m in present})
    with torch.no_grad():
        return torch.export.export(wrapped, (inputs, present), dynamic_shapes=shapes, strict=False)


def max_difference(program: torch.export.ExportedProgram, model: nn.Module, inputs: dict[str, Tensor],
                   present: dict[str, Tensor]) -> float:
    """The largest absolute difference between the program's and the eager model's outputs."""
    with torch.no_grad():
        got = program.module()(inputs, present)
        want, _ = model.eval()(inputs, present)
    return max(float((got[t].float() - want[t].float()).abs().max()) for t in want)


def sample(split: Any, n: int, start: int = 0) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """``n`` samples of a split from ``start`` (wrapping around): ``(inputs, present)``."""
    index = (torch.arange(n) + start) % len(split)
    batch = split.batch(index)
    return batch.inputs, batch.present


def export_checkpoint(cfg: ExportConfig) -> Path:
    """Export a checkpoint's model to ``cfg.output``, checked against the eager model; returns the file.

    Raises:
        UserError: a bad setting or checkpoint, or a model ``torch.export`` cannot trace (naming its fusion
            and encoders, and the first line of the reason).
    """
    check(isinstance(cfg.batch_size, int) and cfg.batch_size >= 2,
          f"batch_size must be an integer >= 2, found {cfg.batch_size!r}; e.g. batch_size=4")
    out = Path(cfg.output).expanduser() if cfg.output else Path(cfg.checkpoint).with_suffix(".pt2")
    check(out.suffix == ".pt2", f"output is '{cfg.output}'; give a .pt2 file, e.g. output=model.pt2")
    log.info("mtmm-export: %s -> %s (torch.export%s)", cfg.checkpoint, out,
             ", dynamic batch" if cfg.dynamic_batch else f", batch of {cfg.batch_size}")
    run = load_run(cfg.checkpoint, "cpu", None, cfg.allow_foreign_targets, move_splits=False)
    split = run.data.splits["val"]
    inputs, present = sample(split, cfg.batch_size)
    parts = ", ".join([f"fusion {type(run.model.fusion).__name__}"]
                      + [f"{m}: {type(e).__name__}" for m, e in run.model.encoders.items()])
    try:
        program = export_model(run.model, inputs, present, cfg.dynamic_batch)
    except Exception as e:  # torch.export's errors are long; the first line names the cause
        first = " ".join(str(e).strip().splitlines()[0].split())[:300] if str(e).strip() else type(e).__name__
        raise UserError(f"torch.export cannot export this model ({parts}): {type(e).__name__}: {first}; see "
                        "docs/predict.md for the fusions and encoders that export") from None
    checks = [(inputs, present)]
    if cfg.dynamic_batch:
        checks.append(sample(split, cfg.batch_size + 1, start=cfg.batch_size))
    for x, p in checks:
        diff = max_difference(program, run.model, x, p)
        check(diff <= cfg.atol, f"the exported program differs from the model by {diff:.2e} (> atol={cfg.atol}) "
              f"on a batch of {len(next(iter(p.values())))} ({parts}); raise atol if that is acceptable")
    with fileio.atomic_write(out) as f:
        torch.export.save(program, f)
    log.info("mtmm-export: wrote %s (inputs: %s)", out, ", ".join(
        f"{m} {list(x.shape[1:])} {str(x.dtype).removeprefix('torch.')}" for m, x in inputs.items()))
    return out


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: ``mtmm-export key=value ...``."""
    run_command("mtmm-export", export_checkpoint, ExportConfig, ("checkpoint",),
                "checkpoint=logs/runs/<time>/checkpoints/best.pt output=model.pt2", argv)


if __name__ == "__main__":
    main()
