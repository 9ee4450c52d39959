"""Balancers: turn per-task losses into parameter gradients (loss weighting or aggregation).

Loss weighting (one backward of a weighted sum): static, uncertainty, DWA, GradNorm, RLW, FAMO.
Gradient aggregation (weights from the Gramian of per-task gradients, in representation or
parameter space): PCGrad, MGDA, CAGrad, UPGrad, Nash-MTL, IMTL-G, Aligned-MTL.

A new balancer is one module here, ``<name>.py``, holding one subclass of :class:`LossWeighting`
or :class:`GradientAggregation`, and its config ``configs/balancer/<name>.yaml``;
:func:`all_balancers` finds it, and so do the tests and ``scripts/bench_balancers.py``.
"""

from __future__ import annotations

import importlib
import pkgutil

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
from mtmm_train.balancers.weighting import LossWeighting

FAMILIES = (LossWeighting, GradientAggregation)


def all_balancers() -> dict[str, type[Balancer]]:
    """name -> class of every balancer of this package, sorted by name; ``cls.family`` tells its family.

    A balancer is a subclass of a family's base class (:data:`FAMILIES`) defined in a module of
    this package; its name is the module's, which is also its config's
    (``configs/balancer/<name>.yaml``; ``tests/test_balancers.py`` checks both ways).

    Raises:
        TypeError: a module defines more than one balancer.
    """
    found: dict[str, type[Balancer]] = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        classes = [c for c in vars(module).values() if isinstance(c, type) and issubclass(c, FAMILIES)
                   and c not in FAMILIES and c.__module__ == module.__name__]
        if len(classes) > 1:
            raise TypeError(f"{module.__name__} defines {len(classes)} balancers "
                            f"({', '.join(c.__name__ for c in classes)}); one module per balancer")
        if classes:
            found[info.name] = classes[0]
    return dict(sorted(found.items()))


__all__ = [
    "FAMILIES",
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
    "LossWeighting",
    "NashMTL",
    "PCGrad",
    "RandomWeighting",
    "StaticWeights",
    "UPGrad",
    "UncertaintyWeighting",
    "all_balancers",
]
