"""Balancers: turn per-task losses into parameter gradients (loss weighting or aggregation)."""

from mtmm_train.balancers.base import BalanceContext, Balancer
from mtmm_train.balancers.static import StaticWeights

__all__ = ["BalanceContext", "Balancer", "StaticWeights"]
