"""Precomputed arrays (``.npy`` files), e.g. embeddings or features from another model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mtmm_train.batch import ModalitySpec
from mtmm_train.data.manifest import Table, is_empty
from mtmm_train.data.readers.base import ModalityReader, ReadContext, ReadResult, decode_files, resolve, stack_present
from mtmm_train.errors import ComponentError

KINDS = {1: "vector", 2: "sequence", 3: "image"}  # by the arrays' number of dimensions


class ArrayReader(ModalityReader):
    """A column of ``.npy`` paths -> float tensors of one shared shape.

    The kind follows the number of dimensions: ``(F,)`` vector, ``(C, L)`` sequence,
    ``(C, H, W)`` image.

    Args:
        name: the modality name (passed in by the dataset).
        column: the column of paths (relative to the manifest's folder); null: ``name``.
    """

    reads_files = True

    @staticmethod
    def decode(path: Path) -> Tensor:
        """Load one array (no pickled objects) as float32."""
        return torch.from_numpy(np.load(path, allow_pickle=False).astype(np.float32))

    def read(self, table: Table, ctx: ReadContext) -> ReadResult[ModalitySpec]:
        cells = table[self.column]
        rows = [i for i, v in enumerate(cells) if not is_empty(v)]
        paths = [resolve(ctx.root, cells[i]) for i in rows]
        arrays = decode_files(paths, self.decode, ctx, "NumPy .npy arrays")
        if not arrays:
            raise ComponentError(f"column '{self.column}' has no paths; fill it or remove the modality")
        shape = tuple(arrays[0].shape)
        if len(shape) not in KINDS:
            raise ComponentError(f"the arrays have shape {shape}; allowed: 1 to 3 dimensions (F,), (C, L) or "
                                 "(C, H, W)")
        for p, a in zip(paths, arrays, strict=True):
            if tuple(a.shape) != shape:
                raise ComponentError(f"'{p}' has shape {tuple(a.shape)}, but '{paths[0]}' has {shape}; every array "
                                     "of a modality must have the same shape")
        out: list[Tensor | None] = [None] * len(cells)
        for i, x in zip(rows, arrays, strict=True):
            out[i] = x
        return ReadResult(*stack_present(out, shape), ModalitySpec(self.name, shape, KINDS[len(shape)]))
