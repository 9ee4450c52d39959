"""Batches a device-resident :class:`TensorSplit` by index: no workers, no collate."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from mtmm_train.batch import Batch
from mtmm_train.data.base import FileSplit, TensorSplit


class InMemoryLoader:
    """Yields batches of a split that sits (ideally on the training device) in memory.

    The order of epoch ``e`` depends only on ``(seed, e)``, so a run resumed at any step
    sees exactly the batches an uninterrupted run would have seen.

    Args:
        split: the data.
        batch_size: samples per batch.
        shuffle: draw a new permutation each epoch.
        drop_last: drop the last incomplete batch (training).
        seed: base seed of the permutations.
        rank: this process's rank under data parallelism (see below).
        world_size: the number of processes. Training (``drop_last``): each batch of
            ``batch_size * world_size`` samples of the one-process order is split in contiguous
            parts, part ``rank`` here, so N processes together see the batches one process with
            N times the batch would see. Evaluation: every ``world_size``-th sample from ``rank``
            on, so every rank gets a share (within one sample) of every split.
        train: training batches: the split's per-sample transforms run with ``train=True`` and the
            epoch; False (evaluation): with ``train=False``.
        global_batches: split each global batch in contiguous parts as above, also without
            ``drop_last`` (training that keeps the last, smaller batch: its parts differ by at most
            one sample); None: when ``drop_last``.
        min_last: with ``global_batches`` and not ``drop_last``, a last batch that would give a
            rank fewer than ``min_last`` samples joins the batch before it (2 for BatchNorm, which
            cannot train on a batch of one).
    """

    def __init__(self, split: TensorSplit | FileSplit, batch_size: int, shuffle: bool = False,
                 drop_last: bool = False, seed: int = 0, rank: int = 0, world_size: int = 1,
                 train: bool = False, global_batches: bool | None = None, min_last: int = 1) -> None:
        self.split = split
        self.train = train
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.num_samples = len(split)
        self.global_batches = drop_last if global_batches is None else global_batches
        self.min_last = min_last

    def bounds(self) -> list[tuple[int, int]]:
        """Training without ``drop_last``: ``[start, end)`` of each global batch in the epoch's order."""
        size = self.batch_size * self.world_size
        full, rest = divmod(self.num_samples, size)
        out = [(i * size, (i + 1) * size) for i in range(full)]
        if rest and out and rest // self.world_size < self.min_last:
            out[-1] = (out[-1][0], self.num_samples)  # too small on some rank: joins the batch before
        elif rest:
            out.append((full * size, self.num_samples))
        return out

    def __len__(self) -> int:
        if self.global_batches and not self.drop_last:
            return len(self.bounds())
        if self.drop_last:
            return max(1, self.num_samples // (self.batch_size * self.world_size))
        return -(-len(range(self.rank, self.num_samples, self.world_size)) // self.batch_size)

    def order(self, epoch: int) -> torch.Tensor:
        """The sample order of ``epoch`` (on the split's device)."""
        device = next(iter(self.split.present.values())).device
        if not self.shuffle:
            return torch.arange(self.num_samples, device=device)
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(self.num_samples, generator=gen).to(device)

    def indices(self, epoch: int, start: int = 0) -> Iterator[torch.Tensor]:
        """The sample indices of this rank's batches of ``epoch``, from batch ``start`` on."""
        order = self.order(epoch)
        size = self.batch_size
        if self.global_batches and not self.drop_last:
            for first, end in self.bounds()[start:]:
                index = order[first:end].tensor_split(self.world_size)[self.rank]
                if len(index) > 0:
                    yield index
            return
        if not self.drop_last:
            order = order[self.rank::self.world_size]
        for i in range(start, len(self)):
            first = (i * self.world_size + self.rank) * size if self.drop_last else i * size
            index = order[first:first + size]
            if len(index) > 0:
                yield index

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """Iterate the batches of ``epoch``, skipping the first ``start`` (resume)."""
        for index in self.indices(epoch, start):
            yield self.split.batch(index, epoch if self.train else None)

    def __iter__(self) -> Iterator[Batch]:
        return self.epoch(0)
