"""The one module that imports torchjd; the rest of the project calls these functions.

torchjd's API changes between releases (``mtl_backward``/``jac_to_grad`` and the weighting
classes moved or changed in 0.x versions), so it is pinned (``torchjd[quadprog-projector]==0.18.0``
in ``pyproject.toml``) and reached only from here. What torchjd cannot do is worked around here:

* Weights come from a Gramian in float64 on the CPU: torchjd's solvers reject a bf16 Gramian
  (``TypeError: Got unsupported ScalarType BFloat16``) and the QP solver works in float64 anyway.
* Dropping a task is done by the caller, which passes only the rows of labelled tasks: torchjd
  has no notion of a missing task, and a zero row changes MGDA's and UPGrad's answers.
* ``mtl_backward`` differentiates in parallel with ``torch.vmap``, whose batching rules for
  BatchNorm/LayerNorm fail on the mixed dtypes of an autocast graph (torchjd issue 699);
  ``sequential=True`` differentiates one task at a time instead.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Callable

from torch import Tensor, nn

from mtmm_train.errors import UserError

PINNED_VERSION = "0.18.0"
INSTALL_HINT = f'pip install "torchjd[quadprog-projector]=={PINNED_VERSION}"'

log = logging.getLogger("mtmm_train")


def _torchjd():  # noqa: ANN202 - the module object
    try:
        import torchjd
        import torchjd.aggregation
        import torchjd.autojac
    except ImportError:
        raise UserError(f"this balancer needs torchjd, which is not installed; install it with: {INSTALL_HINT}"
                        ) from None
    version = importlib.metadata.version("torchjd")  # torchjd has no __version__
    if version != PINNED_VERSION:
        log.warning("torchjd %s is installed; mtmm-train is tested with %s (%s)", version, PINNED_VERSION, INSTALL_HINT)
    return torchjd


def gramian_weighting(name: str, **params: object) -> Callable[[Tensor], Tensor]:
    """A torchjd weighting: a callable from a Gramian ``(m, m)`` to weights ``(m,)``.

    Args:
        name: ``upgrad`` (params ``norm_eps``, ``reg_eps``), ``mgda`` (``epsilon``,
            ``max_iters``), ``pcgrad``, ``imtl_g`` or ``aligned_mtl`` (``scale_mode``). Only
            Aligned-MTL's balancer uses torchjd's weighting as it is (and MGDA's, as a fallback);
            the others are here for comparison (tests, ``scripts/bench_aggregators.py``).
        params: the method's parameters, as named above.

    Returns:
        The weighting; call it on a float32 or float64 Gramian.

    Raises:
        UserError: torchjd (or quadprog for UPGrad) is missing.
        ValueError: torchjd refused a parameter.
    """
    agg = _torchjd().aggregation
    try:
        if name == "upgrad":
            from torchjd.linalg import QuadprogProjector

            projector = QuadprogProjector(norm_eps=params["norm_eps"], reg_eps=params["reg_eps"])
            return agg.UPGradWeighting(projector=projector)
        if name == "mgda":
            return agg.MGDAWeighting(epsilon=params["epsilon"], max_iters=params["max_iters"])
        if name == "pcgrad":
            return agg.PCGradWeighting()
        if name == "imtl_g":
            return agg.IMTLGWeighting()
        if name == "aligned_mtl":
            return agg.AlignedMTLWeighting(scale_mode=params["scale_mode"])
    except ImportError as e:
        raise UserError(f"balancer {name} needs an optional dependency of torchjd ({e}); {INSTALL_HINT}") from None
    except ValueError as e:  # the builder names the config key
        raise ValueError(f"torchjd's {name} weighting refused a parameter: {e}") from None
    raise ValueError(f"no torchjd weighting named {name!r}")


def shared_jacobians(losses: list[Tensor], features: Tensor, shared_params: list[nn.Parameter],
                     sequential: bool) -> list[Tensor | None]:
    """Jacobians of ``losses`` with respect to ``shared_params``, one ``(m, *p.shape)`` per parameter.

    The task-specific parameters (those after ``features``) receive the gradient of their own
    task's loss in ``.grad``, as ``torchjd.autojac.mtl_backward`` does. The graph is freed.

    Args:
        losses: the scalar losses of the tasks to aggregate (``m`` of them).
        features: the last shared tensor; every parameter after it must be task-specific.
        shared_params: the parameters before ``features``.
        sequential: differentiate one loss at a time (needed for autocast graphs with
            normalisation layers; slower than the default ``vmap``).

    Returns:
        One Jacobian per parameter, or None for a parameter the losses do not depend on.
    """
    autojac = _torchjd().autojac
    autojac.mtl_backward(losses, features=features, shared_params=shared_params,
                         parallel_chunk_size=1 if sequential else None)
    jacobians = []
    for p in shared_params:
        jacobians.append(getattr(p, "jac", None))
        if hasattr(p, "jac"):
            del p.jac  # torchjd accumulates into .jac; the caller combines the rows itself
    return jacobians
