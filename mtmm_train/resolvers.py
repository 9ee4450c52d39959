"""OmegaConf resolvers the configs use; registered when ``mtmm_train`` is imported.

* ``${mtmm_now:%Y-%m-%d_%H-%M-%S}``: the run's start time, formatted. Like Hydra's ``${now:}``
  it is fixed once per process; under ``torchrun`` every rank gets rank 0's time (set by
  :func:`mtmm_train.distributed.init_from_env` before Hydra composes the config), so all ranks
  share one run folder. Hydra's ``${now:}`` would differ between ranks started a second apart.
* ``${mtmm_rank_suffix:}``: ``""`` in a single process and on rank 0, ``_rank<N>`` on the other
  ranks: each rank keeps its own ``.hydra`` folder and log file inside the shared run folder.
"""

from __future__ import annotations

import os
import time
from datetime import datetime

from omegaconf import OmegaConf

RUN_TIME: float | None = None  # seconds since the epoch; set once, shared by all ranks under torchrun


def run_time() -> float:
    """The run's start time (the first call's time unless it was set before)."""
    global RUN_TIME
    if RUN_TIME is None:
        RUN_TIME = time.time()
    return RUN_TIME


def reset() -> None:
    """Forget the start time: the next run (another ``main()`` in this process) takes a new one."""
    global RUN_TIME
    RUN_TIME = None


def _now(pattern: str) -> str:
    return datetime.fromtimestamp(run_time()).strftime(pattern)  # as Hydra's ${now:} (%f included)


def _rank_suffix() -> str:
    rank = int(os.environ.get("RANK", "0"))
    return f"_rank{rank}" if rank > 0 else ""


def register() -> None:
    """Register the resolvers (idempotent)."""
    # Cached in the config, like Hydra's ${now:}: a launcher's job processes (joblib, submitit)
    # receive the config with the time the launcher resolved, and keep its sweep folder.
    OmegaConf.register_new_resolver("mtmm_now", _now, replace=True, use_cache=True)
    OmegaConf.register_new_resolver("mtmm_rank_suffix", _rank_suffix, replace=True)
