"""The ``mtmm-train`` entry point (also ``python -m mtmm_train``)."""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from mtmm_train import distributed
from mtmm_train.errors import UserError
from mtmm_train.recipe import Preempted, TrainRecipe

log = logging.getLogger("mtmm_train")

EXIT_USER_ERROR = 2
EXIT_PREEMPTED = 3  # stopped by SIGTERM/SIGINT with a checkpoint: requeue with trainer.resume=auto


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
    try:
        _hydra_main()
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    main()
