"""Datasets (each returns a :class:`MultiModalData`) and the in-memory batcher."""

from mtmm_train.data.base import MultiModalData, TensorSplit
from mtmm_train.data.loader import InMemoryLoader

__all__ = ["InMemoryLoader", "MultiModalData", "TensorSplit"]
