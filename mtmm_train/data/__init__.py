"""Datasets (each returns a :class:`MultiModalData`) and the loaders that batch them."""

from mtmm_train.data.base import FileSplit, MultiModalData, TensorSplit
from mtmm_train.data.dataloader import StreamingLoader
from mtmm_train.data.loader import InMemoryLoader

__all__ = ["FileSplit", "InMemoryLoader", "MultiModalData", "StreamingLoader", "TensorSplit"]
