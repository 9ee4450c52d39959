"""Data-parallel training under ``torchrun``: the process group, and the reductions the loop needs.

``torchrun --nproc_per_node=N -m mtmm_train ...`` starts N copies of the CLI with ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE`` set. :func:`init_from_env` (called by the CLI before Hydra
composes the config) joins the process group and shares rank 0's start time, so that every rank
resolves the same run folder. In one process every function here is a no-op.

Backends: gloo for CPU tensors and, when CUDA is present, NCCL for CUDA tensors (one group with
``cpu:gloo,cuda:nccl``), so small host-side agreements (stop signals) never touch the GPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from mtmm_train import resolvers


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the data-parallel group (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes logs, checkpoints and ``metrics.json``."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.world_size > 1


def launched() -> bool:
    """Started by ``torchrun`` with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env() -> None:
    """Join the process group ``torchrun`` describes and share rank 0's start time.

    In one process, only forget an earlier run's start time (a second ``main()`` in one process,
    e.g. a notebook, gets a folder of its own).
    """
    if not launched():
        resolvers.reset()
        return
    if dist.is_initialized():
        return
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        backend = "cpu:gloo,cuda:nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend)
    start = [resolvers.run_time()]
    dist.broadcast_object_list(start, src=0, device=torch.device("cpu"))
    resolvers.RUN_TIME = start[0]


def shutdown() -> None:
    """Leave the process group (end of the CLI)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def info() -> DistInfo:
    """This process's rank and the world size."""
    if not dist.is_initialized():
        return DistInfo()
    return DistInfo(dist.get_rank(), dist.get_world_size())


def _alone() -> bool:
    return not dist.is_initialized() or dist.get_world_size() == 1


def total(x: Tensor) -> Tensor:
    """The sum of ``x`` over all processes (a new tensor; ``x`` itself in one process)."""
    if _alone():
        return x
    out = x.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def mean(x: Tensor) -> Tensor:
    """The mean of ``x`` over all processes (a new tensor; ``x`` itself in one process)."""
    return x if _alone() else total(x) / dist.get_world_size()


def gather_rows(x: Tensor) -> Tensor:
    """``x`` of every process concatenated along dim 0, in rank order (``x`` in one process).

    Processes may hold different numbers of rows (zero included); the trailing shape and dtype
    must agree.
    """
    if _alone():
        return x
    world = dist.get_world_size()
    size = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    counts = [int(s) for s in sizes]
    wire = x.to(torch.uint8) if x.dtype == torch.bool else x  # gloo has no bool
    padded = torch.cat([wire, wire.new_zeros((max(counts) - x.shape[0], *x.shape[1:]))])
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    out = torch.cat([p[:n] for p, n in zip(parts, counts, strict=True)])
    return out.bool() if x.dtype == torch.bool else out


def any_true(flag: bool) -> bool:
    """Whether ``flag`` is true on any process (a host-side agreement through gloo)."""
    if _alone():
        return flag
    t = torch.tensor([int(flag)])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def average_gradients(params: list[nn.Parameter]) -> None:
    """Average ``.grad`` over all processes, one flat buffer per dtype and device.

    For gradients written outside DistributedDataParallel's hooks: the balancer's own
    parameters, and every parameter when a balancer sets ``.grad`` itself (parameter-space
    aggregation). A parameter without a gradient on this rank counts as zero.
    """
    if _alone():
        return
    groups: dict[tuple[torch.dtype, torch.device], list[nn.Parameter]] = {}
    for p in params:
        if p.requires_grad:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            groups.setdefault((p.grad.dtype, p.grad.device), []).append(p)
    for group in groups.values():
        flat = mean(torch.cat([p.grad.reshape(-1) for p in group]))
        offset = 0
        for p in group:
            n = p.grad.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
            offset += n


def barrier() -> None:
    """Wait for every process (no-op in one process)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
