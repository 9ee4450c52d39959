"""Batches a device-resident :class:`TensorSplit` by index: no workers, no collate."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from mtmm_train.batch import Batch
from mtmm_train.data.base import TensorSplit


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
    """

    def __init__(self, split: TensorSplit, batch_size: int, shuffle: bool = False,
                 drop_last: bool = False, seed: int = 0) -> None:
        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.num_samples = len(split)

    def __len__(self) -> int:
        if self.drop_last:
            return max(1, self.num_samples // self.batch_size)
        return -(-self.num_samples // self.batch_size)

    def order(self, epoch: int) -> torch.Tensor:
        """The sample order of ``epoch`` (on the split's device)."""
        device = next(iter(self.split.present.values())).device
        if not self.shuffle:
            return torch.arange(self.num_samples, device=device)
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(self.num_samples, generator=gen).to(device)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """Iterate the batches of ``epoch``, skipping the first ``start`` (resume)."""
        order = self.order(epoch)
        for i in range(start, len(self)):
            index = order[i * self.batch_size:(i + 1) * self.batch_size]
            if len(index) == 0:
                break
            yield self.split.batch(index)

    def __iter__(self) -> Iterator[Batch]:
        return self.epoch(0)
