"""TensorBoard scalars and hparams in one run folder, and the end-of-run results table.

Layout of ``<run>/tensorboard`` (:func:`event_dir`): the curves in a folder named after the run
folder, so that TensorBoard's run list shows which run is which, and the HParams session in its
``best`` subfolder: the run's settings and the best epoch's metrics as one point each, under the
same tags as the curves (a dot on each curve at the best epoch, and no cards of their own)::

    <run>/tensorboard/<run folder name>/events...        train/... (also train/lr), val/...
    <run>/tensorboard/<run folder name>/best/events...   hparams + best val/...

A sweep's job folders are numbered (``<sweep>/0``, ``<sweep>/1``), so theirs is
``<sweep folder name>/<job>``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

BEST = "best"  # the subfolder of the event folder with the HParams session and the best metrics
TEST = "test"  # the subfolder with the best checkpoint's test-split results, on the validation curves' cards


def run_name(run_dir: Path) -> str:
    """The name TensorBoard lists the run under: the run folder's name, ``<sweep>/<job>`` for a sweep job."""
    run_dir = Path(run_dir).absolute()
    if run_dir.name.isdigit() and run_dir.parent.name:  # Hydra's hydra.sweep.subdir is the job number
        return f"{run_dir.parent.name}/{run_dir.name}"
    return run_dir.name or "run"


def event_dir(run_dir: Path) -> Path:
    """The folder of a run's curves: ``<run>/tensorboard/<run_name(run)>``."""
    return Path(run_dir) / "tensorboard" / run_name(run_dir)


class TensorBoard:
    """A thin wrapper of ``SummaryWriter`` that can be switched off.

    The hparams go into the ``best`` subfolder with the best metrics (``add_hparams`` would open
    a run in a timestamped subfolder, and scalar tags of their own for the metrics).

    Args:
        log_dir: the folder of the event files (:func:`event_dir` of the run folder).
        enabled: write nothing when False.
        purge_step: on resume, the step to continue from (drops stale later events).
    """

    def __init__(self, log_dir: Path, enabled: bool = True, purge_step: int | None = None) -> None:
        self.writer = None
        self.log_dir = Path(log_dir)
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)

    def scalars(self, values: dict[str, float], step: int) -> None:
        """One ``add_scalar`` per tag (tags use ``/``, never ``add_scalars``)."""
        if self.writer is not None:
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, step)

    def hparams(self, hparams: dict[str, Any], metrics: dict[str, float], step: int = 0) -> None:
        """Record the run's settings and its best metrics for the HParams tab.

        One HParams session in ``<log_dir>/best``: the settings, and each finite metric as one
        point at ``step`` (the best epoch's) under its own tag, e.g. ``val/match/auroc``; of the
        losses, the total only (a column per task loss would crowd the table). No experiment
        summary: TensorBoard then takes the columns from every session it finds, so the runs of a
        sweep (other tasks, other settings) share one table.
        """
        if self.writer is None:
            return
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        best = {k: float(v) for k, v in metrics.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                and ("/loss/" not in k or k.endswith("/loss/total"))}
        # The HParams plugin takes numbers, strings and booleans; anything else (None, a list) as its text.
        plain = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in hparams.items()}
        _, session_start, session_end = hparams_summary(plain, best)
        with SummaryWriter(str(self.log_dir / BEST)) as writer:
            writer.file_writer.add_summary(session_start)
            for tag, value in best.items():
                writer.add_scalar(tag, value, step)
            writer.file_writer.add_summary(session_end)

    def test_points(self, metrics: dict[str, float], step: int) -> None:
        """The best checkpoint's test-split results, as one point per metric at ``step`` in the run
        ``<log_dir>/test``, under the matching validation tag (``test/match/auroc`` on the
        ``val/match/auroc`` card): each sits beside the curve it belongs to, and no one-point ``test/``
        cards come before the training curves (TensorBoard sorts its card groups by name)."""
        if self.writer is None or not metrics:
            return
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(self.log_dir / TEST)) as writer:
            for tag, value in metrics.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    writer.add_scalar("val/" + tag.split("/", 1)[1] if tag.startswith("test/") else tag, value, step)

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
