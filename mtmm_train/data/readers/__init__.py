"""Readers: map manifest columns to modalities (inputs) and tasks (targets), one class per file."""

from mtmm_train.data.readers.array import ArrayReader
from mtmm_train.data.readers.audio import AudioReader
from mtmm_train.data.readers.base import ModalityReader, ReadContext, Reader, ReadResult, TargetReader
from mtmm_train.data.readers.binary import BinaryLabel
from mtmm_train.data.readers.image import ImageReader
from mtmm_train.data.readers.label import ClassLabel
from mtmm_train.data.readers.multilabel import MultiLabel
from mtmm_train.data.readers.numeric import NumericReader
from mtmm_train.data.readers.regression import NumericTarget
from mtmm_train.data.readers.text import TextReader
from mtmm_train.data.readers.video import VideoReader

__all__ = [
    "ArrayReader",
    "AudioReader",
    "BinaryLabel",
    "ClassLabel",
    "ImageReader",
    "ModalityReader",
    "MultiLabel",
    "NumericReader",
    "NumericTarget",
    "ReadContext",
    "ReadResult",
    "Reader",
    "TargetReader",
    "TextReader",
    "VideoReader",
]
