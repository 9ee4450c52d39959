"""The training recipe: ``setup()`` builds the run, ``train()`` loops, ``evaluate()`` measures.

Read top to bottom. One optimizer step is :meth:`TrainRecipe.train_step`: the forward and backward of
its micro-batches (:func:`training_step`, the step itself: forward, losses, balancer), the update
(:meth:`TrainRecipe.optimizer_step`) and the step's log on the device. The parts of the run come from
:mod:`mtmm_train.builders`, the evaluation from :mod:`mtmm_train.evaluation`, the training log's state
from :class:`~mtmm_train.training_log.TrainingLog`, preemption from :mod:`mtmm_train.signals`.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from mtmm_train import builders, checkpoint, distributed, evaluation, feature_cache, fileio, finetune
from mtmm_train.balancers.base import BalanceContext, Balancer, cosine_scalars, task_gramian
from mtmm_train.batch import Batch
from mtmm_train.config import TrainerConfig, check_seed, validate
from mtmm_train.data import InMemoryLoader, StreamingLoader, augment
from mtmm_train.errors import UserError
from mtmm_train.instantiate import build
from mtmm_train.model import CompiledRepresentation
from mtmm_train.signals import Preempted, StopOnSignals
from mtmm_train.tasks import Task
from mtmm_train.tensorboard import TensorBoard, event_dir, format_results
from mtmm_train.training_log import TrainingLog

log = logging.getLogger("mtmm_train")

AUTO_EPOCHS = 8  # trainer.max_epochs=null: at least this many epochs (more to reach trainer.min_steps)

__all__ = ["NoFiniteMonitor", "Preempted", "StepOutput", "TrainRecipe", "training_step"]


class StepOutput:
    """What :func:`training_step` computed for one (micro-)batch: detached, still on the device.

    Attributes:
        losses: ``(T,)`` the task losses as differentiated, in task order: each the mean over
            the micro-batch's labelled samples times its ``share`` and ``micro_factor``, so an
            optimizer step's losses are the sum over its micro-batches.
        weights: ``(T,)`` the weights the balancer gave the tasks.
        gramian: ``(T, T)`` the Gramian of the task gradients w.r.t. the shared representation
            (unscaled, float32), or None when not asked for.
    """

    __slots__ = ("gramian", "losses", "weights")

    def __init__(self, losses: Tensor, weights: Tensor, gramian: Tensor | None) -> None:
        self.losses, self.weights, self.gramian = losses, weights, gramian


def training_step(model: nn.Module, tasks: dict[str, Task], balancer: Balancer, batch: Batch,
                  autocast: contextlib.AbstractContextManager, scaler: torch.amp.GradScaler,
                  shared_params: list[nn.Parameter], step: int, micro_factor: float = 1.0,
                  gramian: bool = False, share: Tensor | None = None, counts: Tensor | None = None,
                  data_parallel: bool = False) -> StepOutput:
    """Forward, per-task losses, and the balancer's backward for one (micro-)batch.

    Args:
        micro_factor: a factor for every loss, ``1 / accumulate_grad_batches``, applied here
            once (the GradScaler's scale is another factor, which the balancer applies).
        gramian: also return the Gramian of the task gradients w.r.t. the shared representation
            (for logging their cosine similarities; costs a backward through the heads per task).
        share: ``(T,)`` factors for the task losses, from :meth:`TrainRecipe.accumulate`: the
            loss of a micro-batch is the mean over its own labelled samples, and with its share
            the gradients of an optimizer step add up to the mean over all of the step's
            labelled samples (every micro-batch, every process), sparse labels included.
        counts: ``(T,)`` labelled samples of each task in this micro-batch, summed over the
            processes, for the balancer (None: counted here when a balancer asks).
        data_parallel: one of several processes (torchrun): the balancer reduces what it
            derives weights from (``BalanceContext.reduce``).

    Returns:
        The losses, weights and Gramian (:class:`StepOutput`).
    """
    with autocast:
        preds, shared = model(batch.inputs, batch.present)
        parts = [task.loss(preds[t], batch.targets[t], batch.labeled[t]) for t, task in tasks.items()]
        if micro_factor != 1.0:
            parts = [loss * micro_factor for loss in parts]
        amp = torch.is_autocast_enabled(shared.device.type)
    if share is not None:
        parts = [loss * share[i] for i, loss in enumerate(parts)]
    losses = torch.stack(parts)  # (T,) in task order
    labeled = LabeledCounts(batch.labeled, None if counts is None else dict(zip(tasks, counts.unbind(), strict=True)))
    parallel = {"reduce": distributed.mean, "world_size": distributed.info().world_size} if data_parallel else {}
    # The scalars too: a per-task gradient of one of them runs only its task's layers backward.
    ctx = BalanceContext(shared, shared_params, labeled, scaler, step, amp, task_losses=parts, **parallel)
    grams = task_gramian(losses, ctx) if gramian else None  # before the balancer's backward frees the graph
    weights = balancer.backward(losses, ctx)
    return StepOutput(losses.detach(), weights.detach().float(), grams)


class NoFiniteMonitor(Exception):
    """Every epoch's ``trainer.monitor`` was NaN or infinite (e.g. the losses diverged): there is no best
    epoch, so no ``best.pt`` and no ``metrics.json``; ``last.pt`` stays, to inspect. The CLI exits with 1."""


class LabeledCounts(Mapping):
    """task -> number of labelled samples in the batch, summed on first access only.

    Most balancers never look, so the loop does not pay a reduction per task per step.

    Args:
        labeled: task -> ``(B,)`` bool mask of labelled samples.
        totals: task -> its count, where already known (data parallel: the sums over all processes).
    """

    def __init__(self, labeled: dict[str, Tensor], totals: dict[str, Tensor] | None = None) -> None:
        self.labeled = labeled
        self.cache: dict[str, Tensor] = dict(totals or {})

    def __getitem__(self, task: str) -> Tensor:
        if task not in self.cache:
            self.cache[task] = self.labeled[task].sum()
        return self.cache[task]

    def __iter__(self) -> Iterator[str]:
        return iter(self.labeled)

    def __len__(self) -> int:
        return len(self.labeled)


class TrainRecipe:
    """Trains one multi-modal, multi-task model as the config describes.

    Args:
        cfg: the composed config (``configs/train.yaml`` and its groups).
        output_dir: the run folder (checkpoints, TensorBoard, ``metrics.json``).
    """

    def __init__(self, cfg: DictConfig, output_dir: str | Path) -> None:
        self.cfg = cfg
        self.output_dir = Path(output_dir)
        self.ckpt_dir = self.output_dir / "checkpoints"

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        """Build every part in dependency order; fail before training on a bad config."""
        # Every check that needs no data (a sweep runs them for each job before the first starts).
        self.trainer, self.logger_cfg = validate(self.cfg)
        self.seed = check_seed(self.cfg.get("seed"))
        self.setup_device()
        self.setup_data()
        self.setup_model()
        self.setup_forward()
        self.setup_loader()
        self.setup_optimization()
        self.setup_progress()

    def setup_device(self) -> None:
        """Seeds, this process's device (under torchrun: its LOCAL_RANK's GPU) and torch's numerics."""
        t = self.trainer
        builders.seed_everything(self.seed)  # the same on every rank: all ranks draw the same random streams
        self.dist = distributed.info()
        self.device = builders.pick_device(t.device)
        if self.dist.distributed and self.device.type == "cuda":
            if self.device.index is not None:
                raise UserError(f"trainer.device is '{t.device}' under torchrun, which would put every rank on one "
                                "GPU; use trainer.device=auto or cuda (each rank takes the GPU of its LOCAL_RANK)")
            self.device = torch.device("cuda", torch.cuda.current_device())
        builders.configure_torch(t)

    def setup_data(self) -> None:
        """The data and its tasks; the splits go to the device once (a ``loader`` streams the training split)."""
        t, world = self.trainer, self.dist.world_size
        self.data = builders.build_data(self.cfg)
        train, val = len(self.data.splits["train"]), len(self.data.splits["val"])
        if self.dist.distributed and train < t.batch_size * world:
            raise UserError(f"the training split has {train} samples, fewer than one global batch "
                            f"(trainer.batch_size={t.batch_size} x {world} processes); lower trainer.batch_size "
                            "or use fewer processes")
        if self.dist.distributed and val < world:
            raise UserError(f"the 'val' split has {val} samples, fewer than the {world} processes that share its "
                            "evaluation; give it more samples or use fewer processes")
        # Each split is batched on the device by index; `loader=dataloader` streams the training split
        # from host memory through DataLoader workers instead; dataset.storage=stream|cache (files decoded
        # per sample, or a memory-mapped cache) streams every split, evaluation included, and never moves it.
        self.stream_all = self.data.storage != "memory"
        self.stream = self.cfg.get("loader") is not None or self.stream_all
        self.splits = {k: s if self.stream_all or (self.stream and k == "train") else s.to(self.device)
                       for k, s in self.data.splits.items()}
        self.tasks: dict[str, Task] = builders.build_tasks(self.data)

    def setup_model(self) -> None:
        """The model and the balancer on the device; the parameters the tasks share."""
        self.model = builders.build_model(self.cfg, self.data, self.tasks).to(self.device)
        if self.dist.distributed and self.trainer.sync_batchnorm:
            if self.device.type != "cuda":
                raise UserError(f"trainer.sync_batchnorm=true needs CUDA devices (torch's SyncBatchNorm is GPU-only), "
                                f"but this run trains on {self.device}; set trainer.sync_batchnorm=false")
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.balancer: Balancer = builders.build_balancer(self.cfg, list(self.tasks)).to(self.device)
        self.shared_params = self.model.shared_parameters()
        # Frozen encoders without train-time augmentation: their outputs from the cache (model.feature_cache).
        self.splits = feature_cache.apply(self.cfg, self.model, self.data, self.splits, self.device,
                                          self.trainer.precision, self.trainer.eval_batch_size)

    def setup_forward(self) -> None:
        """What the step calls: the model, compiled (``trainer.compile``) and wrapped for DDP (torchrun).

        The whole model compiles, unless something differentiates the losses with respect to the
        shared representation, which a compiled graph does not expose: then the encoders and fusion
        only (:class:`~mtmm_train.model.CompiledRepresentation`).
        """
        t, balancer = self.trainer, self.balancer
        mode = None if t.compile_mode == "default" else t.compile_mode  # reduce-overhead: CUDA graphs
        cosines = bool(self.logger_cfg.tensorboard and self.logger_cfg.grad_cosine_every_n_steps)
        compile_ = t.compile
        if compile_ and balancer.writes_grads_directly:
            log.warning("trainer.compile=true is ignored: %s in parameter space differentiates each task's loss "
                        "through the model with torchjd (vmap), which a compiled backward does not support; the "
                        "model runs eagerly (balancer.mode=representation compiles)", type(balancer).__name__)
            compile_ = False
        partly = compile_ and (balancer.uses_shared_gradient or cosines)
        if partly:
            log.info("trainer.compile: compiling the encoders and fusion only (%s differentiates the losses with "
                     "respect to the shared representation)",
                     type(balancer).__name__ if balancer.uses_shared_gradient else "the gradient-cosine log")
        module = CompiledRepresentation(self.model, mode) if partly else self.model
        # torchrun: DistributedDataParallel averages gradients during backward (see micro_step).
        self.ddp = DistributedDataParallel(module, device_ids=[self.device] if self.device.type == "cuda" else None,
                                           gradient_as_bucket_view=True) if self.dist.distributed else None
        forward = self.ddp or module
        self.forward_model = torch.compile(forward, mode=mode) if compile_ and not partly else forward

    def setup_loader(self) -> None:
        """The training batches, and how many optimizer steps an epoch and the run have.

        Under torchrun, ``trainer.batch_size`` is per process: each global batch is the one-process
        batch of ``batch_size * world_size`` samples, split between the ranks.
        """
        t = self.trainer
        # Keeping the last, smaller batch: BatchNorm cannot train on one sample, so a last batch that
        # would give a process fewer than 2 joins the batch before it.
        batch_norm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.model.modules())
        min_last = 2 if batch_norm else 1
        shard = {"rank": self.dist.rank, "world_size": self.dist.world_size, "global_batches": True,
                 "min_last": min_last}
        workers = int(OmegaConf.select(self.cfg, "dataset.num_workers", default=2) or 0)
        if self.cfg.get("loader") is not None:
            self.train_loader = build(self.cfg.loader, "loader", split=self.splits["train"], batch_size=t.batch_size,
                                      shuffle=True, drop_last=t.drop_last, seed=self.seed, device=self.device,
                                      train=True, **shard)
            workers = getattr(getattr(self.train_loader, "loader", None), "num_workers", workers)
        elif self.stream:  # dataset.storage=stream|cache without a loader config: the dataset's workers
            self.train_loader = StreamingLoader(self.splits["train"], t.batch_size, shuffle=True, drop_last=t.drop_last,
                                                seed=self.seed, device=self.device, num_workers=workers, train=True,
                                                **shard)
        else:
            self.train_loader = InMemoryLoader(self.splits["train"], t.batch_size, shuffle=True, drop_last=t.drop_last,
                                               seed=self.seed, train=True, **shard)
        # augment.device=cuda: the readers' train-time transforms run per batch on the training device.
        batch_augment = augment.batch_augment(self.cfg, self.data, self.seed)
        if batch_augment is not None:
            self.train_loader = augment.AugmentedLoader(self.train_loader, batch_augment)
        # Streamed evaluation splits get workers of their own, kept for the run (decoding is per batch).
        self.eval_loaders = {k: StreamingLoader(s, t.eval_batch_size, rank=self.dist.rank,
                                                world_size=self.dist.world_size, device=self.device,
                                                num_workers=workers, persistent_workers=k == "val", train=False)
                             for k, s in self.splits.items() if k != "train"} if self.stream_all else {}
        self.batches_per_epoch = len(self.train_loader)
        if t.limit_train_batches is not None:
            self.batches_per_epoch = min(self.batches_per_epoch, t.limit_train_batches)
        if self.batches_per_epoch < t.accumulate_grad_batches:  # else no epoch would take a step
            limit = f", trainer.limit_train_batches={t.limit_train_batches}" if t.limit_train_batches else ""
            raise UserError(f"an epoch has {self.batches_per_epoch} training batch(es) ({len(self.splits['train'])} "
                            f"samples, trainer.batch_size={t.batch_size}{limit}), fewer than the "
                            f"trainer.accumulate_grad_batches={t.accumulate_grad_batches} of one optimizer step; "
                            "lower trainer.accumulate_grad_batches or trainer.batch_size")
        # drop_last=false: the last step of an epoch may have fewer micro-batches (weighted as one batch).
        acc = t.accumulate_grad_batches
        batches = self.batches_per_epoch
        self.steps_per_epoch = max(1, batches // acc if t.drop_last else -(-batches // acc))
        self.epoch_batches = self.batches_per_epoch if not t.drop_last else self.steps_per_epoch * acc
        self.log_batches(min_last)
        if t.max_epochs is None:  # from the data: enough epochs for trainer.min_steps optimizer steps
            t.max_epochs = max(AUTO_EPOCHS, -(-(t.min_steps or 0) // self.steps_per_epoch))
            log.info("trainer.max_epochs=null: %d epochs of %d optimizer steps (%s)", t.max_epochs,
                     self.steps_per_epoch, f"at least trainer.min_steps={t.min_steps} steps"
                     if t.max_epochs > AUTO_EPOCHS else f"the default {AUTO_EPOCHS} epochs reach trainer.min_steps="
                     f"{t.min_steps}")
        self.total_steps = self.steps_per_epoch * t.max_epochs

    def log_batches(self, min_last: int) -> None:
        """Say what happens to the samples that do not fill a last batch (``trainer.drop_last``)."""
        t, world, n = self.trainer, self.dist.world_size, len(self.splits["train"])
        full, rest = divmod(n, t.batch_size * world)
        if not rest or not full:
            return
        if t.drop_last:
            log.info("trainer.drop_last=true: each epoch leaves out %d of the %d training samples (a random %d, "
                     "the last batch); set trainer.drop_last=false to keep them", rest, n, rest)
        elif rest // world < min_last:
            log.info("trainer.drop_last=false: the last batch of an epoch would give %s %d sample(s)%s, so it joins "
                     "the batch before", "BatchNorm" if min_last > 1 else "a process", rest // world,
                     " per process" if world > 1 else "")

    def setup_optimization(self) -> None:
        """Optimizer (the model's and the balancer's parameters), schedule, autocast and GradScaler."""
        cfg, t = self.cfg, self.trainer
        opt_factory = build(cfg.optimizer, "optimizer")
        # Per encoder: lr_scale, layer-wise decay, frozen parts left out; no decay on biases and norms.
        lr = cfg.optimizer.get("lr")
        groups = finetune.param_groups(self.model, [self.balancer], float(cfg.optimizer.get("weight_decay", 0.0)),
                                       None if lr is None else float(lr))
        fused = self.device.type == "cuda" and "fused" not in cfg.optimizer \
            and cfg.optimizer._target_ in ("torch.optim.AdamW", "torch.optim.Adam")
        self.optimizer = opt_factory(groups, **({"fused": True} if fused else {}))
        # Before the schedule scales the lrs (warm-up); written when training starts (train), so a run refused
        # later in setup leaves the folder as it was.
        self.param_group_rows = finetune.describe_groups(self.optimizer)
        log.info("optimizer parameter groups:\n%s", finetune.format_groups(self.param_group_rows))
        self.scheduler = build(cfg.scheduler, "scheduler")(self.optimizer, total_steps=self.total_steps)
        self.autocast = builders.autocast_for(t.precision, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=t.precision == "fp16")
        self.fp16_scale: float | None = None  # the scaler's scale after the last step (read once per step)

    def setup_progress(self) -> None:
        """What to monitor, where the run stands (fresh, or resumed), the training log and TensorBoard."""
        t = self.trainer
        self.metric_keys = evaluation.metric_keys(self.tasks, "val")
        if t.monitor not in self.metric_keys:
            raise UserError(f"trainer.monitor is '{t.monitor}', which this run does not compute; choose one of: "
                            f"{', '.join(self.metric_keys)}")
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.best: dict[str, Any] = {"value": None, "epoch": None, "step": None, "metrics": {}}
        self.bad_epochs = 0
        self.skipped_steps = 0  # steps skipped: fp16 overflow, or a non-finite loss with trainer.nonfinite=skip
        self.last_metrics: dict[str, float] = {}
        self.test_metrics: dict[str, float] = {}  # the best checkpoint on the test split, at the end
        self.log = TrainingLog(list(self.tasks), self.logger_cfg.log_every_n_steps, self.device)
        self.resumed_from = self.maybe_resume(t.resume)
        # Events up to the checkpoint's step were written before it; later ones (or all, when a run
        # killed before its first checkpoint starts again) are stale. Only rank 0 writes logs.
        writes = self.logger_cfg.tensorboard and self.dist.is_main
        self.tb = TensorBoard(event_dir(self.output_dir), enabled=writes,
                              purge_step=self.step + 1 if t.resume is not None else None)
        log.info("model: %s parameters; %d tasks, %d modalities, %d steps on %s%s",
                 f"{count_parameters(self.model):,}", len(self.tasks), len(self.data.modalities),
                 self.total_steps, self.device,
                 f" (rank {self.dist.rank} of {self.dist.world_size})" if self.dist.distributed else "")

    # ------------------------------------------------------------------ train
    def train(self) -> float:
        """Run the loop: epochs of steps, evaluation and checkpoints after each epoch.

        Returns:
            The best value of ``trainer.monitor`` (what a sweeper optimises).

        Raises:
            Preempted: on SIGTERM, SIGINT or SIGUSR2, after the current step and a checkpoint.
            NoFiniteMonitor: no epoch had a finite monitored value.
        """
        if self.dist.is_main:
            fileio.write_json(self.output_dir / "param_groups.json", self.param_group_rows)
        with StopOnSignals() as self.signals:
            return self._train()

    def _train(self) -> float:
        t, lg = self.trainer, self.logger_cfg
        samples, t_log = 0, time.perf_counter()
        # Where the time goes: seconds waiting for the next batch (the loader's next(), no device sync) against the
        # loop's seconds, per log interval (train/data_wait) and for the run (metrics.json: train_data_wait_frac).
        self.wait_s, self.loop_s, wait, t_wait = 0.0, 0.0, 0.0, time.perf_counter()
        # A run resumed after its early stop (killed before metrics.json) trains no further epoch.
        t_start, stopped_early = time.perf_counter(), self.batch_in_epoch == 0 and self.patience_exhausted()
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not (lg.progress_bar and self.dist.is_main),
                   dynamic_ncols=True, desc="train", leave=True)
        while self.epoch < t.max_epochs and not stopped_early:
            # unfreeze_at_epoch: frozen or not follows from the epoch alone (a resumed run too); torchrun
            # wraps the model anew, as DistributedDataParallel registers only the parameters that train.
            if finetune.on_epoch_start(self.model, self.epoch) and self.ddp is not None:
                self.setup_forward()
            self.model.train()
            bar.set_description(f"epoch {self.epoch + 1}/{t.max_epochs}")
            start = self.batch_in_epoch
            window: list[Batch] = []  # the micro-batches of one optimizer step
            t_epoch = t_wait = time.perf_counter()
            batches = self.train_loader.epoch(self.epoch, start=start)
            for i in itertools.count(start):
                if i >= self.epoch_batches:
                    break
                t0 = time.perf_counter()
                batch = next(batches, None)
                wait += time.perf_counter() - t0
                if batch is None:
                    break
                window.append(batch)
                if len(window) < t.accumulate_grad_batches and i < self.epoch_batches - 1:
                    continue  # drop_last=false: the epoch's last batches make a shorter step
                self.train_step(window)
                self.batch_in_epoch = i + 1
                samples += sum(b.size for b in window) * self.dist.world_size
                window = []
                bar.update(1)
                if self.step % lg.log_every_n_steps == 0 or self.step == self.total_steps:
                    now = time.perf_counter()
                    self.log_train(samples / max(now - t_log, 1e-9), bar, data_wait=wait / max(now - t_wait, 1e-9))
                    self.wait_s += wait
                    samples, t_log, wait, t_wait = 0, time.perf_counter(), 0.0, time.perf_counter()
                if t.checkpoint_every_n_steps and self.step % t.checkpoint_every_n_steps == 0:
                    self.save("last.pt")
                self.stop_if_signalled(bar)
            if hasattr(batches, "close"):  # an epoch cut short: a loader's decode-ahead thread stops before evaluation
                batches.close()
            self.wait_s, wait = self.wait_s + wait, 0.0
            self.loop_s += time.perf_counter() - t_epoch
            self.epoch += 1
            self.batch_in_epoch = 0
            stopped_early = self.end_of_epoch()
            self.stop_if_signalled(bar)
        bar.close()
        if self.best["value"] is None:  # no epoch had a finite monitored value: nothing is "best"
            self.tb.close()
            lr = self.cfg.optimizer.get("lr", "?")
            raise NoFiniteMonitor(f"trainer.monitor {t.monitor} was NaN or infinite in all {self.epoch} epoch(s) "
                                  f"(last: {self.last_metrics.get(t.monitor)}), so no best.pt or metrics.json was "
                                  f"written; lower optimizer.lr (it is {lr}), set trainer.gradient_clip_norm, or use "
                                  "trainer.nonfinite=stop to stop at the first bad step")
        self.test_metrics = self.test_best() if t.test else {}
        self.finish(time.perf_counter() - t_start, stopped_early)
        return float(self.best["value"])

    def test_best(self) -> dict[str, float]:
        """The best checkpoint's losses and metrics on the test split (``trainer.test``); {} without one.

        The model takes the weights of ``best.pt`` (unless the last epoch was the best) and keeps them.
        """
        if "test" not in self.splits:
            log.info("trainer.test: the data has no test split; no test results")
            return {}
        if self.best["epoch"] != self.epoch:
            distributed.barrier()  # rank 0 wrote best.pt
            state = checkpoint.load(self.ckpt_dir / "best.pt", trusted_config=OmegaConf.to_container(self.cfg,
                                                                                                     resolve=True))
            self.model.load_state_dict(state["model"])
        # In TensorBoard as a "test" run with one point on each validation card (TensorBoard.test_points): one-point
        # test/... cards would come before the training curves (TensorBoard sorts its groups by name), and as
        # HParams columns they would push out the settings it shows by default.
        metrics = self.evaluate("test")
        self.tb.test_points(metrics, int(self.best["step"] or self.step))
        return metrics

    def train_step(self, window: list[Batch]) -> None:
        """One optimizer step over the micro-batches in ``window``: forward and backward, the update, and
        the step's losses and weights into the training log (on the device: no host read)."""
        out = self.accumulate(window)
        skip = self.trainer.nonfinite != "warn" and not self.losses_finite(out.losses)
        self.optimizer_step(skip=skip)
        self.log.add(self.step, out.losses, out.weights, out.gramian)

    def accumulate(self, window: list[Batch]) -> StepOutput:
        """Forward and backward of the micro-batches of one optimizer step (``accumulate_grad_batches``
        of them, under torchrun on every process).

        Each task's gradient is that of the mean loss over all of the step's labelled samples,
        exactly as in one process with one batch of them all: a micro-batch's mean loss is
        weighted by its share of the labelled samples (with sparse labels, the micro-batches
        and processes hold different numbers). One all-reduce of the ``(micro-batches, T)``
        counts per step under torchrun; nothing at all with one micro-batch in one process.

        Returns:
            The step's losses (the sum over its micro-batches, each carrying ``1 / acc`` and its
            share), its weights (their mean) and, on a step that logs them, the Gramian of the task
            gradients of its last micro-batch.
        """
        acc, world = len(window), self.dist.world_size
        every = self.logger_cfg.grad_cosine_every_n_steps
        gramian = bool(self.logger_cfg.tensorboard and every and (self.step + 1) % every == 0)
        if acc == 1 and world == 1:
            return self.micro_step(window[0], gramian=gramian)  # also a shorter last step of one batch
        local = torch.stack([torch.stack([b.labeled[t].sum() for t in self.tasks]) for b in window]).float()
        counts = distributed.total(local)  # (acc, T) over the processes; asynchronous on the GPU
        shares = local * (acc * world) / counts.sum(0).clamp_min(1)
        outs = [self.micro_step(batch, sync=k == acc - 1, share=shares[k], counts=counts[k], acc=acc,
                                gramian=gramian and k == acc - 1) for k, batch in enumerate(window)]
        return StepOutput(torch.stack([o.losses for o in outs]).sum(0),
                          torch.stack([o.weights for o in outs]).mean(0), outs[-1].gramian)

    def micro_step(self, batch: Batch, sync: bool = True, share: Tensor | None = None,
                   counts: Tensor | None = None, gramian: bool = False, acc: int = 1) -> StepOutput:
        """Forward and backward of one (micro-)batch (:func:`training_step`), under torchrun with the
        gradient averaging DDP's hooks do not do.

        Args:
            sync: the last micro-batch before an optimizer step: under torchrun, gradients are
                averaged across processes during its backward (DistributedDataParallel's hooks),
                or after it when the balancer writes ``.grad`` itself.
            share, counts: the micro-batch's loss factors and labelled counts (:meth:`accumulate`).
            gramian: also compute the Gramian of the task gradients (the gradient-cosine log).
            acc: the step's micro-batches (``accumulate_grad_batches``, fewer in an epoch's shorter
                last step): each loss carries ``1 / acc``.
        """
        direct = self.balancer.writes_grads_directly
        no_sync = self.ddp.no_sync() if self.ddp is not None and (direct or not sync) else contextlib.nullcontext()
        with no_sync:
            out = training_step(self.forward_model, self.tasks, self.balancer, batch, self.autocast, self.scaler,
                                self.shared_params, self.step, micro_factor=1.0 / acc,
                                gramian=gramian, share=share, counts=counts, data_parallel=self.dist.distributed)
        if self.dist.distributed and sync:
            # Gradients DDP's hooks do not see: the balancer's own parameters, and all of them
            # when the balancer writes .grad itself (parameter-space aggregation).
            distributed.average_gradients(list(self.balancer.parameters()))
            if direct:
                distributed.average_gradients(list(self.model.parameters()))
        return out

    def losses_finite(self, losses: Tensor) -> bool:
        """``trainer.nonfinite=skip|stop``: whether the step's losses are finite (one host read per step);
        ``stop`` raises on a NaN/Inf, ``skip`` warns."""
        finite = distributed.mean(torch.isfinite(losses).float()) == 1  # torchrun: the ranks agree
        bad = [t for t, ok in zip(self.tasks, finite.tolist(), strict=True) if not ok]
        if not bad:
            return True
        where = f"non-finite loss for task(s) {', '.join(bad)} at step {self.step + 1}"
        if self.trainer.nonfinite == "stop":
            raise UserError(f"{where} (trainer.nonfinite=stop); check the data and targets of those tasks, lower "
                            "optimizer.lr, or use trainer.nonfinite=skip")
        log.warning("%s: update skipped (trainer.nonfinite=skip)", where)
        return False

    def optimizer_step(self, skip: bool = False) -> None:
        """Unscale, clip, step, update the scaler and the schedule, clear gradients.

        Args:
            skip: drop this step's gradients instead (``trainer.nonfinite=skip`` on a non-finite loss).
        """
        if skip:
            self.skipped_steps += 1
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            return
        if self.trainer.gradient_clip_norm is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.trainer.gradient_clip_norm)
        if self.scaler.is_enabled():
            # fp16: the scaler skips steps whose gradients overflowed (and lowers its scale); so does
            # the schedule. One host read per step: the scale before this step is the one read after
            # the last (a fused optimizer also spares the scaler its own read of the overflow flag).
            before = self.scaler.get_scale() if self.fp16_scale is None else self.fp16_scale
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.fp16_scale = self.scaler.get_scale()
            if self.fp16_scale < before:
                self.skipped_steps += 1
            else:
                self.scheduler.step()
        else:
            self.scaler.step(self.optimizer)
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1

    def log_train(self, samples_per_s: float, bar: tqdm, data_wait: float | None = None) -> None:
        """Write the interval's mean losses, each of its steps' weights, the gates' weights and the
        task gradients' cosine similarities to TensorBoard and the progress bar (the loop's one host
        read every ``logger.log_every_n_steps`` steps); ``data_wait``: the interval's fraction of its
        wall time spent waiting for the next batch (``train/data_wait``)."""
        losses, weights = self.log.flush()
        total = sum(weights[t] * losses[t] for t in losses)
        self.write_step_weights()
        scalars = {"train/loss/total": total, **{f"train/loss/{t}": v for t, v in losses.items()},
                   "train/lr": self.optimizer.param_groups[0]["lr"], "train/samples_per_s": samples_per_s}
        if data_wait is not None:
            scalars["train/data_wait"] = data_wait
        gates = self.model.mtl.gate_weights()
        if gates:
            scalars.update(zip([f"train/gate/{k}" for k in gates], torch.stack(list(gates.values())).tolist(),
                               strict=True))
        gramian = self.log.take_gramian()
        if gramian is not None:
            scalars.update(cosine_scalars(gramian, list(self.tasks)))
        if self.scaler.is_enabled() or self.trainer.nonfinite == "skip":
            scalars["train/skipped_steps"] = self.skipped_steps
        self.tb.scalars(scalars, self.step)
        bar.set_postfix({"loss": f"{total:.3f}", **{t: f"{v:.3f}" for t, v in losses.items()}}, refresh=False)
        bad = [t for t, v in losses.items() if not math.isfinite(v)]
        if bad:
            log.warning("non-finite training loss for task(s) %s around step %d", ", ".join(bad), self.step)

    def write_step_weights(self) -> None:
        """Write the buffered per-step task weights to TensorBoard (one host read).

        At each log, and before each checkpoint: a run resumed from the checkpoint then never
        writes a step at or before it again (TensorBoard's ``purge_step`` is the step after it).
        """
        for step, weights in self.log.step_weight_rows(self.step):
            self.tb.scalars({f"train/weight/{t}": v for t, v in weights.items()}, step)

    def stop_if_signalled(self, bar: tqdm) -> None:
        """After a step: on a pending signal, checkpoint and raise :class:`Preempted`.

        Under torchrun the ranks agree first (a signal may reach them a step apart), and every
        rank waits until rank 0 has written ``last.pt``. A handler that was there before for the
        signal (submitit's, which requeues the job on SIGUSR2) is called after ``last.pt`` is written.
        """
        if not distributed.any_true(self.signals.requested):
            return
        self.save("last.pt")
        distributed.barrier()
        bar.close()
        self.tb.close()
        handler = self.signals.previous()
        if handler is not None:
            handler(self.signals.signum, None)  # e.g. submitit: requeue the job (it continues from last.pt), exit
        raise Preempted(f"stopped by {self.signals.name()} at step {self.step} (epoch {self.epoch + 1}); wrote "
                        f"{self.ckpt_dir / 'last.pt'}; continue with trainer.resume=auto in the same run folder")

    def end_of_epoch(self) -> bool:
        """Evaluate, track the best monitored value, write checkpoints; True to stop early."""
        t = self.trainer
        metrics = self.evaluate("val")
        self.last_metrics = metrics
        self.tb.scalars(metrics, self.step)
        value = metrics[t.monitor]
        # NaN or Inf never becomes the best (NaN compares false, so a first NaN epoch would stay best).
        better = math.isfinite(value) and (self.best["value"] is None or (
            value < self.best["value"] if t.monitor_mode == "min" else value > self.best["value"]))
        if better:
            self.best = {"value": value, "epoch": self.epoch, "step": self.step, "metrics": metrics}
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        if self.best["value"] is None:
            log.warning("epoch %d: %s = %s; no epoch has a finite value yet", self.epoch, t.monitor, value)
        else:
            log.info("epoch %d: %s = %.4f (best %.4f at epoch %d)", self.epoch, t.monitor, value,
                     self.best["value"], self.best["epoch"])
        # best.pt first: a crash between the two leaves last.pt one epoch behind, and the resumed
        # run evaluates that epoch again and rewrites best.pt the same; the other order could leave
        # last.pt naming a best epoch whose weights never reached best.pt.
        if better:
            self.save("best.pt")
        self.save("last.pt")
        if self.patience_exhausted():
            log.info("early stopping: %s did not improve for %d epochs", t.monitor, t.early_stopping_patience)
            return True
        return False

    def patience_exhausted(self) -> bool:
        """``trainer.early_stopping_patience`` epochs in a row without improvement."""
        patience = self.trainer.early_stopping_patience
        return patience is not None and self.bad_epochs >= patience

    # ------------------------------------------------------------------ evaluate
    def evaluate(self, split: str = "val") -> dict[str, float]:
        """Per-task losses and metrics over a whole split (:func:`mtmm_train.evaluation.evaluate`; the
        eager model: a compiled evaluation would compile a second graph).

        Returns:
            ``{"<split>/loss/total", "<split>/loss/<task>", "<split>/<task>/<metric>": float}``.
        """
        return evaluation.evaluate(self.model, self.tasks, self.splits[split], self.trainer.eval_batch_size,
                                   prefix=split, autocast=self.autocast, loader=self.eval_loaders.get(split))

    # ------------------------------------------------------------------ checkpoints
    def state(self, log_state: dict[str, Any]) -> dict[str, Any]:
        """Everything needed to resume, as plain data and tensors (loads with weights_only=True).

        Args:
            log_state: the training log's state (:meth:`TrainingLog.state_dict`, taken on every rank).
        """
        return {
            "model": self.model.state_dict(),
            "balancer": self.balancer.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": checkpoint.rng_state(self.device),
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "best": self.best,
            "bad_epochs": self.bad_epochs,
            "skipped_steps": self.skipped_steps,
            "metrics": self.last_metrics,
            # The training log's sums since its last write: a resumed run logs the same values.
            "log": log_state,
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            "world_size": self.dist.world_size,
            # The data's schema (classes, statistics...): a resume on other data is refused.
            "data_fingerprint": checkpoint.data_fingerprint(self.data),
            # Specs and the readers' state: mtmm-predict rebuilds the model and reads new rows from these alone.
            "data_schema": checkpoint.data_schema(self.data),
        }

    def save(self, name: str) -> None:
        """Write ``checkpoints/<name>`` atomically (rank 0 only: the ranks hold the same state).

        TensorBoard's events are flushed first, so that a crash after the checkpoint loses none of
        the steps the checkpoint covers (a resumed run drops the later ones: ``purge_step``).
        """
        log_state = self.log.state_dict()  # every rank takes part; each then resumes from the mean
        self.write_step_weights()
        if self.dist.is_main:
            self.tb.flush()
            checkpoint.save(self.state(log_state), self.ckpt_dir / name)

    def maybe_resume(self, resume: str | None) -> Path | None:
        """Load ``trainer.resume`` (``auto``: this run's ``last.pt`` if it exists, or a path)."""
        if resume is None:
            return None
        if self.dist.is_main:
            checkpoint.remove_temporaries(self.ckpt_dir)  # left by a run killed while writing
        path = self.ckpt_dir / "last.pt" if resume == "auto" else Path(resume)
        if resume == "auto" and not path.exists():
            log.info("trainer.resume=auto: no checkpoint in %s, starting fresh", self.ckpt_dir)
            return None
        current = OmegaConf.to_container(self.cfg, resolve=True)
        state = checkpoint.load(path, trusted_config=current)  # its stored config checked: nothing foreign
        check_same_components(state["config"], current, path)
        checkpoint.check_fingerprint(state.get("data_fingerprint"), checkpoint.data_fingerprint(self.data),
                                     f"checkpoint '{path}'", checkpoint.RESUME_DATA_FIX)
        if state.get("world_size", 1) != self.dist.world_size and int(state["batch_in_epoch"]):
            log.warning("%s was written by %d process(es), this run has %d: the global batch differs, so the "
                        "rest of epoch %d sees other batches than an uninterrupted run would", path,
                        state.get("world_size", 1), self.dist.world_size, int(state["epoch"]) + 1)
        try:  # any of these refuses a checkpoint of another config (model, balancer, optimizer, precision)
            self.model.load_state_dict(state["model"])
            self.balancer.load_state_dict(state["balancer"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
        except (RuntimeError, ValueError, KeyError) as e:
            first = " ".join(str(e).split())[:300]
            raise UserError(f"checkpoint '{path}' was written for another model config ({first}); resume it "
                            "with the config it was trained with, or start a new run") from None
        checkpoint.set_rng_state(state["rng"], self.device)
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        self.best, self.bad_epochs = state["best"], int(state["bad_epochs"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.last_metrics = state.get("metrics", {})
        if state.get("log") is not None:
            self.log.load_state_dict(state["log"])
        # Epochs count from 1 for people, as on the progress bar: the epoch the run continues in.
        log.info("resumed from %s at step %d (epoch %d/%d, batch %d of it)", path, self.step,
                 min(self.epoch + 1, self.trainer.max_epochs), self.trainer.max_epochs, self.batch_in_epoch)
        return path

    # ------------------------------------------------------------------ end of run
    def finish(self, seconds: float, stopped_early: bool) -> None:
        """Write ``metrics.json``, hparams to TensorBoard, and print the results table."""
        result = {
            "monitor": self.trainer.monitor,
            "monitor_mode": self.trainer.monitor_mode,
            "best": self.best,
            "final": self.last_metrics,
            "epochs": self.epoch,
            "steps": self.step,
            "stopped_early": stopped_early,
            "skipped_steps": self.skipped_steps,
            "train_seconds": seconds,
            # The share of the training loop's time (evaluation left out) spent waiting for batches: near 1, the
            # run is input-bound (docs/files.md, "Where the time goes").
            "train_data_wait_frac": getattr(self, "wait_s", 0.0) / max(getattr(self, "loop_s", 0.0), 1e-9),
            "parameters": count_parameters(self.model),
            "world_size": self.dist.world_size,
            # The best checkpoint on the test split (trainer.test), keyed test/loss/<task>, test/<task>/<metric>.
            "test": self.test_metrics,
        }
        if not self.dist.is_main:
            return
        fileio.write_json(self.output_dir / "metrics.json", result)  # atomic: never a torn file
        # The HParams session: the settings, and the best epoch's metrics at its step.
        self.tb.hparams(hparams_of(self.cfg, self.trainer, list(self.tasks), list(self.data.modalities)),
                        self.best["metrics"], step=int(self.best["step"] or 0))
        self.tb.close()
        table = format_results(self.best["metrics"], list(self.tasks), title=(
            f"best epoch {self.best['epoch']} of {self.epoch} ({self.trainer.monitor} = {self.best['value']:.4f})"))
        test = self.test_metrics
        if test:
            table += "\n" + format_results(test, list(self.tasks), title="test split, best checkpoint")
        log.info("results (validation%s)\n%s\nrun folder: %s", ", test" if test else "", table, self.output_dir)


# ---------------------------------------------------------------------- helpers
def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def component_name(node: Any) -> str:
    """A component's name for people: the config name of a built-in one (its module's name, e.g. ``upgrad``),
    with its ``model_name`` when it has one (``timm(resnet18)``); else the class or function (``AdamW``)."""
    target = str(node.get("_target_", "")) if isinstance(node, DictConfig) else ""
    parts = target.split(".")
    # mtmm_train.<family>.<name>.<Class>: one module per config (e.g. mtmm_train.balancers.upgrad.UPGrad).
    name = parts[-2] if target.startswith("mtmm_train.") and len(parts) > 3 else parts[-1]
    model_name = node.get("model_name") if isinstance(node, DictConfig) else None
    return f"{name}({model_name})" if isinstance(model_name, str) else name


def hparams_of(cfg: DictConfig, t: TrainerConfig, tasks: list[str] | None = None,
               modalities: list[str] | None = None) -> dict[str, Any]:
    """A flat dict of the run's main choices, for TensorBoard's HParams tab: the dataset (its config name, and
    its manifest when it has one), the tasks and modalities trained, the encoder of each modality, the fusion,
    the multi-task architecture, the balancer and the main trainer settings."""
    from hydra.core.hydra_config import HydraConfig

    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    h: dict[str, Any] = {"dataset": str(choices.get("dataset") or component_name(cfg.dataset))}
    if cfg.dataset.get("manifest") is not None:
        h["dataset.manifest"] = str(cfg.dataset.manifest)
    h["tasks"] = ",".join(tasks if tasks is not None else cfg.get("tasks") or [])
    h["modalities"] = ",".join(modalities if modalities is not None else cfg.get("modalities") or [])
    for m in modalities if modalities is not None else cfg.model.encoders:
        h[f"encoder/{m}"] = component_name(cfg.model.encoders.get(m))
    for key in ("fusion", "mtl", "balancer", "optimizer", "scheduler"):
        h[key] = component_name(cfg[key])
    h.update({"seed": cfg.seed, "batch_size": t.batch_size, "precision": t.precision, "max_epochs": t.max_epochs,
              "lr": float(cfg.optimizer.get("lr", float("nan")))})
    return h


def check_same_components(stored: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    """Refuse to resume with other components (``_target_``) than the checkpoint was trained with.

    Loading state dicts catches most changes of the model, but not all: ``fusion=sum`` and
    ``fusion=max`` hold no parameters, and an SGD optimizer would take AdamW's state silently.
    Settings (learning rate, epochs, batch size) may change on resume; components may not.
    """
    def targets(node: Any, key: str = "") -> dict[str, str]:
        if not isinstance(node, dict):
            return {}
        out = {key or "(root)": str(node["_target_"])} if "_target_" in node else {}
        for k, v in node.items():
            out.update(targets(v, f"{key}.{k}" if key else str(k)))
        return out

    before, now = targets(stored), targets(current)
    for key in sorted(before.keys() & now.keys()):
        if before[key] != now[key]:
            raise UserError(f"checkpoint '{path}' was trained with {key}._target_={before[key]}, but this run has "
                            f"{now[key]}; resume with the components it was trained with (settings such as "
                            "optimizer.lr may change), or start a new run")
