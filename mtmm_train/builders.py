"""A run's parts from its config: the torch settings, the device, the data, the tasks, the model and the
balancer. Training (:class:`~mtmm_train.recipe.TrainRecipe`), ``mtmm-eval`` and the benchmarks all
build through these functions, so none of them reaches into another.

Each function builds one part in dependency order (data -> tasks -> model -> balancer) and fails with
a one-line :class:`~mtmm_train.errors.UserError` on a bad config. One config component is built by
:func:`mtmm_train.instantiate.build`, which these functions call with the sizes known at run time.
"""

from __future__ import annotations

import logging
import os
import random

import torch
from omegaconf import DictConfig, OmegaConf

from mtmm_train import finetune
from mtmm_train.balancers.base import Balancer
from mtmm_train.config import TrainerConfig, check_names
from mtmm_train.data import MultiModalData
from mtmm_train.data.augment import apply_augment
from mtmm_train.errors import UserError
from mtmm_train.instantiate import build
from mtmm_train.model import MultiModalModel
from mtmm_train.preprocessing import apply_preprocessing
from mtmm_train.tasks import TASK_TYPES, Task

log = logging.getLogger("mtmm_train")

AMP_DTYPES = {"32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


# ---------------------------------------------------------------------- torch and the device
def seed_everything(seed: int) -> None:
    """Seed Python's and torch's generators (CPU and CUDA)."""
    random.seed(seed)
    torch.manual_seed(seed)


def configure_torch(t: TrainerConfig) -> None:
    """Process-wide numerics of ``trainer``: matmul precision, cuDNN autotuning, determinism."""
    # "high" lets float32 matmuls and convolutions use TF32 on GPUs that have it.
    torch.set_float32_matmul_precision(t.float32_matmul_precision)
    torch.backends.cudnn.allow_tf32 = t.float32_matmul_precision != "highest"
    # Batches keep their shapes (an epoch's last batch adds one), so timing cuDNN's algorithms once per shape pays.
    torch.backends.cudnn.benchmark = t.cudnn_benchmark and not t.deterministic
    if t.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    # The thread count is part of a CPU run's result (another count may sum in another order).
    if t.num_threads is not None:
        torch.set_num_threads(t.num_threads)
    log.info("torch: %d CPU thread(s) (%s)", torch.get_num_threads(), f"trainer.num_threads={t.num_threads}"
             if t.num_threads is not None else "trainer.num_threads=null: torch's default; OMP_NUM_THREADS="
             + os.environ.get("OMP_NUM_THREADS", "unset"))


def pick_device(name: str) -> torch.device:
    """``auto``: CUDA when present, else CPU; otherwise the named device (checked)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"trainer.device '{name}' is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"trainer.device is '{name}' but no CUDA device is available; use trainer.device=auto")
    return device


def autocast_for(precision: str, device: torch.device) -> torch.autocast:
    """The autocast context of ``trainer.precision`` (disabled for ``32``)."""
    dtype = AMP_DTYPES[precision]
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


# ---------------------------------------------------------------------- data, tasks, model, balancer
def build_data(cfg: DictConfig) -> MultiModalData:
    """The dataset, reduced to the modalities and tasks the run uses (splits in host memory).

    The dataset decides which modalities and tasks exist; ``model.encoders``, ``model.heads``,
    ``modalities`` and ``tasks`` must match them.

    Raises:
        UserError: a modality without an encoder, a head for a task the data lacks, an empty
            ``train`` or ``val`` split, ...
    """
    apply_preprocessing(cfg)  # readers take the settings their encoders ask for (size, tokenizer, sample rate)
    apply_augment(cfg)  # readers take the run's augmentation preset (augment=none|light|strong) unless they set one
    data: MultiModalData = build(cfg.dataset, "dataset")
    modalities = check_names("modality", "model.encoders", list(cfg.model.encoders), list(data.modalities),
                             names_setting(cfg, "modalities"), "modalities")
    tasks = check_names("task", "model.heads", list(cfg.model.heads), list(data.tasks),
                        names_setting(cfg, "tasks"), "tasks")
    data = data.select(modalities, tasks)
    for name in ("train", "val"):
        if name not in data.splits or len(data.splits[name]) == 0:
            raise UserError(f"dataset has an empty '{name}' split; give it samples")
    return data


def build_tasks(data: MultiModalData) -> dict[str, Task]:
    """One :class:`~mtmm_train.tasks.Task` (loss and metrics) per task of ``data``, by its kind."""
    return {name: TASK_TYPES[spec.kind](spec) for name, spec in data.tasks.items()}


def can_be_absent(cfg: DictConfig, data: MultiModalData, modality: str) -> bool:
    """Whether a training batch may lack ``modality`` in some row: the training split has rows without it,
    or ``model.modality_dropout`` drops modalities (True also when the data has no training split here, as
    when ``mtmm-predict`` builds a model from a checkpoint's schema: then it only evaluates)."""
    train = data.splits.get("train")
    if train is None or float(cfg.model.get("modality_dropout") or 0.0) > 0.0:
        return True
    return not bool(train.present[modality].all())


def build_model(cfg: DictConfig, data: MultiModalData, tasks: dict[str, Task], init: bool = True) -> MultiModalModel:
    """Encoders -> fusion -> MTL architecture -> heads, each one's input size taken from the one before.

    Each encoder's fine-tuning settings (``freeze``, ``adapter``, ``init_from``...) are taken out of its
    config node and applied to the built encoder (:mod:`mtmm_train.finetune`), here, so that training,
    resume and ``mtmm-eval`` build the same modules (a LoRA adapter included).

    Args:
        init: load the encoders' ``init_from`` checkpoints (``mtmm-eval`` loads a checkpoint's weights instead).

    Returns:
        The model on the CPU (the caller moves it).
    """
    encoders = {}
    for m, spec in data.modalities.items():
        key = f"model.encoders.{m}"
        node, tuning = finetune.split(cfg.model.encoders[m], key)
        encoders[m] = build(node, key, modality=spec)
        finetune.apply(encoders[m], tuning, key, m, init=init)
        if getattr(encoders[m], "uses_presence", False) and not can_be_absent(cfg, data, m):
            encoders[m].uses_presence = False  # nothing to mask: the plain, fused BatchNorm is ~1.5x faster
    fusion = build(cfg.fusion, "fusion", in_dims={m: e.out_dim for m, e in encoders.items()})
    mtl = build(cfg.mtl, "mtl", in_dim=fusion.out_dim, tasks=list(tasks))
    heads = {t: build(cfg.model.heads[t], f"model.heads.{t}", in_dim=mtl.out_dim, out_dim=task.out_dim)
             for t, task in tasks.items()}
    extra = {k: cfg.model[k] for k in ("missing", "modality_dropout") if k in cfg.model}
    return MultiModalModel(encoders, fusion, mtl, heads, **extra)


def build_balancer(cfg: DictConfig, tasks: list[str]) -> Balancer:
    """The task balancer (loss weighting or gradient aggregation) for ``tasks``, on the CPU."""
    return build(cfg.balancer, "balancer", tasks=tasks)


# ---------------------------------------------------------------------- top-level settings
def names_setting(cfg: DictConfig, key: str) -> list[str] | None:
    """A top-level list of names (``tasks``, ``modalities``); None: all."""
    value = cfg.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if not OmegaConf.is_list(value):
        raise UserError(f"{key} must be a list of names or null, found {value!r}")
    return [str(v) for v in value]
