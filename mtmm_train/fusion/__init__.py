"""Fusion methods: ``forward(embs, present) -> z (B, out_dim)``, one file each."""

from mtmm_train.fusion.base import Fusion
from mtmm_train.fusion.concat import ConcatFusion
from mtmm_train.fusion.max import MaxFusion
from mtmm_train.fusion.mean import MeanFusion
from mtmm_train.fusion.product import ProductFusion
from mtmm_train.fusion.sum import SumFusion

__all__ = ["ConcatFusion", "Fusion", "MaxFusion", "MeanFusion", "ProductFusion", "SumFusion"]
