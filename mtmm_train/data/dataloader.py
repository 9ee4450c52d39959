"""Streams a split from host memory through DataLoader workers, pinned memory and non-blocking copies.

For data that does not fit on the device (or, memory-mapped from the cache, not even in host
memory), and for a :class:`~mtmm_train.data.base.FileSplit`, whose workers decode the files of each
batch (or, for ``decode: device`` image readers, read the JPEGs' bytes, which this process decodes on
the training device: :mod:`mtmm_train.data.device_decode`). Workers gather whole batches by index,
as :class:`InMemoryLoader` does, so there is no per-sample collate; the order of epoch ``e`` depends
only on ``(seed, e)``, as there, and so do the per-sample transforms (seeded by sample, not by worker).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from mtmm_train.batch import Batch
from mtmm_train.data.base import FileSplit, TensorSplit
from mtmm_train.data.loader import InMemoryLoader
from mtmm_train.errors import UserError, check

__all__ = ["StreamingLoader"]

FIELDS = ("inputs", "present", "targets", "labeled")


def _identity(x: object) -> object:
    return x


def _tensor(x: np.ndarray, pin: bool) -> Tensor:
    t = torch.from_numpy(x)
    return t.pin_memory() if pin else t


class _Batches(Dataset):
    """Item ``(epoch, index)`` (sample ids) is the whole batch, as NumPy arrays.

    Arrays cross the process boundary by value (one pipe write per batch), where tensors would
    each take a shared-memory segment and a file descriptor: 100x slower for small batches.
    A user error (a file that cannot be decoded) comes back as ``{"error": message}``, so the
    training process reports it in one line rather than as a worker's traceback.
    """

    def __init__(self, split: TensorSplit | FileSplit) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, item: tuple[int | None, np.ndarray]) -> dict[str, Any]:
        epoch, index = item
        try:
            if isinstance(self.split, FileSplit):  # decode=device: JPEGs come back as bytes, under "encoded"
                b, encoded = self.split.parts(torch.from_numpy(index), epoch)
            else:
                b, encoded = self.split.batch(torch.from_numpy(index), epoch), {}
        except UserError as e:
            return {"error": str(e)}
        out = {f: {k: v.numpy() for k, v in getattr(b, f).items()} for f in FIELDS}
        if encoded:
            out["encoded"] = {k: v for m, e in encoded.items() for k, v in e.arrays(m).items()}
        return out


class _EpochBatches:
    """The index batches of one epoch, from batch ``start`` on (set before each iteration), with the
    epoch the transforms see (None: evaluation)."""

    def __init__(self, order: InMemoryLoader, train: bool) -> None:
        self.order, self.epoch, self.start, self.train = order, 0, 0, train

    def __iter__(self) -> Iterator[tuple[int | None, np.ndarray]]:
        for index in self.order.indices(self.epoch, self.start):
            yield (self.epoch if self.train else None), index.numpy()

    def __len__(self) -> int:
        return max(0, len(self.order) - self.start)


class StreamingLoader:
    """Same interface as :class:`~mtmm_train.data.loader.InMemoryLoader`: ``epoch(e, start)``.

    Args:
        split: the data, in host memory (not moved to the device), or a FileSplit.
        batch_size: samples per batch.
        shuffle: draw a new permutation each epoch.
        drop_last: drop the last incomplete batch.
        seed: base seed of the permutations.
        rank: this process's rank under data parallelism (see :class:`InMemoryLoader`).
        world_size: the number of data-parallel processes.
        device: where batches go (copied without blocking from pinned memory on CUDA).
        num_workers: worker processes that gather batches (0: in this process).
        pin_memory: page-lock batches so the copy to a CUDA device overlaps compute.
        prefetch_factor: batches each worker prepares ahead.
        persistent_workers: keep the workers alive between epochs.
        train: training batches (per-sample transforms with ``train=True`` and the epoch); False:
            evaluation.
        global_batches, min_last: how the training batches are cut, as in
            :class:`~mtmm_train.data.loader.InMemoryLoader`.
    """

    def __init__(self, split: TensorSplit | FileSplit, batch_size: int, shuffle: bool = False,
                 drop_last: bool = False, seed: int = 0, rank: int = 0, world_size: int = 1,
                 device: torch.device | str = "cpu", num_workers: int = 2, pin_memory: bool = True,
                 prefetch_factor: int = 2, persistent_workers: bool = True, train: bool = False,
                 global_batches: bool | None = None, min_last: int = 1) -> None:
        check(isinstance(num_workers, int) and num_workers >= 0,
              f"loader.num_workers must be an integer >= 0, found {num_workers!r}")
        check(prefetch_factor >= 1, f"loader.prefetch_factor must be >= 1, found {prefetch_factor}")
        self.device = torch.device(device)
        # The permutations come from InMemoryLoader on the host, so both loaders see one order.
        self.index = InMemoryLoader(split.to("cpu"), batch_size, shuffle, drop_last, seed, rank, world_size,
                                    global_batches=global_batches, min_last=min_last)
        self.batch_size = batch_size
        self.sampler = _EpochBatches(self.index, train)
        self.pin = pin_memory and self.device.type == "cuda"
        workers = {"prefetch_factor": prefetch_factor, "persistent_workers": persistent_workers} if num_workers else {}
        # batch_size=None: each sampler item is a whole index batch, gathered in one call;
        # collate_fn=identity: the arrays stay arrays (no per-sample collate, no conversion).
        # generator: the workers' seeds come from it, not from the global random state, which the
        # model's initialisation and modality dropout draw from (no loader may shift those).
        self.loader = DataLoader(_Batches(self.index.split), batch_size=None, sampler=self.sampler,
                                 num_workers=num_workers, collate_fn=_identity, generator=torch.Generator(),
                                 **workers)

    def __len__(self) -> int:
        return len(self.index)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """Iterate the batches of ``epoch``, skipping the first ``start`` (resume)."""
        self.sampler.epoch, self.sampler.start = epoch, start
        for arrays in self.loader:
            if "error" in arrays:
                raise UserError(arrays["error"])
            # Page-locked host memory lets the copy to the GPU run without blocking this thread.
            d = {f: {k: _tensor(v, self.pin) for k, v in arrays[f].items()} for f in FIELDS}
            batch = Batch(d["inputs"], d["present"], d["targets"], d["labeled"]).to(self.device, non_blocking=True)
            if "encoded" in arrays:  # decode=device: the batch's JPEGs, decoded on the training device
                from mtmm_train.data.device_decode import EncodedImages, decode_into

                decode_into(batch.inputs, EncodedImages.unpack(arrays["encoded"]), self.index.split, self.device)
            yield batch

    def __iter__(self) -> Iterator[Batch]:
        return self.epoch(0)
