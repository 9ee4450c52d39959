"""The ``mtmm-train`` entry point (also ``python -m mtmm_train``)."""

from __future__ import annotations

import logging
import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException, OverrideParseException
from omegaconf import DictConfig

from mtmm_train import distributed
from mtmm_train.errors import UserError
from mtmm_train.recipe import Preempted, TrainRecipe

log = logging.getLogger("mtmm_train")

EXIT_USER_ERROR = 2
EXIT_PREEMPTED = 3  # stopped by SIGTERM/SIGINT/SIGUSR2 with a checkpoint: requeue with trainer.resume=auto


def run(cfg: DictConfig) -> float:
    """Train as ``cfg`` says; return the best value of the monitored metric."""
    output_dir = HydraConfig.get().runtime.output_dir
    if distributed.info().rank > 0:
        quiet_console()
    recipe = TrainRecipe(cfg, output_dir)
    recipe.setup()
    return recipe.train()


def quiet_console() -> None:
    """Warnings only on the console (ranks other than 0 under torchrun); log files keep everything."""
    for handler in logging.getLogger().handlers:
        if type(handler) is logging.StreamHandler:  # Hydra's console handler, not its FileHandler
            handler.setLevel(logging.WARNING)


@hydra.main(version_base="1.3", config_path="pkg://mtmm_train.configs", config_name="train")
def _hydra_main(cfg: DictConfig) -> float:
    try:
        return run(cfg)
    except UserError as e:
        # A user mistake: one line, no traceback, a distinct exit status.
        print(f"mtmm-train: error: {e}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except Preempted as e:
        print(f"mtmm-train: {e}", file=sys.stderr)
        sys.exit(EXIT_PREEMPTED)


def main() -> None:
    """Console-script entry point (also under ``torchrun --nproc_per_node=N -m mtmm_train``)."""
    distributed.init_from_env()  # before Hydra: the ranks must agree on the run folder's time
    # Hydra then re-raises its own errors instead of printing them over several lines: an unknown
    # group option (fusion=nope) or a malformed override becomes one line below, like ours.
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    try:
        _hydra_main()
    except (ConfigCompositionException, OverrideParseException) as e:
        print(f"mtmm-train: error: {hydra_error_line(e)}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    finally:
        distributed.shutdown()


def hydra_error_line(e: Exception) -> str:
    """Hydra's multi-line composition message on one line, e.g. ``Could not find 'fusion/nope';
    available options in 'fusion': attention, concat, ...``."""
    lines = [line.strip() for line in str(e).split("Config search path:")[0].splitlines() if line.strip()]
    if len(lines) > 2 and lines[1].endswith(":"):  # "Available options in 'fusion':" then one per line
        return f"{lines[0]}; {lines[1][0].lower()}{lines[1][1:]} {', '.join(lines[2:])}"
    return "; ".join(lines)


if __name__ == "__main__":
    main()
