"""TensorBoard scalars and hparams in one run folder, and the end-of-run results table."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


class TensorBoard:
    """A thin wrapper of ``SummaryWriter`` that can be switched off.

    Hparams go into the same event file as the scalars (``add_hparams`` would open a second
    run in a timestamped subfolder).

    Args:
        log_dir: the folder of the event files.
        enabled: write nothing when False.
        purge_step: on resume, the step to continue from (drops stale later events).
    """

    def __init__(self, log_dir: Path, enabled: bool = True, purge_step: int | None = None) -> None:
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)

    def scalars(self, values: dict[str, float], step: int) -> None:
        """One ``add_scalar`` per tag (tags use ``/``, never ``add_scalars``)."""
        if self.writer is not None:
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, step)

    def hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        """Record the run's hyper-parameters and final metrics for the HParams tab."""
        if self.writer is None:
            return
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        finite = {k: v for k, v in metrics.items() if isinstance(v, float) and math.isfinite(v)}
        for summary in hparams_summary(hparams, finite):
            self.writer.file_writer.add_summary(summary)
        for tag, value in finite.items():
            self.writer.add_scalar(tag, value, 0)

    def flush(self) -> None:
        """Write buffered events to disk."""
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        if self.writer is not None:
            self.writer.close()


def format_results(metrics: dict[str, float], tasks: list[str], title: str = "") -> str:
    """A one-screen table: one row per task, its loss and metrics."""
    rows = []
    for t in tasks:
        prefix = next((k.split("/")[0] for k in metrics if k.endswith(f"/loss/{t}")), "val")
        cells = [f"loss {metrics.get(f'{prefix}/loss/{t}', float('nan')):.4f}"]
        cells += [f"{k.split('/')[-1]} {v:.4f}" for k, v in metrics.items() if k.startswith(f"{prefix}/{t}/")]
        rows.append((t, "  ".join(cells)))
    width = max((len(t) for t, _ in rows), default=4)
    lines = [title] if title else []
    lines += [f"  {t:<{width}}  {cells}" for t, cells in rows]
    return "\n".join(lines)
