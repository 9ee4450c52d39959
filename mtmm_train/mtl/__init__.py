"""Multi-task architectures: from the fused ``z`` to one feature tensor per task."""

from mtmm_train.mtl.base import MTLArchitecture
from mtmm_train.mtl.hard_sharing import HardSharing

__all__ = ["HardSharing", "MTLArchitecture"]
