"""The balancer contract, and the helpers every family shares."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from mtmm_train.errors import SettingError, UserError


@dataclass
class BalanceContext:
    """What a balancer may look at besides the losses, for one step.

    Attributes:
        shared: the last shared representation ``(B, D)`` (see ``MTLArchitecture``).
        shared_params: the parameters every task depends on (encoders, fusion, trunk).
        labeled_counts: task -> number of labelled samples in the batch (a device tensor;
            reading it synchronises, so only balancers that need it do).
        scaler: the ``GradScaler`` (disabled unless fp16); backward passes go through
            ``scaler.scale``.
        step: the optimizer step about to be taken.
        amp: whether the forward pass ran under a reduced-precision autocast (bf16 or fp16).
        reduce: the mean over data-parallel processes (identity in one process). Whatever a
            balancer derives its weights or state from (loss values, Jacobians; Gramians through
            :meth:`reduce_gramian`) goes through it, so every process computes the same weights;
            ``labeled_counts`` are already totals over processes.
        world_size: the number of data-parallel processes.
        task_losses: the same losses as the ``(T,)`` tensor, as the ``T`` scalars it was stacked
            from (``training_step`` passes them); see :meth:`separate`.
    """

    shared: Tensor
    shared_params: list[nn.Parameter]
    labeled_counts: dict[str, Tensor]
    scaler: torch.amp.GradScaler
    step: int
    amp: bool = False
    reduce: Callable[[Tensor], Tensor] = lambda x: x
    world_size: int = 1
    task_losses: Sequence[Tensor] = ()

    def separate(self, losses: Tensor) -> list[Tensor]:
        """The ``(T,)`` losses as ``T`` scalars, each with its own graph, to differentiate one task at a time.

        ``torch.autograd.grad`` of one element of a stacked tensor runs the backward of every
        task's layers (with zero gradients for the others): ``T`` times the work of a Gramian.
        The scalars it was stacked from do not; without them, the elements (slower, same result).
        """
        return list(self.task_losses) if self.task_losses else list(losses.unbind())

    def reduce_gramian(self, gramian: Tensor) -> Tensor:
        """The global batch's Gramian w.r.t. the representation, from this process's.

        A representation's gradient is per sample, so Gramians add up over samples; each
        process's losses carry a factor ``world_size`` (see ``training_step``), hence the mean
        over processes divided by ``world_size``.
        """
        return gramian if self.world_size == 1 else self.reduce(gramian) / self.world_size


class Balancer(nn.Module):
    """Base of all balancers. It is a module, so learned weights train and are checkpointed.

    A balancer belongs to one of two families, each with its own base class and contract:
    :class:`~mtmm_train.balancers.weighting.LossWeighting` (implements ``loss_weights``) and
    :class:`~mtmm_train.balancers.aggregation.GradientAggregation` (implements ``weights`` of a
    Gramian). ``mtmm_train.balancers.all_balancers()`` finds every one by itself. A bad setting is
    refused in the constructor with a :class:`~mtmm_train.errors.SettingError` (:func:`check_number`,
    :func:`check_choice`: ``alpha must be a non-negative float, found -1``); the builder names the key.

    Args:
        tasks: task names (passed in by the recipe).
    """

    #: ``weighting`` or ``aggregation``: set by the family's base class.
    family: ClassVar[str] = ""
    #: True when :meth:`backward` writes ``.grad`` itself instead of through autograd, so that
    #: DistributedDataParallel's hooks miss it; the recipe then averages gradients across processes.
    writes_grads_directly: bool = False
    #: True when :meth:`backward` differentiates the losses with respect to ``ctx.shared`` (the
    #: shared representation). Under ``trainer.compile`` the recipe then compiles the encoders and
    #: fusion only, so ``shared`` stays a node of the autograd graph (see ``CompiledRepresentation``).
    uses_shared_gradient: bool = False

    def __init__(self, tasks: list[str]) -> None:
        super().__init__()
        self.tasks = list(tasks)

    def backward(self, losses: Tensor, ctx: BalanceContext) -> Tensor:
        """Accumulate the gradients of the task losses into ``.grad`` (through ``ctx.scaler``).

        Args:
            losses: ``(T,)`` the task losses, in the order of :attr:`tasks`.
            ctx: the rest of the step (:class:`BalanceContext`).

        Returns:
            ``(T,)`` the weight each task received this step, detached, on the losses' device.
        """
        raise NotImplementedError

    def active_mask(self, ctx: BalanceContext) -> Tensor:
        """``(T,)`` float: 1 for a task with at least one labelled sample in the batch, else 0.

        Stays on the device (no host synchronisation), so stateful balancers can mask their
        updates without slowing the loop.
        """
        return torch.stack([ctx.labeled_counts[t] for t in self.tasks]).gt(0).float()


class SeededGenerator:
    """Mixin of a balancer that draws random numbers: a CPU ``torch.Generator`` of its own.

    Drawing from torch's global generator would make the choice of balancer move the random
    streams of dropout, modality dropout and augmentation (a comparison with static weights
    would then differ in more than the weighting), and would keep data-parallel processes
    drawing the same numbers only as long as their global generators stay in step. The
    generator is seeded by ``seed`` (the config passes the run's ``seed``: ``seed: ${seed}``),
    and its state is the balancer's extra state in ``state_dict``, so a resumed run draws what
    an uninterrupted one would; a checkpoint written before the balancer had a generator loads
    and keeps the seeded one.

    A balancer lists it before its family's base class (``class X(SeededGenerator, LossWeighting)``)
    and calls :meth:`seed_generator` in its constructor.

    Attributes:
        seed: the generator's seed.
        generator: the generator, on the CPU (move what it draws to the device with
            ``.to(device, non_blocking=True)``: no host synchronisation).
    """

    seed: int
    generator: torch.Generator

    def seed_generator(self, seed: int | None) -> None:
        """Create :attr:`generator`, seeded by ``seed`` (None: ``torch.initial_seed()`` at construction).

        Raises:
            SettingError: ``seed must be a non-negative integer, found -1``.
        """
        if seed is not None:
            check_number("seed", seed, integer=True)
        self.seed = torch.initial_seed() if seed is None else seed
        self.generator = torch.Generator().manual_seed(self.seed)

    def get_extra_state(self) -> Tensor:
        """The generator's state, saved in checkpoints with the balancer's ``state_dict``."""
        return self.generator.get_state()

    def set_extra_state(self, state: Tensor) -> None:
        self.generator.set_state(state)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, local_metadata: dict, strict: bool,
                              missing_keys: list[str], unexpected_keys: list[str], error_msgs: list[str]) -> None:
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,  # type: ignore[misc]
                                      missing_keys, unexpected_keys, error_msgs)
        key = f"{prefix}_extra_state"
        if key in missing_keys:  # a checkpoint from before the balancer had a generator: keep the seeded one
            missing_keys.remove(key)

    def extra_repr(self) -> str:
        return ", ".join(filter(None, [super().extra_repr(), f"seed={self.seed}"]))  # type: ignore[misc]


def check_number(name: str, value: object, positive: bool = False, integer: bool = False) -> None:
    """Refuse a constructor parameter that is not a (positive or non-negative) number.

    Raises:
        SettingError: ``c must be a non-negative float, found -1``; the builder adds where the
            balancer sits in the config (``balancer.c must be ...``).
    """
    kinds = (int,) if integer else (int, float)
    if isinstance(value, kinds) and not isinstance(value, bool) and (value > 0 if positive else value >= 0):
        return
    raise parameter_error(name, value, f"a {'positive' if positive else 'non-negative'} "
                                       f"{'integer' if integer else 'float'}")


def check_choice(name: str, value: object, choices: Sequence[str]) -> None:
    """Refuse a constructor parameter that is not one of ``choices``.

    Raises:
        SettingError: ``mode must be one of 'representation', 'parameters', found 'x'``.
    """
    if value not in choices:
        raise parameter_error(name, value, f"one of {', '.join(map(repr, choices))}")


def parameter_error(name: str, value: object, expected: str) -> SettingError:
    """The one template of a refused parameter: ``<name> must be <expected>, found <value>``."""
    return SettingError(name, f"must be {expected}, found {value!r}")


def scaler_scale(ctx: BalanceContext, device: torch.device) -> Tensor:
    """The GradScaler's current scale as a device tensor (1 when the scaler is disabled).

    ``scaler.scale`` of a one returns it without reading the scale on the host.
    """
    return ctx.scaler.scale(torch.ones((), device=device))


def representation_gramian(losses: list[Tensor], shared: Tensor, scale: Tensor | float = 1.0
                           ) -> tuple[Tensor, Tensor]:
    """The per-task gradients with respect to ``shared`` and their Gramian, in float32.

    Only the layers after ``shared`` (task-specific parts and heads) are differentiated, so
    this costs a fraction of a backward pass per task. The graph is kept for the real backward.

    Args:
        losses: one scalar per task, each with its own graph (:meth:`BalanceContext.separate`),
            already multiplied by the GradScaler's ``scale`` (fp16 loss scaling keeps small
            gradients of a half-precision representation from underflowing).
        shared: the shared representation ``(B, D)`` the losses depend on.
        scale: the GradScaler's scale, which the losses carry; the Gramian is unscaled by it.

    Returns:
        ``(rows, gramian)``: the scaled gradients ``(T, B*D)`` in float32 and the unscaled
        Gramian ``(T, T)`` in float32 (computed outside autocast).
    """
    grads = [torch.autograd.grad(loss, shared, retain_graph=True, allow_unused=True)[0] for loss in losses]
    if all(g is None for g in grads) and any(loss.requires_grad for loss in losses):
        # Unlabelled tasks still reach `shared` (their gradient is zero, not None): it is off the path.
        raise UserError("no task loss depends on the shared tensor the model returned, so the balancer's task "
                        "gradients would all be zero; an MTL architecture must return the last tensor every task "
                        "reads (mtmm_train/mtl/base.py), computed before the heads, not beside them")
    with torch.autocast(shared.device.type, enabled=False):
        rows = torch.stack([torch.zeros_like(shared).flatten() if g is None else g.flatten() for g in grads]).float()
        unscaled = rows / scale
        return rows, unscaled @ unscaled.T


def task_gramian(losses: Tensor, ctx: BalanceContext) -> Tensor:
    """The ``(T, T)`` Gramian of the gradients of the ``(T,)`` losses w.r.t. ``ctx.shared`` (float32, unscaled).

    Under data parallelism it is the Gramian of the whole global batch (:meth:`BalanceContext.reduce_gramian`).
    """
    scale = scaler_scale(ctx, ctx.shared.device)
    scaled = [ctx.scaler.scale(loss) for loss in ctx.separate(losses)]
    return ctx.reduce_gramian(representation_gramian(scaled, ctx.shared, scale)[1])


def cosine_scalars(gramian: Tensor, tasks: list[str]) -> dict[str, float]:
    """``train/grad_cosine/<a>/<b>`` -> cosine similarity of tasks a and b's gradients (a before b).

    Pairs with a zero gradient (a task without labels in the batch) are left out.
    """
    g = gramian.double().tolist()
    out = {}
    for i, a in enumerate(tasks):
        for j in range(i + 1, len(tasks)):
            denom = math.sqrt(max(g[i][i], 0.0) * max(g[j][j], 0.0))
            if denom > 0 and math.isfinite(denom):
                out[f"train/grad_cosine/{a}/{tasks[j]}"] = g[i][j] / denom
    return out
