"""The container every dataset returns: specs plus splits, batched by index.

A split is a :class:`TensorSplit` (whole tensors, in memory or memory-mapped from the cache) or a
:class:`FileSplit` (the rows' files, decoded per sample when a batch is made, in DataLoader
workers). Both have the same interface: ``len``, ``batch(index, epoch=None)``, ``select``, ``to``.
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from mtmm_train.batch import Batch, ModalitySpec, TaskSpec

STORAGES = ("memory", "stream", "cache")


def sample_seed(seed: int, epoch: int | None, row: int, modality: str = "") -> int:
    """The seed of one sample's transform generator: a function of ``(seed, epoch, manifest row, modality)`` only.

    So augmentation does not depend on the batch, the worker, the number of workers or the order
    samples are decoded in; ``epoch=None`` (evaluation) has its own stream, and each modality its own
    (an image's crop and the same sample's audio shift are not drawn from one stream).
    """
    e = -1 if epoch is None else int(epoch)
    salt = zlib.crc32(modality.encode()) if modality else 0
    return ((int(seed) * 1_000_003 + e + 1) * 2_000_003 + int(row) + salt * 7_919) % (2**63 - 1)


def apply_transforms(inputs: dict[str, Tensor], present: dict[str, Tensor], rows: Tensor | None,
                     readers: dict[str, Any] | None, seed: int, epoch: int | None) -> None:
    """Apply each modality reader's ``sample_transform`` to every present sample of a batch, in place.

    ``epoch`` given: training transforms (``sample_transform(train=True)``); None: evaluation
    (``train=False``). Each sample gets a generator seeded by :func:`sample_seed`.

    Raises:
        ComponentError: a transform changed a sample's shape or dtype.
    """
    if not readers or rows is None:
        return
    from mtmm_train.errors import ComponentError  # local: errors is light, but keep base import-free

    for m, reader in readers.items():
        fn = reader.sample_transform(train=epoch is not None)
        if fn is None or m not in inputs:
            continue
        x, rows_of = inputs[m], rows.tolist()
        for j in present[m].nonzero().flatten().tolist():
            gen = torch.Generator().manual_seed(sample_seed(seed, epoch, rows_of[j], m))
            y = fn(x[j], gen)
            if y.shape != x.shape[1:] or y.dtype != x.dtype:
                raise ComponentError(f"dataset.modalities.{m}: the sample transform returned {y.dtype} "
                                     f"{tuple(y.shape)} for {x.dtype} {tuple(x.shape[1:])}; it must keep the shape "
                                     "and dtype")
            x[j] = y


@dataclass
class TensorSplit:
    """One split held as whole tensors (first dimension = samples), batched by index.

    Attributes mirror :class:`~mtmm_train.batch.Batch`, over all samples of the split, plus:

    Attributes:
        rows: ``(N,)`` the manifest row of each sample (None: no manifest), on the host; seeds
            the per-sample transforms.
        readers: modality -> its reader, for modalities whose reader has a ``sample_transform``
            (None: no transforms).
        seed: the run's seed (per-sample transforms).
    """

    inputs: dict[str, Tensor]
    present: dict[str, Tensor]
    targets: dict[str, Tensor]
    labeled: dict[str, Tensor]
    rows: Tensor | None = None
    readers: dict[str, Any] | None = None
    seed: int = 0

    def __len__(self) -> int:
        return next(iter(self.present.values())).shape[0]

    def batch(self, index: Tensor, epoch: int | None = None) -> Batch:
        """Gather the samples at ``index`` into a :class:`Batch` (no per-sample collate).

        Args:
            index: sample positions in this split.
            epoch: the training epoch (per-sample transforms with ``train=True``); None: evaluation.
        """

        def take(d: dict[str, Tensor]) -> dict[str, Tensor]:
            return {k: v.index_select(0, index) for k, v in d.items()}

        b = Batch(take(self.inputs), take(self.present), take(self.targets), take(self.labeled))
        if self.readers and self.rows is not None:
            apply_transforms(b.inputs, b.present, self.rows.index_select(0, index.cpu()), self.readers, self.seed,
                             epoch)
        return b

    def to(self, device: torch.device | str) -> TensorSplit:
        """Return the split with every tensor on ``device`` (``rows`` stay on the host)."""

        def move(d: dict[str, Tensor]) -> dict[str, Tensor]:
            return {k: v.to(device) for k, v in d.items()}

        return TensorSplit(move(self.inputs), move(self.present), move(self.targets), move(self.labeled), self.rows,
                           self.readers, self.seed)

    def select(self, modalities: list[str], tasks: list[str]) -> TensorSplit:
        """Keep only the given modalities and tasks."""
        return TensorSplit(
            {m: self.inputs[m] for m in modalities},
            {m: self.present[m] for m in modalities},
            {t: self.targets[t] for t in tasks},
            {t: self.labeled[t] for t in tasks},
            self.rows,
            {m: r for m, r in self.readers.items() if m in modalities} if self.readers else self.readers,
            self.seed,
        )


@dataclass
class FileSplit:
    """One split whose file modalities are decoded per sample, when a batch is made (``dataset.storage=stream``).

    Only the paths and the small columns live in memory: the main process does not grow with
    the dataset. The loaders run :meth:`batch` in DataLoader workers; it is never moved to a
    device (:meth:`to` returns the split itself), its batches are.

    Attributes:
        tensors: the presence masks of every modality, the inputs of the modalities read in full
            (text, numbers), the targets and label masks, the manifest rows, readers and seed.
        paths: streamed modality -> the file of each sample (None: absent).
        readers: streamed modality -> its reader (``decode(path)``).
        shapes: streamed modality -> ``(shape, dtype)`` of a decoded sample.
        columns: streamed modality -> its manifest column (for messages).
        manifest: the manifest file (for messages).
    """

    tensors: TensorSplit
    paths: dict[str, list[str | None]]
    readers: dict[str, Any]
    shapes: dict[str, tuple[tuple[int, ...], torch.dtype]]
    columns: dict[str, str] = field(default_factory=dict)
    manifest: str | None = None

    @property
    def present(self) -> dict[str, Tensor]:
        return self.tensors.present

    @property
    def targets(self) -> dict[str, Tensor]:
        return self.tensors.targets

    @property
    def labeled(self) -> dict[str, Tensor]:
        return self.tensors.labeled

    def __len__(self) -> int:
        return len(self.tensors)

    def materialize(self) -> TensorSplit:
        """The whole split decoded into memory (evaluation transforms applied): for what needs every
        sample's tensor at once, such as ``mtmm-eval``'s subsets and corruptions of a streamed run."""
        b = self.batch(torch.arange(len(self)))
        return TensorSplit(b.inputs, b.present, b.targets, b.labeled, self.tensors.rows, None, self.tensors.seed)

    def device_decoded(self) -> list[str]:
        """The modalities whose JPEGs are decoded on the training device (image readers' ``decode: device``)."""
        return [m for m, r in self.readers.items() if getattr(r, "decode_at", "host") == "device"]

    def batch(self, index: Tensor, epoch: int | None = None) -> Batch:
        """Decode the samples at ``index`` (each present file with its reader's ``decode``) into a Batch.

        Modalities with ``decode: device`` are decoded here too, in this process, on the CPU (the
        device path of :mod:`mtmm_train.data.device_decode`, which a :class:`StreamingLoader` runs on
        the training device instead).

        Args:
            index: sample positions in this split (on the host).
            epoch: the training epoch (per-sample transforms with ``train=True``); None: evaluation.

        Raises:
            ComponentError: a file could not be decoded, or decoded to another shape or dtype;
                names the modality, the file and its manifest row.
        """
        b, encoded = self.parts(index, epoch)
        if encoded:
            from mtmm_train.data.device_decode import decode_into

            decode_into(b.inputs, encoded, self, "cpu")
        return b

    def parts(self, index: Tensor, epoch: int | None = None) -> tuple[Batch, dict[str, Any]]:
        """What a DataLoader worker makes of the samples at ``index``: the batch, and the JPEGs left to decode.

        Returns:
            The batch (the JPEG rows of ``decode: device`` modalities still zeros) and modality ->
            :class:`~mtmm_train.data.device_decode.EncodedImages` of those JPEGs (empty without such
            modalities). Per-sample transforms are applied to the other modalities (an image reader
            with ``decode: device`` has none: it refuses per-sample augmentation).

        Raises:
            ComponentError: as :meth:`batch`.
        """
        from mtmm_train.data.readers.base import where
        from mtmm_train.errors import ComponentError

        t = self.tensors
        index = index.cpu()

        def take(d: dict[str, Tensor]) -> dict[str, Tensor]:
            return {k: v.index_select(0, index) for k, v in d.items()}

        present = take(t.present)
        inputs = take(t.inputs)
        rows = t.rows.index_select(0, index) if t.rows is not None else index
        deferred = self.device_decoded()
        packers: dict[str, Any] = {}
        if deferred:
            from mtmm_train.data.device_decode import Packer, jpeg_header

            packers = {m: Packer() for m in deferred}
        for m, reader in self.readers.items():
            shape, dtype = self.shapes[m]
            out = torch.zeros(len(index), *shape, dtype=dtype)
            paths = self.paths[m]
            for j, i in enumerate(index.tolist()):
                path = paths[i]
                if path is None:
                    continue
                at = where(self.columns.get(m, m), int(rows[j]), self.manifest)
                try:
                    if m in packers:  # decode=device: only the bytes of a JPEG the device can decode
                        with open(path, "rb") as f:
                            data = f.read()
                        head = jpeg_header(data)
                        if head is not None and head.device_ok:
                            packers[m].add(data, j, head.orientation, int(rows[j]), i)
                            continue
                        x = reader.decode(io.BytesIO(data))  # any other file: on the host, as decode=host
                    else:
                        x = reader.decode(path)
                except Exception as e:  # one line naming the file and its row, not a worker's traceback
                    raise ComponentError(f"dataset.modalities.{m}: {path} ({at}) could not be decoded: "
                                         f"{type(e).__name__}: {' '.join(str(e).split())[:160]}; fix or replace the "
                                         "file, or empty the cell") from None
                if tuple(x.shape) != tuple(shape) or x.dtype != dtype:
                    raise ComponentError(f"dataset.modalities.{m}: {path} ({at}) decodes to {x.dtype} "
                                         f"{tuple(x.shape)}, but the modality is {dtype} {tuple(shape)}; every file "
                                         "of a modality must decode to one shape")
                out[j] = x
            inputs[m] = out
        b = Batch(inputs, present, take(t.targets), take(t.labeled))
        readers = {m: r for m, r in t.readers.items() if m not in packers} if t.readers else t.readers
        apply_transforms(b.inputs, b.present, rows, readers, t.seed, epoch)
        return b, {m: p.pack() for m, p in packers.items() if p.slots}

    def to(self, device: torch.device | str) -> FileSplit:
        """The split itself: it stays on the host (its batches are moved by the loader)."""
        return self

    def select(self, modalities: list[str], tasks: list[str]) -> FileSplit:
        """Keep only the given modalities and tasks."""
        t = self.tensors
        tensors = TensorSplit({m: x for m, x in t.inputs.items() if m in modalities},
                              {m: t.present[m] for m in modalities},
                              {k: t.targets[k] for k in tasks}, {k: t.labeled[k] for k in tasks}, t.rows,
                              {m: r for m, r in t.readers.items() if m in modalities} if t.readers else t.readers,
                              t.seed)
        keep = [m for m in self.readers if m in modalities]
        return FileSplit(tensors, {m: self.paths[m] for m in keep}, {m: self.readers[m] for m in keep},
                         {m: self.shapes[m] for m in keep}, {m: c for m, c in self.columns.items() if m in keep},
                         self.manifest)


Split = TensorSplit | FileSplit


@dataclass
class MultiModalData:
    """What a dataset builder returns.

    Attributes:
        modalities: name -> :class:`ModalitySpec`, in a fixed order.
        tasks: name -> :class:`TaskSpec`, in a fixed order.
        splits: ``"train"``, ``"val"`` and optionally ``"test"`` -> :class:`TensorSplit` or :class:`FileSplit`.
        learned: ``modalities.<name>`` or ``tasks.<name>`` -> what its reader learned from the
            training split, as plain data (class names, standardisation statistics, a digest of
            the vocabulary; see ``Reader.learned``). Part of the data's fingerprint, which a
            resumed run must match (:func:`mtmm_train.checkpoint.data_fingerprint`).
        storage: ``memory`` (whole tensors, moved to the device), ``stream`` (:class:`FileSplit`s:
            decoded per sample in DataLoader workers) or ``cache`` (tensors memory-mapped from the
            disk cache, batched in DataLoader workers). The recipe keeps ``stream`` and ``cache``
            splits on the host and streams both training and evaluation through workers.
        state: ``modalities.<name>`` or ``tasks.<name>`` -> its reader's full state
            (``ReadResult.state``: a vocabulary's words, statistics, classes), with which the reader reads
            new rows without the training split (``Reader.read_with``); checkpoints keep it for
            ``mtmm-predict``. A reader absent here (data from an older cache entry) has none.
    """

    modalities: dict[str, ModalitySpec]
    tasks: dict[str, TaskSpec]
    splits: dict[str, TensorSplit | FileSplit]
    learned: dict[str, dict[str, Any]] = field(default_factory=dict)
    storage: str = "memory"
    state: dict[str, dict[str, Any]] = field(default_factory=dict)

    def select(self, modalities: list[str], tasks: list[str]) -> MultiModalData:
        """Keep only the given modalities and tasks (in the given order)."""
        return MultiModalData(
            {m: self.modalities[m] for m in modalities},
            {t: self.tasks[t] for t in tasks},
            {k: s.select(modalities, tasks) for k, s in self.splits.items()},
            {k: v for k, v in self.learned.items()
             if k in {f"modalities.{m}" for m in modalities} | {f"tasks.{t}" for t in tasks}},
            self.storage,
            {k: v for k, v in self.state.items()
             if k in {f"modalities.{m}" for m in modalities} | {f"tasks.{t}" for t in tasks}},
        )
