"""Multi-task architectures: from the fused ``z`` to one feature tensor per task."""

from mtmm_train.mtl.base import MTLArchitecture
from mtmm_train.mtl.cgc import CGC
from mtmm_train.mtl.cross_stitch import CrossStitch
from mtmm_train.mtl.hard_sharing import HardSharing
from mtmm_train.mtl.mmoe import MMoE
from mtmm_train.mtl.ple import PLE

__all__ = ["CGC", "PLE", "CrossStitch", "HardSharing", "MMoE", "MTLArchitecture"]
