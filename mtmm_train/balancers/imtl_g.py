"""IMTL-G (Liu et al., 2021): an update with equal projections on every task's unit gradient."""

from __future__ import annotations

import torch
from torch import Tensor

from mtmm_train.balancers.aggregation import GradientAggregation


class IMTLG(GradientAggregation):
    """Impartial MTL, gradient part: weights ``w`` summing to one such that the update
    ``d = sum_i w_i g_i`` has the same inner product with every unit task gradient
    ``u_i = g_i / |g_i|`` (`Towards Impartial Multi-task Learning
    <https://openreview.net/forum?id=IMPnRXEWpvr>`_).

    In Gramian terms, ``(G w)_i / |g_i|`` is the same for all ``i`` and ``sum_i w_i = 1``: a
    linear system, solved by least squares with the smallest-norm ``w`` when the gradients are
    linearly dependent (aligned gradients give the mean; exactly opposite ones give a zero
    update). torchjd's ``IMTLGWeighting`` uses ``w ∝ pinv(G) sqrt(diag G)`` instead, which
    agrees for independent gradients but not for dependent ones: for ``g_2 = -2 g_1`` it
    answers ``-5 g_1``, an update that is not impartial.

    Args:
        tasks: task names (passed in by the recipe).
        mode: ``representation`` or ``parameters`` (see :class:`GradientAggregation`).
    """

    def weights(self, gramian: Tensor) -> Tensor:
        m = gramian.shape[0]
        norms = gramian.diagonal().clamp_min(0).sqrt()
        keep = norms > 1e-12 * norms.max().clamp_min(1e-300)
        w = torch.zeros(m, dtype=gramian.dtype)
        if not keep.any():
            return w
        # Tasks with a zero gradient impose no constraint and get no weight.
        G, n = gramian[keep][:, keep], norms[keep]
        projections = G / n[:, None]  # row i: (G w)_i / |g_i| as a function of w
        A = torch.cat([projections[:1] - projections[1:], torch.ones(1, len(n), dtype=G.dtype)])
        b = torch.zeros(len(n), dtype=G.dtype)
        b[-1] = 1.0
        w[keep] = torch.linalg.pinv(A) @ b
        return w
