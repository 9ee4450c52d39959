"""Streams a split from host memory through DataLoader workers, pinned memory and non-blocking copies.

For data that does not fit on the device (or, memory-mapped from the cache, not even in host
memory), and for a :class:`~mtmm_train.data.base.FileSplit`, whose workers decode the files of each
batch (or, for ``decode: device`` image readers, read the JPEGs' bytes, which this process decodes on
the training device: :mod:`mtmm_train.data.device_decode`). Workers gather whole batches by index,
as :class:`InMemoryLoader` does, so there is no per-sample collate; the order of epoch ``e`` depends
only on ``(seed, e)``, as there, and so do the per-sample transforms (seeded by sample, not by worker).

Decoding on the device happens in this process, so it would hold up the training step: a batched
nvjpeg decode does its Huffman decoding on the host in the calling thread, and each image's resize
is a kernel launch. With ``decode_ahead`` (default 1) a background thread (:class:`_DecodeAhead`)
prepares the next batch (decode, resize, copy to the device) while the training thread launches the
current step; on CUDA it works on a stream of its own, which the consumer's stream waits for on the
device (an event), not on the host.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from functools import partial
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


def _to_batch(arrays: dict[str, Any], split: TensorSplit | FileSplit, device: torch.device, pin: bool) -> Batch:
    """A worker's arrays -> the Batch on ``device`` (JPEGs of ``decode=device`` modalities decoded there).

    A module-level function (bound with ``functools.partial``), so a decode-ahead thread refers to the
    split but not to the loader.
    """
    if "error" in arrays:
        raise UserError(arrays["error"])
    # Page-locked host memory lets the copy to the GPU run without blocking this thread.
    d = {f: {k: _tensor(v, pin) for k, v in arrays[f].items()} for f in FIELDS}
    batch = Batch(d["inputs"], d["present"], d["targets"], d["labeled"]).to(device, non_blocking=True)
    if "encoded" in arrays:  # decode=device: the batch's JPEGs, decoded on the training device
        from mtmm_train.data.device_decode import EncodedImages, decode_into

        decode_into(batch.inputs, EncodedImages.unpack(arrays["encoded"]), split, device)
    return batch


_DONE = object()  # the end of an epoch, in a decode-ahead queue


class _DecodeAhead:
    """Makes the batches of one epoch in a daemon thread, at most ``ahead`` of the consumer.

    The consumer (:meth:`get`) takes them in order; an exception in the thread (a file that cannot be
    decoded: a :class:`~mtmm_train.errors.ComponentError`) is raised by :meth:`get` as it is (same type,
    same one line). A semaphore of ``ahead`` slots bounds the batches decoded ahead (a slot is taken
    before a batch is made and given back when the consumer takes it), so decode-ahead holds at most
    ``ahead`` batches more in device memory. :meth:`close` stops the thread and waits for it (at most
    the batch it is making): at the end of an epoch, when the consumer breaks off, or when the epoch's
    iterator is garbage-collected.

    On CUDA the thread launches its copies and decoding on a stream of its own; each batch comes with
    an event recorded after its work, which the consumer's current stream waits for (on the device: no
    host synchronisation in the training thread), and its tensors are marked as used on that stream
    (``record_stream``) so the caching allocator does not give their memory back to the thread's
    stream before the step that reads them has run.
    """

    def __init__(self, batches: Iterator[dict[str, Any]], make: Callable[[dict[str, Any]], Batch], ahead: int,
                 device: torch.device) -> None:
        if device.type == "cuda" and device.index is None:  # "cuda" means this thread's device, not the new one's
            device = torch.device("cuda", torch.cuda.current_device())
        self.device = device
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.slots = threading.Semaphore(ahead)
        self.stopping = threading.Event()
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.thread = threading.Thread(target=self._run, args=(batches, make), name="mtmm-decode-ahead",
                                       daemon=True)
        self.thread.start()

    def _run(self, batches: Iterator[dict[str, Any]], make: Callable[[dict[str, Any]], Batch]) -> None:
        cuda = self.stream is not None
        try:
            with torch.cuda.device(self.device) if cuda else nullcontext(), \
                    torch.cuda.stream(self.stream) if cuda else nullcontext():
                for arrays in batches:
                    self.slots.acquire()
                    if self.stopping.is_set():
                        return
                    batch, event = make(arrays), None
                    if cuda:
                        event = torch.cuda.Event()
                        event.record(self.stream)
                    self.queue.put((batch, event))
        except BaseException as e:  # handed to the training thread, which raises it
            self.queue.put(e)
        finally:
            self.queue.put(_DONE)

    def get(self) -> Batch | None:
        """The next batch, ready for the consumer's current stream; None at the end of the epoch."""
        item = self.queue.get()
        if item is _DONE:
            return None
        if isinstance(item, BaseException):
            raise item
        self.slots.release()  # the thread may make the next batch while this one trains
        batch, event = item
        if event is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(event)
            for f in FIELDS:
                for t in getattr(batch, f).values():
                    t.record_stream(current)
        return batch

    def close(self) -> None:
        """Stop the thread (after the batch it may be making) and wait for it."""
        self.stopping.set()
        self.slots.release()  # wakes a thread waiting for a slot
        self.thread.join()


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
        decode_ahead: batches a background thread decodes (``decode=device`` JPEGs) and moves to the
            device ahead of the training step; 0: in the training thread, right before each step. Used
            only by a FileSplit with ``decode=device`` modalities (other batches are ready when they
            leave the workers).
    """

    def __init__(self, split: TensorSplit | FileSplit, batch_size: int, shuffle: bool = False,
                 drop_last: bool = False, seed: int = 0, rank: int = 0, world_size: int = 1,
                 device: torch.device | str = "cpu", num_workers: int = 2, pin_memory: bool = True,
                 prefetch_factor: int = 2, persistent_workers: bool = True, train: bool = False,
                 global_batches: bool | None = None, min_last: int = 1, decode_ahead: int = 1) -> None:
        check(isinstance(num_workers, int) and num_workers >= 0,
              f"loader.num_workers must be an integer >= 0, found {num_workers!r}")
        check(isinstance(decode_ahead, int) and not isinstance(decode_ahead, bool) and decode_ahead >= 0,
              f"loader.decode_ahead must be an integer >= 0 (batches decoded ahead of the training step; 0: "
              f"none), found {decode_ahead!r}")
        check(prefetch_factor >= 1, f"loader.prefetch_factor must be >= 1, found {prefetch_factor}")
        self.device = torch.device(device)
        # The permutations come from InMemoryLoader on the host, so both loaders see one order.
        self.index = InMemoryLoader(split.to("cpu"), batch_size, shuffle, drop_last, seed, rank, world_size,
                                    global_batches=global_batches, min_last=min_last)
        self.batch_size = batch_size
        self.sampler = _EpochBatches(self.index, train)
        self.pin = pin_memory and self.device.type == "cuda"
        self.decode_ahead = decode_ahead if isinstance(split, FileSplit) and split.device_decoded() else 0
        self._ahead: _DecodeAhead | None = None  # the decode-ahead thread of the epoch being iterated
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
        if self._ahead is not None:  # an earlier epoch's iterator, left unfinished: its thread reads our workers
            self._ahead.close()
        self.sampler.epoch, self.sampler.start = epoch, start
        make = partial(_to_batch, split=self.index.split, device=self.device, pin=self.pin)
        if not self.decode_ahead:
            for arrays in self.loader:
                yield make(arrays)
            return
        ahead = self._ahead = _DecodeAhead(iter(self.loader), make, self.decode_ahead, self.device)
        try:
            while (batch := ahead.get()) is not None:
                yield batch
        finally:  # the end of the epoch, a break, or this iterator garbage-collected
            ahead.close()
            if self._ahead is ahead:
                self._ahead = None

    def __iter__(self) -> Iterator[Batch]:
        return self.epoch(0)
