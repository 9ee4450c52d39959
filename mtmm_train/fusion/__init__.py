"""Fusion methods: ``forward(embs, present) -> z (B, out_dim)``, one file each."""

from mtmm_train.fusion.attention import AttentionFusion
from mtmm_train.fusion.base import DecisionFusion, Fusion, ProjectedFusion, masked_softmax
from mtmm_train.fusion.concat import ConcatFusion
from mtmm_train.fusion.gated import GatedFusion
from mtmm_train.fusion.late import LateFusion
from mtmm_train.fusion.low_rank import LowRankFusion
from mtmm_train.fusion.max import MaxFusion
from mtmm_train.fusion.mean import MeanFusion
from mtmm_train.fusion.product import ProductFusion
from mtmm_train.fusion.sum import SumFusion
from mtmm_train.fusion.tensor import TensorFusion
from mtmm_train.fusion.transformer import TransformerFusion

__all__ = [
    "AttentionFusion",
    "ConcatFusion",
    "DecisionFusion",
    "Fusion",
    "GatedFusion",
    "LateFusion",
    "LowRankFusion",
    "MaxFusion",
    "MeanFusion",
    "ProductFusion",
    "ProjectedFusion",
    "SumFusion",
    "TensorFusion",
    "TransformerFusion",
    "masked_softmax",
]
