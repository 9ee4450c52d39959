"""Encoders: one per modality, each turns ``(B, *shape)`` into ``(B, D)`` or tokens ``(B, L, D)``."""

from mtmm_train.encoders.base import Encoder
from mtmm_train.encoders.cnn import CNNEncoder
from mtmm_train.encoders.conv1d import Conv1dEncoder
from mtmm_train.encoders.embedding_bag import EmbeddingBagEncoder
from mtmm_train.encoders.frames import FramesEncoder
from mtmm_train.encoders.mlp import MLPEncoder
from mtmm_train.encoders.transformer import TransformerEncoder

__all__ = ["CNNEncoder", "Conv1dEncoder", "EmbeddingBagEncoder", "Encoder", "FramesEncoder", "MLPEncoder",
           "TransformerEncoder"]
