"""mtmm-train: config-driven training of multi-task, multi-modal models in PyTorch."""

__version__ = "0.1.0"
