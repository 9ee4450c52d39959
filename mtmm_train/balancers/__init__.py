"""Balancers: turn per-task losses into parameter gradients (loss weighting or aggregation).

Loss weighting (one backward of a weighted sum): static, uncertainty, DWA, GradNorm, RLW, FAMO.
Gradient aggregation (weights from the Gramian of per-task gradients, in representation or
parameter space): PCGrad, MGDA, CAGrad, UPGrad, Nash-MTL, IMTL-G, Aligned-MTL.
"""

from mtmm_train.balancers.aggregation import GradientAggregation
from mtmm_train.balancers.aligned_mtl import AlignedMTL
from mtmm_train.balancers.base import BalanceContext, Balancer
from mtmm_train.balancers.cagrad import CAGrad
from mtmm_train.balancers.dwa import DynamicWeightAverage
from mtmm_train.balancers.famo import FAMO
from mtmm_train.balancers.gradnorm import GradNorm
from mtmm_train.balancers.imtl_g import IMTLG
from mtmm_train.balancers.mgda import MGDA
from mtmm_train.balancers.nash_mtl import NashMTL
from mtmm_train.balancers.pcgrad import PCGrad
from mtmm_train.balancers.rlw import RandomWeighting
from mtmm_train.balancers.static import StaticWeights
from mtmm_train.balancers.uncertainty import UncertaintyWeighting
from mtmm_train.balancers.upgrad import UPGrad

__all__ = [
    "FAMO",
    "IMTLG",
    "MGDA",
    "AlignedMTL",
    "BalanceContext",
    "Balancer",
    "CAGrad",
    "DynamicWeightAverage",
    "GradNorm",
    "GradientAggregation",
    "NashMTL",
    "PCGrad",
    "RandomWeighting",
    "StaticWeights",
    "UPGrad",
    "UncertaintyWeighting",
]
