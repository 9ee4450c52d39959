"""The ``mtmm-train`` entry point (also ``python -m mtmm_train``)."""

from __future__ import annotations

import logging
import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException, OverrideParseException
from omegaconf import DictConfig, OmegaConf

from mtmm_train import distributed, fileio, runlock
from mtmm_train.commands import hydra_write_failure, mark_task_error
from mtmm_train.config import Refused, remove_created_run_folder
from mtmm_train.errors import UserError
from mtmm_train.recipe import NoFiniteMonitor, Preempted, TrainRecipe

log = logging.getLogger("mtmm_train")

EXIT_FAULT = 1  # the filesystem failed during the run (disk full, mount gone read-only): one line, no traceback
EXIT_USER_ERROR = 2
EXIT_PREEMPTED = 3  # stopped by SIGTERM/SIGINT/SIGUSR2 with a checkpoint: requeue with trainer.resume=auto
EXIT_NO_RESULT = 1  # trained, but trainer.monitor was never finite (diverged): no best epoch


def run(cfg: DictConfig) -> float:
    """Train as ``cfg`` says; return the best value of the monitored metric.

    Before anything is built, the run folder is locked (one run per folder: :mod:`mtmm_train.runlock`)
    and every output folder checked (:func:`mtmm_train.fileio.check_run_outputs`).
    """
    output_dir = HydraConfig.get().runtime.output_dir
    if distributed.info().rank > 0:
        quiet_console()
    with runlock.claim(output_dir, "hydra.run.dir", check=lambda: check_outputs(cfg, output_dir)):
        recipe = TrainRecipe(cfg, output_dir)
        recipe.setup()
        return recipe.train()


def check_outputs(cfg: DictConfig, output_dir: str) -> None:
    """The run's output folders and the dataset cache folder, checked before any training."""
    def setting(key: str, default: object = None) -> object:
        value = OmegaConf.select(cfg, key, default=default, throw_on_resolution_failure=False)
        return default if value is None else value

    cache = setting("dataset.cache", True) is not False
    fileio.check_run_outputs(output_dir, tensorboard=bool(setting("logger.tensorboard", True)),
                             cache_dir=str(setting("dataset.cache_dir")) if cache and setting("dataset.cache_dir")
                             else None)


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
        # A user mistake: one line, no traceback, a distinct exit status; and no run folder left behind.
        remove_created_run_folder(HydraConfig.get().runtime.output_dir)
        print(f"mtmm-train: error: {e}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except Preempted as e:
        print(f"mtmm-train: {e}", file=sys.stderr)
        sys.exit(EXIT_PREEMPTED)
    except NoFiniteMonitor as e:
        print(f"mtmm-train: error: {e}", file=sys.stderr)
        sys.exit(EXIT_NO_RESULT)
    except Exception as e:
        fault = fileio.fault_in(e)
        if fault is None:
            mark_task_error(e)  # not Hydra's: main() passes it on as it is
            raise
        # The disk filled up or went read-only mid-run: every file is written atomically, so
        # what was written before is intact (checkpoint.save replaces last.pt only when complete).
        print(f"mtmm-train: error: cannot write {fileio.explain(fault, runlock.last_folder())}; the files written "
              "before are intact: make room (or fix the mount), then continue with trainer.resume=auto in the same "
              "hydra.run.dir", file=sys.stderr)
        sys.exit(EXIT_FAULT)


def main() -> None:
    """Console-script entry point (also under ``torchrun --nproc_per_node=N -m mtmm_train``)."""
    distributed.init_from_env()  # before Hydra: the ranks must agree on the run folder's time
    # Hydra then re-raises its own errors instead of printing them over several lines: an unknown
    # group option (fusion=nope) or a malformed override becomes one line below, like ours.
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    try:
        _hydra_main()
    except runlock.FolderRefused as e:  # the run (or sweep) folder is another run's, or unusable
        print(f"mtmm-train: error: {e}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except Refused as e:  # a job of a sweep has a bad setting (mtmm_train.config.SweepCheck): none ran
        print(f"mtmm-train: error: {e}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except (ConfigCompositionException, OverrideParseException) as e:
        print(f"mtmm-train: error: {hydra_error_line(e)}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except Exception as e:
        # Hydra's own writes (the run folder, .hydra/, the log file) failed: a full disk, or with a
        # primary config without the run-folder callback, or a sweep's job folder.
        failure = hydra_write_failure(e)
        if failure is None:
            raise
        print(f"mtmm-train: error: {failure}; pass hydra.run.dir=<a writable folder> (hydra.sweep.dir with -m)",
              file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    finally:
        runlock.release_all()
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
