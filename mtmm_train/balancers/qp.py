"""Small convex quadratic programs on a Gramian, solved exactly: MGDA's min-norm point, UPGrad's
dual-cone projections, and CAGrad's dual.

Each problem is about an update ``d = J^T x``, a combination of the task gradients (the rows of
``J``), so it is written in terms of the Gramian ``G = J J^T`` only. Three things make the answers
exact, and robust to gradients whose norms are orders of magnitude apart:

* The basis of unit gradients: with ``s_i = |g_i|`` and ``y = s * x``, ``x^T G x = y^T C y`` where
  ``C = D^-1/2 G D^-1/2`` holds the gradients' cosines (unit diagonal). A ridge added to ``C`` is
  relative to each gradient's own norm; added to ``G`` (as torchjd does, after dividing it by its
  trace) the same ridge swamps a gradient 1,000 times smaller than the others.
* quadprog (Goldfarb-Idnani, a dual active-set method) needs a positive definite matrix: ``C`` gets
  a ridge on its diagonal, plus its most negative eigenvalue if rounding made it indefinite (a
  Gramian computed in float32 can be, by ~1e-7).
* The ridge only guides quadprog to the active constraints: the problem is then solved again
  without it on that active set (one linear system on the free variables; least squares when the
  gradients are linearly dependent). That answer replaces quadprog's when it meets the optimality
  (KKT) conditions of the unridged problem better. When neither is accurate to rounding (a ridge
  can change the active set; a tiny one makes quadprog's arithmetic inexact when the gradients are
  dependent), the next ridge of :data:`RIDGES` is tried.

Tasks whose gradient is zero (a zero diagonal entry) are left out of the solve; each function says
what weight they get.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from mtmm_train.errors import UserError

#: The ridges quadprog tries in turn (after a caller's own), relative to unit gradients.
RIDGES = (1e-8, 1e-12)

#: CAGrad: the smallest ``|g_w|`` probed, relative to the min-norm point's weights; below it the
#: optimum counts as a vanishing combination. A Gramian determines the norm of a small combination
#: of the gradients to about sqrt(eps) of their norms only.
STATIONARY = 1e-6


def _solve_qp() -> Callable:
    try:
        from quadprog import solve_qp
    except ImportError:
        raise UserError('this balancer needs quadprog, which is not installed; install it with: '
                        'pip install "torchjd[quadprog-projector]==0.18.0"') from None
    return solve_qp


def cosines(gramian: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The Gramian in the basis of unit gradients.

    Returns:
        ``(nonzero, norms, C)``: a mask of the tasks with a non-zero gradient, the norms of those
        gradients, and their Gramian divided by the norms on both sides (their cosines).
    """
    diag = np.diagonal(gramian)
    nonzero = diag > 0
    norms = np.sqrt(diag[nonzero])
    return nonzero, norms, gramian[np.ix_(nonzero, nonzero)] / norms[:, None] / norms[None, :]


def semidefinite(matrix: np.ndarray) -> np.ndarray:
    """The nearest positive semi-definite matrix to a symmetric ``matrix`` (negative eigenvalues set to 0)."""
    values, vectors = np.linalg.eigh(matrix)
    return matrix if values[0] >= 0 else (vectors * np.maximum(values, 0.0)) @ vectors.T


def definite(matrix: np.ndarray, ridge: float) -> np.ndarray:
    """``matrix`` plus the multiple of the identity that lifts its smallest eigenvalue to at least ``ridge``."""
    lowest = float(np.linalg.eigvalsh(matrix)[0])
    return matrix + (ridge + max(0.0, -lowest)) * np.eye(len(matrix))


class Factors:
    """quadprog's ``factorized`` input for ``C`` plus each ridge: ``R^-1`` with ``R^T R = definite(C, ridge)``,
    computed when first asked for.

    Args:
        C: ``(n, n)`` symmetric.
        first: a ridge to try before :data:`RIDGES` (None: those only).
    """

    def __init__(self, C: np.ndarray, first: float | None = None) -> None:
        self.C = C
        self.ridges = list(dict.fromkeys(([first] if first else []) + list(RIDGES)))
        self._done: dict[float, np.ndarray] = {}

    def __iter__(self) -> Iterator[np.ndarray]:
        for ridge in self.ridges:
            if ridge not in self._done:
                self._done[ridge] = np.linalg.inv(np.linalg.cholesky(definite(self.C, ridge)).T)
            yield self._done[ridge]

    def first(self) -> np.ndarray:
        return next(iter(self))


def _lstsq(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.linalg.lstsq(a, b, rcond=None)[0]


def _solutions(a: np.ndarray, b: np.ndarray) -> Iterator[np.ndarray]:
    """Answers to ``a x = b``: by LU (fast), then by least squares (the smallest ``x``: when the
    gradients are linearly dependent ``a`` is singular, and LU's answer may be off or missing)."""
    try:
        x = np.linalg.solve(a, b)
        if np.isfinite(x).all():
            yield x
    except np.linalg.LinAlgError:
        pass
    yield _lstsq(a, b)


class _Best:
    """The candidate with the smallest KKT residual so far; ``accurate`` once it is at rounding level."""

    def __init__(self, residual: Callable[[np.ndarray], float]) -> None:
        self.residual, self.y, self.error = residual, None, np.inf

    def consider(self, y: np.ndarray) -> bool:
        error = self.residual(y)
        if error < self.error:
            self.y, self.error = y, error
        return self.accurate

    @property
    def accurate(self) -> bool:
        return self.y is not None and self.error <= 1e-13 * max(1.0, float(np.abs(self.y).max()))


# ---------------------------------------------------------------- min y^T C y, y >= lower
def _bounded_residual(C: np.ndarray, y: np.ndarray, lower: np.ndarray) -> float:
    """How far ``y`` is from optimal for ``min y^T C y s.t. y >= lower``: the KKT conditions are
    ``y >= lower``, ``C y >= 0`` and ``(y - lower) * (C y) = 0``, i.e. ``min(y - lower, C y) = 0``."""
    return float(np.abs(np.minimum(y - lower, C @ y)).max())


def bounded(C: np.ndarray, lowers: np.ndarray, ridge: float | None = None) -> np.ndarray:
    """``argmin_y y^T C y`` subject to ``y >= lower``, for each row ``lower`` of ``lowers``.

    Args:
        C: ``(n, n)`` positive semi-definite (up to rounding), unit diagonal.
        lowers: ``(k, n)`` non-negative lower bounds.
        ridge: the first ridge quadprog tries (then :data:`RIDGES`); see the module's doc.

    Returns:
        ``(k, n)`` the solutions.
    """
    solve_qp = _solve_qp()
    n = len(C)
    factors = Factors(C, ridge)
    eye, zeros = np.eye(n), np.zeros(n)
    out = np.empty((len(lowers), n))
    for row, lower in enumerate(lowers):
        best = _Best(lambda y, lower=lower: _bounded_residual(C, y, lower))
        for factor in factors:
            y, *_, active = solve_qp(factor, zeros, eye, lower, 0, True)
            free = np.ones(n, dtype=bool)
            free[active - 1] = False
            rows = C[free]
            for x in _solutions(rows[:, free], -rows[:, ~free] @ lower[~free]) if free.any() else ():
                polished = lower.copy()
                polished[free] = x
                if best.consider(polished):
                    break
            if best.accurate or best.consider(y):
                break
        out[row] = np.maximum(best.y, lower)
    return out


def dual_cone_projections(gramian: np.ndarray, ridge: float | None = None) -> np.ndarray:
    """UPGrad's projections: row ``i`` holds the weights ``v`` with ``J^T v`` the projection of
    ``g_i`` onto the dual cone ``{d : J d >= 0}`` of the gradients.

    That is ``v = argmin v^T G v s.t. v >= e_i`` (Proposition 1 of Quinton & Rey, 2024), in the
    basis of unit gradients ``y = s * v / s_i >= e_i``. A zero gradient is its own projection
    (``v = e_i``) and puts no constraint on the others (their ``v_i = 0``).

    Args:
        gramian: ``(m, m)`` float64.
        ridge: the first ridge quadprog tries (see :func:`bounded`).

    Returns:
        ``(m, m)``: row ``i`` the weights of ``g_i``'s projection.
    """
    out = np.eye(len(gramian))
    nonzero, norms, C = cosines(gramian)
    if nonzero.any():
        y = bounded(C, np.eye(len(C)), ridge)  # one problem per non-zero gradient
        out[np.ix_(nonzero, nonzero)] = y * norms[:, None] / norms[None, :]
    return out


def project_onto_dual_cone(gramian: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The weights ``v`` of the projection of ``J^T u`` onto the dual cone of the gradients, for
    ``u = weights >= 0``: ``argmin v^T G v s.t. v >= u``. A zero gradient keeps its ``u_i``."""
    out = weights.astype(np.float64).copy()
    nonzero, norms, C = cosines(gramian)
    scaled = norms * out[nonzero]
    top = scaled.max(initial=0.0)
    if top > 0:
        out[nonzero] = top * bounded(C, (scaled / top)[None])[0] / norms
    return out


# ---------------------------------------------------------------- min 1/2 y^T C y + p.y, y >= 0, c.y = 1
def _simplex_residual(C: np.ndarray, y: np.ndarray, c: np.ndarray, linear: np.ndarray) -> float:
    """How far ``y`` is from optimal for ``min 1/2 y^T C y + linear.y s.t. y >= 0, c.y = 1``: with the
    equality's multiplier ``nu = y.(C y + linear)``, ``min(y, C y + linear - nu c) = 0`` and ``c.y = 1``."""
    gradient = C @ y + linear
    nu = y @ gradient
    return max(float(np.abs(np.minimum(y, gradient - nu * c)).max()), abs(float(c @ y) - 1.0))


def simplex(C: np.ndarray, c: np.ndarray, linear: np.ndarray, factors: Factors, polish: bool = True) -> np.ndarray:
    """``argmin_y 1/2 y^T C y + linear.y`` subject to ``y >= 0`` and ``c.y = 1`` (``c > 0``).

    Args:
        C: ``(n, n)`` positive semi-definite (up to rounding).
        c: ``(n,)`` positive.
        linear: ``(n,)``.
        factors: :class:`Factors` of ``C``.
        polish: solve the active set again without the ridge, and try the next ridges until the
            answer is accurate (see the module's doc); False: quadprog's answer at the first ridge.
    """
    solve_qp = _solve_qp()
    n = len(C)
    constraints = np.concatenate([c[:, None], np.eye(n)], axis=1)
    bounds = np.concatenate([[1.0], np.zeros(n)])
    best = _Best(lambda y: _simplex_residual(C, y, c, linear))
    for factor in factors:
        y, *_, active = solve_qp(factor, -linear, constraints, bounds, 1, True)
        if not polish:
            return y
        free = np.ones(n, dtype=bool)
        free[active[active > 1] - 2] = False  # constraint 1 is the equality, 2.. the bounds y_j >= 0
        k = int(free.sum())
        kkt = np.zeros((k + 1, k + 1))
        kkt[:k, :k], kkt[:k, k], kkt[k, :k] = C[np.ix_(free, free)], -c[free], c[free]
        for x in _solutions(kkt, np.concatenate([-linear[free], [1.0]])):
            polished = np.zeros(n)
            polished[free] = x[:k]
            if best.consider(polished):
                break
        if best.accurate or best.consider(y):
            break
    y = np.maximum(best.y, 0.0)
    return y / (c @ y)


def min_norm_point(gramian: np.ndarray) -> np.ndarray:
    """MGDA: the weights ``a`` of the minimum-norm point of the gradients' convex hull,
    ``argmin a^T G a s.t. a >= 0, sum(a) = 1``.

    In the basis of unit gradients, ``y = s * a / min(s)``: ``min y^T C y s.t. y >= 0, c.y = 1``
    with ``c = min(s) / s`` in ``(0, 1]``. A zero gradient is the answer itself (``a = e_i``: the
    update is zero, a Pareto-stationary point).
    """
    m = len(gramian)
    nonzero, norms, C = cosines(gramian)
    if not nonzero.all():
        return np.eye(m)[int(np.argmin(nonzero))]
    c = norms.min() / norms
    a = simplex(C, c, np.zeros(m), Factors(C)) * c  # a = y * min(s) / s
    return a / a.sum()


# ---------------------------------------------------------------- CAGrad's dual
def _cagrad_gap(C: np.ndarray, c: np.ndarray, q: np.ndarray, radius: float, gamma: np.ndarray,
                zero_rows: bool) -> float:
    """CAGrad's duality gap for ``gamma`` (see :func:`conflict_averse`), in units of ``min(s) |g0|``:
    the dual objective at ``w ~ c * gamma`` minus the worst improvement of its update."""
    improvement = (q + radius * (C @ gamma)) / c  # g_i . d / (min(s) |g0|)
    worst = min(float(improvement.min()), 0.0) if zero_rows else float(improvement.min())
    dual = (gamma @ q + radius * np.sqrt(max(gamma @ C @ gamma, 0.0))) / (c @ gamma)
    return dual - worst


def conflict_averse(C: np.ndarray, norms: np.ndarray, q: np.ndarray, radius: float, xtol: float,
                    zero_rows: bool = False) -> np.ndarray | None:
    """CAGrad's dual, ``min_{w in simplex} w.b + r |g_w|`` (``b_i = g_i . g0``, ``r = radius |g0|``),
    over the non-zero gradients, in the basis of unit gradients ``u_i``.

    With ``w = c * y``, ``c = min(s) / s``, it reads ``min y.q + radius |z|``, ``z = sum_i y_i u_i``,
    over ``y >= 0, c.y = 1``, with ``q_i = u_i . g0 / |g0|``. As ``|z| = min_t (|z|^2 / t + t) / 2``,
    for a fixed ``t`` that is a quadratic program over the simplex (:func:`simplex`), whose answer
    ``y(t)`` is optimal when ``t = |z(t)|``; ``1 - |z(t)| / t`` increases with ``t`` (the problem is
    jointly convex in ``y`` and ``t``), so Brent's method finds its root. The root's active set is
    then solved in closed form: every task of the support ``S`` improves by the same ``P``, and
    ``|z| = 1`` makes that a quadratic equation in ``P``. Of the answers, the one with the smallest
    duality gap is returned.

    Args:
        C: ``(k, k)`` the cosines of the non-zero gradients.
        norms: ``(k,)`` their norms.
        q: ``(k,)`` their cosines with the mean gradient ``g0``.
        radius: CAGrad's ``c``.
        xtol: Brent's tolerance on ``log t``.
        zero_rows: other tasks have a zero gradient (their improvement is 0 whatever the update).

    Returns:
        ``gamma >= 0`` with the update ``d = g0 + radius |g0| sum_i gamma_i u_i`` (and
        ``|sum_i gamma_i u_i| = 1``), or None when the optimal combination vanishes (a
        Pareto-stationary point: the best worst improvement is then 0).
    """
    from scipy.optimize import brentq  # loads slowly; CAGrad only

    k = len(C)
    C = semidefinite(C)  # rounding (a float32 Gramian) would break the monotonicity the search relies on
    c = norms.min() / norms
    factors = Factors(C, RIDGES[-1])  # the root search uses quadprog's answers as they are: the smallest ridge

    def excess(log_t: float) -> float:  # 1 - |z(t)| / t: increasing in t, zero at the optimum
        t = np.exp(log_t)
        y = simplex(C, c, t / radius * q, factors, polish=False)
        return 1.0 - np.sqrt(max(y @ C @ y, 0.0)) / t

    # |z(t)| >= |z| at the min-norm point, and |z| <= sum(y) <= max(1 / c) for any feasible y.
    y0 = simplex(C, c, np.zeros(k), factors)
    low = np.sqrt(max(y0 @ C @ y0, 0.0)) / 2
    low = max(low, STATIONARY * y0.sum())  # below it, a combination vanishes as far as G can tell
    if excess(np.log(low)) >= 0:  # the optimal |z| is below: 0
        return None
    log_t = brentq(excess, np.log(low), np.log(2 / c.min()), xtol=xtol)
    y = simplex(C, c, np.exp(log_t) / radius * q, factors)
    candidates = [y / np.sqrt(y @ C @ y)]
    support = y > 0
    # The closed form on y's support: C_SS gamma = (P c - q) / radius and gamma^T C_SS gamma = 1.
    x_c, x_q = _lstsq(C[np.ix_(support, support)], np.stack([c[support], q[support]], axis=1)).T
    a, b, e = c[support] @ x_c, c[support] @ x_q, q[support] @ x_q - radius**2
    disc = b * b - a * e
    for root in ((b + np.sqrt(disc)) / a, (b - np.sqrt(disc)) / a) if disc >= 0 and a > 0 else ():
        gamma = np.zeros(k)
        gamma[support] = np.maximum((root * x_c - x_q) / radius, 0.0)
        size = np.sqrt(max(gamma @ C @ gamma, 0.0))
        if size > 0:
            candidates.append(gamma / size)
    return min(candidates, key=lambda g: _cagrad_gap(C, c, q, radius, g, zero_rows))
