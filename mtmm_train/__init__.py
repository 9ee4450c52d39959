"""mtmm-train: config-driven training of multi-task, multi-modal models in PyTorch."""

from mtmm_train import resolvers

__version__ = "0.1.0"

resolvers.register()
