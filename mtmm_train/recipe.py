"""The training recipe: ``setup()`` builds everything, ``train()`` loops, ``evaluate()`` measures.

Read top to bottom. The step itself (forward, losses, balancer) is :func:`training_step`;
the optimizer update is :meth:`TrainRecipe.optimizer_step`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from mtmm_train import checkpoint, distributed
from mtmm_train.balancers.base import BalanceContext, Balancer, cosine_scalars, task_gramian
from mtmm_train.batch import Batch
from mtmm_train.builders import build
from mtmm_train.config import LoggerConfig, TrainerConfig, check_names, check_trainer, typed
from mtmm_train.data import InMemoryLoader, MultiModalData
from mtmm_train.errors import UserError
from mtmm_train.model import CompiledRepresentation, MultiModalModel
from mtmm_train.optim import param_groups
from mtmm_train.tasks import TASK_TYPES, Task
from mtmm_train.tensorboard import TensorBoard, format_results

log = logging.getLogger("mtmm_train")

AMP_DTYPES = {"32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def training_step(model: nn.Module, tasks: dict[str, Task], balancer: Balancer, batch: Batch,
                  autocast: contextlib.AbstractContextManager, scaler: torch.amp.GradScaler,
                  shared_params: list[nn.Parameter], step: int, loss_scale: float,
                  gramian: bool = False, share: Tensor | None = None, counts: Tensor | None = None,
                  data_parallel: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
    """Forward, per-task losses, and the balancer's backward for one (micro-)batch.

    Args:
        loss_scale: a factor for every loss (``1 / accumulate_grad_batches``).
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
        ``(losses, weights, gramian)``: detached ``(T,)`` tensors in task order (the losses
        times their share, without ``loss_scale``), still on the device, and the ``(T, T)``
        Gramian or None.
    """
    with autocast:
        preds, shared = model(batch.inputs, batch.present)
        losses = {t: task.loss(preds[t], batch.targets[t], batch.labeled[t]) for t, task in tasks.items()}
        if loss_scale != 1.0:
            losses = {t: loss * loss_scale for t, loss in losses.items()}
        amp = torch.is_autocast_enabled(shared.device.type)
    if share is not None:
        losses = {t: losses[t] * share[i] for i, t in enumerate(tasks)}
    labeled = LabeledCounts(batch.labeled, None if counts is None else dict(zip(tasks, counts.unbind(), strict=True)))
    if data_parallel:
        ctx = BalanceContext(shared, shared_params, labeled, scaler, step, amp, reduce=distributed.mean,
                             world_size=distributed.info().world_size)
    else:
        ctx = BalanceContext(shared, shared_params, labeled, scaler, step, amp)
    grams = task_gramian([losses[t] for t in tasks], ctx) if gramian else None  # before backward frees the graph
    weights = balancer.backward(losses, ctx)
    stacked = torch.stack([losses[t] for t in tasks]).detach()
    return (stacked if loss_scale == 1.0 else stacked / loss_scale,
            torch.stack([weights[t] for t in tasks]).detach().float(), grams)


class Preempted(Exception):
    """Training stopped on SIGTERM or SIGINT after writing ``last.pt``; ``trainer.resume=auto`` continues."""


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
        """Build every component in dependency order; fail before training on bad config."""
        cfg = self.cfg
        self.trainer: TrainerConfig = typed(cfg, "trainer", TrainerConfig)
        self.logger_cfg: LoggerConfig = typed(cfg, "logger", LoggerConfig)
        check_trainer(self.trainer)
        t = self.trainer

        self.seed = _int(cfg, "seed")
        seed_everything(self.seed)  # the same on every rank: all ranks draw the same random streams
        self.dist = distributed.info()
        self.device = pick_device(t.device)
        if self.dist.distributed and self.device.type == "cuda":
            if self.device.index is not None:
                raise UserError(f"trainer.device is '{t.device}' under torchrun, which would put every rank on one "
                                "GPU; use trainer.device=auto or cuda (each rank takes the GPU of its LOCAL_RANK)")
            self.device = torch.device("cuda", torch.cuda.current_device())  # torchrun: LOCAL_RANK's GPU
        # "high" lets float32 matmuls and convolutions use TF32 on GPUs that have it.
        torch.set_float32_matmul_precision(t.float32_matmul_precision)
        torch.backends.cudnn.allow_tf32 = t.float32_matmul_precision != "highest"
        # Batches keep their shapes (drop_last), so timing cuDNN's algorithms once per shape pays.
        torch.backends.cudnn.benchmark = t.cudnn_benchmark and not t.deterministic
        if t.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)

        # Data: the dataset decides modalities and tasks; the config must match them.
        data: MultiModalData = build(cfg.dataset, "dataset")
        modalities = check_names("modality", "model.encoders", list(cfg.model.encoders), list(data.modalities),
                                 _names(cfg, "modalities"), "modalities")
        task_names = check_names("task", "model.heads", list(cfg.model.heads), list(data.tasks),
                                 _names(cfg, "tasks"), "tasks")
        self.data = data.select(modalities, task_names)
        for name in ("train", "val"):
            if name not in self.data.splits or len(self.data.splits[name]) == 0:
                raise UserError(f"dataset has an empty '{name}' split; give it samples")
        world = self.dist.world_size
        if self.dist.distributed and len(self.data.splits["train"]) < t.batch_size * world:
            raise UserError(f"the training split has {len(self.data.splits['train'])} samples, fewer than one global "
                            f"batch (trainer.batch_size={t.batch_size} x {world} processes); lower trainer.batch_size "
                            "or use fewer processes")
        if self.dist.distributed and len(self.data.splits["val"]) < world:
            raise UserError(f"the 'val' split has {len(self.data.splits['val'])} samples, fewer than the {world} "
                            "processes that share its evaluation; give it more samples or use fewer processes")
        # Each split goes to the device once and is batched there by index; a `loader` config
        # (+loader=dataloader) instead streams the training split from host memory.
        stream = cfg.get("loader") is not None
        self.splits = {k: s if stream and k == "train" else s.to(self.device) for k, s in self.data.splits.items()}
        self.tasks: dict[str, Task] = {t_: TASK_TYPES[s.kind](s) for t_, s in self.data.tasks.items()}

        # Model: encoders -> fusion -> MTL architecture -> heads, sizes flowing forward.
        encoders = {m: build(cfg.model.encoders[m], f"model.encoders.{m}", modality=spec)
                    for m, spec in self.data.modalities.items()}
        fusion = build(cfg.fusion, "fusion", in_dims={m: e.out_dim for m, e in encoders.items()})
        mtl = build(cfg.mtl, "mtl", in_dim=fusion.out_dim, tasks=task_names)
        heads = {t_: build(cfg.model.heads[t_], f"model.heads.{t_}", in_dim=mtl.out_dim, out_dim=task.out_dim)
                 for t_, task in self.tasks.items()}
        extra = {k: cfg.model[k] for k in ("missing", "modality_dropout") if k in cfg.model}
        self.model = MultiModalModel(encoders, fusion, mtl, heads, **extra).to(self.device)
        if self.dist.distributed and t.sync_batchnorm:
            if self.device.type != "cuda":
                raise UserError(f"trainer.sync_batchnorm=true needs CUDA devices (torch's SyncBatchNorm is GPU-only), "
                                f"but this run trains on {self.device}; set trainer.sync_batchnorm=false")
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.balancer: Balancer = build(cfg.balancer, "balancer", tasks=task_names).to(self.device)
        self.shared_params = self.model.shared_parameters()
        # trainer.compile: the whole model, unless something differentiates the losses with respect
        # to the shared representation, which a compiled graph does not expose (CompiledRepresentation).
        mode = None if t.compile_mode == "default" else t.compile_mode  # reduce-overhead: CUDA graphs
        cosines = bool(self.logger_cfg.tensorboard and self.logger_cfg.grad_cosine_every_n_steps)
        compile_ = t.compile
        if compile_ and self.balancer.writes_grads_directly:
            log.warning("trainer.compile=true is ignored: %s in parameter space differentiates each task's loss "
                        "through the model with torchjd (vmap), which a compiled backward does not support; the "
                        "model runs eagerly (balancer.mode=representation compiles)", type(self.balancer).__name__)
            compile_ = False
        partly = compile_ and (self.balancer.uses_shared_gradient or cosines)
        if partly:
            log.info("trainer.compile: compiling the encoders and fusion only (%s differentiates the losses with "
                     "respect to the shared representation)",
                     type(self.balancer).__name__ if self.balancer.uses_shared_gradient else "the gradient-cosine log")
        module = CompiledRepresentation(self.model, mode) if partly else self.model
        # torchrun: DistributedDataParallel averages gradients during backward (see micro_step).
        self.ddp = DistributedDataParallel(module, device_ids=[self.device] if self.device.type == "cuda" else None,
                                           gradient_as_bucket_view=True) if self.dist.distributed else None
        forward = self.ddp or module
        self.forward_model = torch.compile(forward, mode=mode) if compile_ and not partly else forward

        # Optimization. Under torchrun, trainer.batch_size is per process; each global batch is
        # the one-process batch of batch_size * world_size samples, split between the ranks.
        shard = {"rank": self.dist.rank, "world_size": self.dist.world_size}
        if stream:
            self.train_loader = build(cfg.loader, "loader", split=self.splits["train"], batch_size=t.batch_size,
                                      shuffle=True, drop_last=True, seed=self.seed, device=self.device, **shard)
        else:
            self.train_loader = InMemoryLoader(self.splits["train"], t.batch_size, shuffle=True, drop_last=True,
                                               seed=self.seed, **shard)
        self.batches_per_epoch = len(self.train_loader)
        if t.limit_train_batches is not None:
            self.batches_per_epoch = min(self.batches_per_epoch, t.limit_train_batches)
        if self.batches_per_epoch < t.accumulate_grad_batches:  # else no epoch would take a step
            limit = f", trainer.limit_train_batches={t.limit_train_batches}" if t.limit_train_batches else ""
            raise UserError(f"an epoch has {self.batches_per_epoch} training batch(es) ({len(self.splits['train'])} "
                            f"samples, trainer.batch_size={t.batch_size}{limit}), fewer than the "
                            f"trainer.accumulate_grad_batches={t.accumulate_grad_batches} of one optimizer step; "
                            "lower trainer.accumulate_grad_batches or trainer.batch_size")
        self.steps_per_epoch = max(1, self.batches_per_epoch // t.accumulate_grad_batches)
        self.total_steps = self.steps_per_epoch * t.max_epochs
        opt_factory = build(cfg.optimizer, "optimizer")
        weight_decay = float(cfg.optimizer.get("weight_decay", 0.0))
        groups = param_groups([self.model, self.balancer], weight_decay)
        extra_opt = {"fused": True} if self.device.type == "cuda" and "fused" not in cfg.optimizer \
            and cfg.optimizer._target_ in ("torch.optim.AdamW", "torch.optim.Adam") else {}
        self.optimizer = opt_factory(groups, **extra_opt)
        self.scheduler = build(cfg.scheduler, "scheduler")(self.optimizer, total_steps=self.total_steps)
        amp_dtype = AMP_DTYPES[t.precision]
        self.autocast = torch.autocast(self.device.type, dtype=amp_dtype, enabled=amp_dtype is not None)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=t.precision == "fp16")
        self.fp16_scale: float | None = None  # the scaler's scale after the last step (read once per step)

        # What to monitor, and where the run stands.
        self.metric_keys = self.val_metric_keys()
        if t.monitor not in self.metric_keys:
            raise UserError(f"trainer.monitor is '{t.monitor}', which this run does not compute; choose one of: "
                            f"{', '.join(self.metric_keys)}")
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.best: dict[str, Any] = {"value": None, "epoch": None, "step": None, "metrics": {}}
        self.bad_epochs = 0
        self.skipped_steps = 0  # steps skipped: fp16 overflow, or a non-finite loss with trainer.nonfinite=skip
        self.skip_update = False
        self.sums = torch.zeros(2, len(self.tasks), device=self.device)
        self.log_count = 0  # optimizer steps summed in self.sums
        self.weights_pending = 0  # optimizer steps whose weights wait in self.step_weights
        # Each step's weights, row `step % N`, written to TensorBoard at the next log.
        self.step_weights = torch.zeros(self.logger_cfg.log_every_n_steps, len(self.tasks), device=self.device)
        self.gramian: Tensor | None = None  # of the task gradients at the last logged step
        self.last_metrics: dict[str, float] = {}
        self.resumed_from = self.maybe_resume(t.resume)
        # Events up to the checkpoint's step were written before it; later ones (or all, when a run
        # killed before its first checkpoint starts again) are stale. Only rank 0 writes logs.
        writes = self.logger_cfg.tensorboard and self.dist.is_main
        self.tb = TensorBoard(self.output_dir / "tensorboard", enabled=writes,
                              purge_step=self.step + 1 if t.resume is not None else None)
        log.info("model: %s parameters; %d tasks, %d modalities, %d steps on %s%s",
                 f"{count_parameters(self.model):,}", len(self.tasks), len(self.data.modalities),
                 self.total_steps, self.device,
                 f" (rank {self.dist.rank} of {self.dist.world_size})" if self.dist.distributed else "")

    def val_metric_keys(self) -> list[str]:
        """Every key :meth:`evaluate` returns, in a stable order."""
        keys = ["val/loss/total"] + [f"val/loss/{t}" for t in self.tasks]
        for t, task in self.tasks.items():
            keys += [f"val/{t}/{m}" for m in task.metrics().keys()]
        return keys

    # ------------------------------------------------------------------ train
    def train(self) -> float:
        """Run the loop: epochs of steps, evaluation and checkpoints after each epoch.

        Returns:
            The best value of ``trainer.monitor`` (what a sweeper optimises).

        Raises:
            Preempted: on SIGTERM or SIGINT, after the current step and a checkpoint.
        """
        with self.stop_on_signals():
            return self._train()

    @contextlib.contextmanager
    def stop_on_signals(self) -> Iterator[None]:
        """SIGTERM/SIGINT/SIGUSR2 (preemption, SLURM's time limit, Ctrl-C) end the current step,
        write ``last.pt`` and raise :class:`Preempted`; a second signal acts as usual (forced stop).

        A handler that was there before for the signal (submitit's, which requeues the job on
        SIGUSR2) is called after ``last.pt`` is written, instead of raising.
        """
        self.stop_signal: int | None = None
        self.previous_handlers: dict[int, Any] = {}
        if threading.current_thread() is not threading.main_thread():
            yield  # signal handlers can only be installed from the main thread
            return
        signals = [signal.SIGTERM, signal.SIGINT] + ([signal.SIGUSR2] if hasattr(signal, "SIGUSR2") else [])
        previous = self.previous_handlers = {sig: signal.getsignal(sig) for sig in signals}

        def request_stop(signum: int, frame: object) -> None:
            self.stop_signal = signum
            signal.signal(signum, previous[signum])

        for sig in previous:
            signal.signal(sig, request_stop)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def stop_if_signalled(self, bar: tqdm) -> None:
        """After a step: on a pending signal, checkpoint and raise :class:`Preempted`.

        Under torchrun the ranks agree first (a signal may reach them a step apart), and every
        rank waits until rank 0 has written ``last.pt``.
        """
        if not distributed.any_true(self.stop_signal is not None):
            return
        self.save("last.pt")
        distributed.barrier()
        bar.close()
        self.tb.close()
        signum = self.stop_signal or signal.SIGTERM
        handler = self.previous_handlers.get(signum)
        if callable(handler) and handler is not signal.default_int_handler:
            handler(signum, None)  # e.g. submitit: requeue the job (it continues from last.pt), exit
        name = signal.Signals(signum).name
        raise Preempted(f"stopped by {name} at step {self.step} (epoch {self.epoch + 1}); wrote "
                        f"{self.ckpt_dir / 'last.pt'}; continue with trainer.resume=auto in the same run folder")

    def _train(self) -> float:
        t, lg = self.trainer, self.logger_cfg
        tasks = list(self.tasks)
        sums = self.sums  # (2, T): losses and weights summed over the log_count steps since the last log
        samples, t_log = 0, time.perf_counter()
        # A run resumed after its early stop (killed before metrics.json) trains no further epoch.
        t_start, stopped_early = time.perf_counter(), self.batch_in_epoch == 0 and self.patience_exhausted()
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not (lg.progress_bar and self.dist.is_main),
                   dynamic_ncols=True, desc="train", leave=True)
        while self.epoch < t.max_epochs and not stopped_early:
            self.model.train()
            bar.set_description(f"epoch {self.epoch + 1}/{t.max_epochs}")
            start = self.batch_in_epoch
            window: list[Batch] = []  # the micro-batches of one optimizer step
            for i, batch in enumerate(self.train_loader.epoch(self.epoch, start=start), start=start):
                if i >= self.steps_per_epoch * t.accumulate_grad_batches:
                    break
                window.append(batch)
                if len(window) < t.accumulate_grad_batches:
                    continue
                self.accumulate(window)
                self.optimizer_step()
                self.batch_in_epoch = i + 1
                self.log_count += 1
                self.weights_pending += 1
                samples += sum(b.size for b in window) * self.dist.world_size
                window = []
                bar.update(1)
                if self.step % lg.log_every_n_steps == 0 or self.step == self.total_steps:
                    # The only host synchronisation of the loop: one read every N steps.
                    mean = (distributed.mean(sums) / self.log_count).tolist()
                    elapsed = time.perf_counter() - t_log
                    self.log_train(dict(zip(tasks, mean[0], strict=True)), dict(zip(tasks, mean[1], strict=True)),
                                   samples / max(elapsed, 1e-9), bar)
                    sums.zero_()
                    self.log_count, samples, t_log = 0, 0, time.perf_counter()
                if t.checkpoint_every_n_steps and self.step % t.checkpoint_every_n_steps == 0:
                    self.save("last.pt")
                self.stop_if_signalled(bar)
            self.epoch += 1
            self.batch_in_epoch = 0
            stopped_early = self.end_of_epoch()
            self.stop_if_signalled(bar)
        bar.close()
        self.finish(time.perf_counter() - t_start, stopped_early)
        return float(self.best["value"])

    def accumulate(self, window: list[Batch]) -> None:
        """Forward and backward of the micro-batches of one optimizer step (``accumulate_grad_batches``
        of them, under torchrun on every process).

        Each task's gradient is that of the mean loss over all of the step's labelled samples,
        exactly as in one process with one batch of them all: a micro-batch's mean loss is
        weighted by its share of the labelled samples (with sparse labels, the micro-batches
        and processes hold different numbers). One all-reduce of the ``(micro-batches, T)``
        counts per step under torchrun; nothing at all with one micro-batch in one process.
        """
        acc, world = len(window), self.dist.world_size
        if acc == 1 and world == 1:
            self.micro_step(window[0])
            return
        local = torch.stack([torch.stack([b.labeled[t].sum() for t in self.tasks]) for b in window]).float()
        counts = distributed.total(local)  # (acc, T) over the processes; asynchronous on the GPU
        shares = local * (acc * world) / counts.sum(0).clamp_min(1)
        for k, batch in enumerate(window):
            self.micro_step(batch, sync=k == acc - 1, share=shares[k], counts=counts[k])

    def micro_step(self, batch: Batch, sync: bool = True, share: Tensor | None = None,
                   counts: Tensor | None = None) -> None:
        """Forward and backward of one (micro-)batch; its losses and weights are summed on the device.

        Args:
            sync: the last micro-batch before an optimizer step: under torchrun, gradients are
                averaged across processes during its backward (DistributedDataParallel's hooks),
                or after it when the balancer writes ``.grad`` itself.
            share, counts: the micro-batch's loss factors and labelled counts (:meth:`accumulate`).
        """
        acc, every = self.trainer.accumulate_grad_batches, self.logger_cfg.log_every_n_steps
        cosine_every = self.logger_cfg.grad_cosine_every_n_steps
        logged = bool(self.logger_cfg.tensorboard and cosine_every and (self.step + 1) % cosine_every == 0)
        direct = self.balancer.writes_grads_directly
        no_sync = self.ddp.no_sync() if self.ddp is not None and (direct or not sync) else contextlib.nullcontext()
        with no_sync:
            losses, weights, gramian = training_step(self.forward_model, self.tasks, self.balancer, batch,
                                                     self.autocast, self.scaler, self.shared_params, self.step,
                                                     1.0 / acc, gramian=logged, share=share, counts=counts,
                                                     data_parallel=self.dist.distributed)
        if self.dist.distributed and sync:
            # Gradients DDP's hooks do not see: the balancer's own parameters, and all of them
            # when the balancer writes .grad itself (parameter-space aggregation).
            distributed.average_gradients(list(self.balancer.parameters()))
            if direct:
                distributed.average_gradients(list(self.model.parameters()))
        if self.trainer.nonfinite != "warn":
            self.check_finite(losses)
        if acc > 1:  # the step's values: the mean over its micro-batches (the losses carry their shares)
            losses, weights = losses / acc, weights / acc
        self.sums[0] += losses
        self.sums[1] += weights
        self.step_weights[self.step % every] += weights
        if gramian is not None:
            self.gramian = gramian

    def check_finite(self, losses: Tensor) -> None:
        """``trainer.nonfinite=skip|stop``: act on a NaN/Inf task loss (one host read per step)."""
        finite = distributed.mean(torch.isfinite(losses).float()) == 1  # torchrun: the ranks agree
        bad = [t for t, ok in zip(self.tasks, finite.tolist(), strict=True) if not ok]
        if not bad:
            return
        where = f"non-finite loss for task(s) {', '.join(bad)} at step {self.step + 1}"
        if self.trainer.nonfinite == "stop":
            raise UserError(f"{where} (trainer.nonfinite=stop); check the data and targets of those tasks, lower "
                            "optimizer.lr, or use trainer.nonfinite=skip")
        log.warning("%s: update skipped (trainer.nonfinite=skip)", where)
        self.skip_update = True

    def optimizer_step(self) -> None:
        """Unscale, clip, step, update the scaler and the schedule, clear gradients."""
        if self.skip_update:  # trainer.nonfinite=skip: drop this step's (non-finite) gradients
            self.skip_update = False
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

    def log_train(self, losses: dict[str, float], weights: dict[str, float], samples_per_s: float, bar: tqdm) -> None:
        """Write the interval's mean losses, each of its steps' weights, the gates' weights and the
        task gradients' cosine similarities to TensorBoard and the progress bar."""
        total = sum(weights[t] * losses[t] for t in losses)
        self.write_step_weights()
        scalars = {"train/loss/total": total, **{f"train/loss/{t}": v for t, v in losses.items()},
                   "lr": self.optimizer.param_groups[0]["lr"], "perf/samples_per_s": samples_per_s}
        gates = self.model.mtl.gate_weights()
        if gates:
            scalars.update(zip([f"train/gate/{k}" for k in gates], torch.stack(list(gates.values())).tolist(),
                               strict=True))
        if self.gramian is not None:
            scalars.update(cosine_scalars(self.gramian, list(self.tasks)))
            self.gramian = None
        if self.scaler.is_enabled() or self.trainer.nonfinite == "skip":
            scalars["train/skipped_steps"] = self.skipped_steps
        self.tb.scalars(scalars, self.step)
        bar.set_postfix({"loss": f"{total:.3f}", **{t: f"{v:.3f}" for t, v in losses.items()}}, refresh=False)
        bad = [t for t, v in losses.items() if not math.isfinite(v)]
        if bad:
            log.warning("non-finite training loss for task(s) %s around step %d", ", ".join(bad), self.step)

    def write_step_weights(self) -> None:
        """Write the buffered per-step task weights (one host read) and empty the buffer.

        At each log, and before each checkpoint: a run resumed from the checkpoint then never
        writes a step at or before it again (TensorBoard's ``purge_step`` is the step after it).
        """
        if self.weights_pending == 0:
            return
        every = len(self.step_weights)
        first = self.step - self.weights_pending + 1
        rows = self.step_weights[[s % every for s in range(first - 1, self.step)]].tolist()
        self.step_weights.zero_()
        self.weights_pending = 0
        for s, row in zip(range(first, self.step + 1), rows, strict=True):
            self.tb.scalars({f"train/weight/{t}": v for t, v in zip(self.tasks, row, strict=True)}, s)

    def end_of_epoch(self) -> bool:
        """Evaluate, track the best monitored value, write checkpoints; True to stop early."""
        t = self.trainer
        metrics = self.evaluate("val")
        self.last_metrics = metrics
        self.tb.scalars(metrics, self.step)
        value = metrics[t.monitor]
        better = self.best["value"] is None or (value < self.best["value"] if t.monitor_mode == "min"
                                                else value > self.best["value"])
        if better:
            self.best = {"value": value, "epoch": self.epoch, "step": self.step, "metrics": metrics}
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
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
    @torch.no_grad()
    def evaluate(self, split: str = "val") -> dict[str, float]:
        """Per-task losses and metrics over a whole split (labelled samples only).

        Returns:
            ``{"<split>/loss/total", "<split>/loss/<task>", "<split>/<task>/<metric>": float}``.
        """
        self.model.eval()
        # torchrun: each rank evaluates its part; loss sums are reduced, and the labelled samples'
        # predictions and targets gathered, so every rank computes the metrics of the whole split.
        # (torchmetrics' own sync in compute() fails when a rank saw no labels for a task.)
        parallel = self.dist.distributed
        loader = InMemoryLoader(self.splits[split], self.trainer.eval_batch_size, rank=self.dist.rank,
                                world_size=self.dist.world_size)
        metrics = {t: task.metrics().to(self.device) for t, task in self.tasks.items()}
        kept: dict[str, tuple[list[Tensor], list[Tensor]]] = {t: ([], []) for t in self.tasks}
        loss_sum = torch.zeros(len(self.tasks), device=self.device)
        n_labeled = torch.zeros(len(self.tasks), device=self.device)
        for batch in loader:
            with self.autocast:
                preds, _ = self.model(batch.inputs, batch.present)  # eager: a compiled eval would compile twice
            for i, (t, task) in enumerate(self.tasks.items()):
                lab = batch.labeled[t]
                n = lab.sum()
                loss_sum[i] += task.loss(preds[t], batch.targets[t], lab) * n
                n_labeled[i] += n
                if parallel:  # empty selections too: they carry the shapes for the gather
                    kept[t][0].append(preds[t][lab].float())
                    kept[t][1].append(batch.targets[t][lab])
                elif lab.any():
                    metrics[t].update(*task.metric_inputs(preds[t][lab], batch.targets[t][lab]))
        if parallel:
            for t, task in self.tasks.items():
                pred, target = (distributed.gather_rows(torch.cat(x)) for x in kept[t])
                for metric in metrics[t].values():
                    metric.sync_on_compute = metric._to_sync = False  # every rank holds all the data
                if len(pred):
                    metrics[t].update(*task.metric_inputs(pred, target))
        out: dict[str, float] = {}
        loss_sum, n_labeled = distributed.total(loss_sum), distributed.total(n_labeled)
        losses = (loss_sum / n_labeled.clamp_min(1)).tolist()
        out[f"{split}/loss/total"] = float(sum(losses))
        for i, t in enumerate(self.tasks):
            out[f"{split}/loss/{t}"] = losses[i]
        for t, collection in metrics.items():
            for k, metric in collection.items():
                out[f"{split}/{t}/{k}"] = float("nan")
                if n_labeled[list(self.tasks).index(t)] == 0:
                    continue
                try:
                    out[f"{split}/{t}/{k}"] = float(metric.compute())
                except ValueError as e:  # e.g. R^2 of a single labelled sample
                    log.warning("%s/%s/%s is NaN: %s", split, t, k, str(e).splitlines()[0])
        self.model.train()
        return out

    # ------------------------------------------------------------------ checkpoints
    def state(self, log_sums: Tensor | None = None) -> dict[str, Any]:
        """Everything needed to resume, as plain data and tensors (loads with weights_only=True).

        Args:
            log_sums: the training log's sums to store (torchrun: their mean over the ranks).
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
            "log": {"sums": self.sums if log_sums is None else log_sums, "count": self.log_count},
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            "world_size": self.dist.world_size,
        }

    def save(self, name: str) -> None:
        """Write ``checkpoints/<name>`` atomically (rank 0 only: the ranks hold the same state).

        TensorBoard's events are flushed first, so that a crash after the checkpoint loses none of
        the steps the checkpoint covers (a resumed run drops the later ones: ``purge_step``).
        """
        log_sums = distributed.mean(self.sums)  # every rank takes part; each then resumes from the mean
        self.write_step_weights()
        if self.dist.is_main:
            self.tb.flush()
            checkpoint.save(self.state(log_sums), self.ckpt_dir / name)

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
        state = checkpoint.load(path)
        check_same_components(state["config"], OmegaConf.to_container(self.cfg, resolve=True), path)
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
        saved = state.get("log")
        if saved is not None:
            self.sums.copy_(saved["sums"])
            self.log_count = int(saved["count"])
        log.info("resumed from %s at step %d (epoch %d)", path, self.step, self.epoch)
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
            "parameters": count_parameters(self.model),
            "world_size": self.dist.world_size,
        }
        if not self.dist.is_main:
            return
        (self.output_dir / "metrics.json").write_text(json.dumps(result, indent=2, allow_nan=True))
        self.tb.hparams(hparams_of(self.cfg, self.trainer), {f"best/{k}": v for k, v in self.best["metrics"].items()})
        self.tb.close()
        table = format_results(self.best["metrics"], list(self.tasks), title=(
            f"best epoch {self.best['epoch']} of {self.epoch} ({self.trainer.monitor} = {self.best['value']:.4f})"))
        log.info("results (validation)\n%s", table)


# ---------------------------------------------------------------------- helpers
def seed_everything(seed: int) -> None:
    """Seed Python's and torch's generators (CPU and CUDA)."""
    random.seed(seed)
    torch.manual_seed(seed)


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


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def hparams_of(cfg: DictConfig, t: TrainerConfig) -> dict[str, Any]:
    """A flat dict of the run's main choices, for TensorBoard's HParams tab."""
    h: dict[str, Any] = {"seed": cfg.seed, "batch_size": t.batch_size, "precision": t.precision,
                         "max_epochs": t.max_epochs, "lr": float(cfg.optimizer.get("lr", float("nan")))}
    for key in ("fusion", "mtl", "balancer", "optimizer", "scheduler"):
        h[key] = str(cfg[key].get("_target_", "")).rsplit(".", 1)[-1]
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


def _int(cfg: DictConfig, key: str) -> int:
    value = cfg.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise UserError(f"{key} must be an integer, found {value!r}")
    return value


def _names(cfg: DictConfig, key: str) -> list[str] | None:
    value = cfg.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if not OmegaConf.is_list(value):
        raise UserError(f"{key} must be a list of names or null, found {value!r}")
    return [str(v) for v in value]
