"""Each gradient aggregator's defining property, over many random and hard Jacobians, in float64.

Random: 24 seeds x T in {2, 3, 5, 8} tasks x D in {10, 1000} dimensions; every other seed spreads
the gradients' norms over 1e-3 .. 1e3 (ratios up to 1e6), every third seed makes them conflict
with the first. Hard: a zero gradient, identical, opposite, nearly identical and linearly
dependent gradients (more tasks than dimensions), norms 1e6 apart, Pareto-stationary sets.

Each check is the paper's definition (optimality conditions, a duality gap, an equation's
residual), computed here from ``J`` itself, not from the solver's intermediate results. The
tolerance is ``TOL = 64 m eps`` (``m`` tasks) times the size of the terms the checked quantity
sums, so it stands for rounding and nothing else; where a method solves a linear system, times
that system's condition number. No input is exempt.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtmm_train.balancers import IMTLG, MGDA, AlignedMTL, CAGrad, NashMTL, PCGrad, UPGrad

EPS = float(np.finfo(np.float64).eps)
TASKS = [f"t{i}" for i in range(8)]


def random_jacobians() -> dict[str, np.ndarray]:
    out = {}
    for seed in range(24):
        rng = np.random.default_rng(seed)
        for m in (2, 3, 5, 8):
            for dim in (10, 1000):
                jac = rng.standard_normal((m, dim))
                if seed % 2:  # norms over 1e-3 .. 1e3
                    jac *= 10.0 ** rng.uniform(-3, 3, size=(m, 1))
                if seed % 3 == 0:  # the others pulled against the first, by up to twice their norm
                    pull = rng.uniform(0, 2, size=(m - 1, 1)) * np.linalg.norm(jac[1:], axis=1, keepdims=True)
                    jac[1:] -= pull * jac[:1] / np.linalg.norm(jac[0])
                out[f"s{seed}-T{m}-D{dim}"] = jac
    return out


def hard_jacobians() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1234)
    g, h, k = rng.standard_normal((3, 6))
    conflict = 1e3 * rng.standard_normal((7, 20))
    return {
        "zero_gradient": np.array([[1.0, 0], [0, 1], [0, 0]]),
        "opposite_pair_and_one": np.array([[1.0, 0], [-1, 0], [0, 1]]),  # 0 in the hull
        "norms_1e6_apart": np.array([[1e-3, 0], [-600, 800]]),
        "diag_1_1e4": np.array([[1.0, 0], [0, 1e4]]),
        "identical": np.stack([g, g, h]),
        "opposite": np.stack([g, -2 * g]),
        "opposite_and_one": np.stack([g, -2 * g, h]),
        "five_in_2d": rng.standard_normal((5, 2)),
        "five_in_3d_norms_1e6_apart": rng.standard_normal((5, 3)) * np.array([[1e-3], [1e3], [1.0], [30.0], [0.03]]),
        "sum_of_two": np.stack([g, h, g + h]),
        "nearly_identical": np.stack([g, g + 1e-9 * h, k]),
        "zero_and_norms_1e6_apart": np.stack([g, 0 * g, 1e-3 * h, 1e3 * k]),
        "triangle": np.array([[1.0, 0], [-0.5, np.sqrt(3) / 2], [-0.5, -np.sqrt(3) / 2]]),  # sums to 0
        "tiny_against_seven": np.concatenate([conflict, -1e-3 * conflict.sum(0, keepdims=True) / 1e3]),
    }


JACOBIANS = {**random_jacobians(), **hard_jacobians()}
IDS = list(JACOBIANS)


def tol(m: int) -> float:
    return 64 * m * EPS


def weights(method: object, jac: np.ndarray) -> np.ndarray:
    return method.weights(torch.from_numpy(jac @ jac.T)).numpy()


def safe(norms: np.ndarray) -> np.ndarray:
    return np.where(norms > 0, norms, 1.0)


# ---------------------------------------------------------------- MGDA
@pytest.mark.parametrize("key", IDS)
def test_mgda_meets_the_min_norm_optimality_conditions(key: str) -> None:
    """Sener & Koltun: ``a`` in the simplex minimises ``|J^T a|``; for the convex problem the KKT
    conditions are necessary and sufficient: ``g_i . d >= |d|^2`` for all ``i``, with equality
    where ``a_i > 0``, i.e. ``min(a_i |g_i|, (g_i . d - |d|^2) / max|g|) = 0``."""
    jac = JACOBIANS[key]
    m, norms = len(jac), np.linalg.norm(jac, axis=1)
    a = weights(MGDA(TASKS[:m]), jac)
    d = a @ jac
    big = norms.max()
    assert (a >= 0).all() and abs(a.sum() - 1) <= tol(m)
    residual = np.minimum(a * norms, (jac @ d - d @ d) / big)
    assert np.abs(residual).max() <= tol(m) * big, residual


# ---------------------------------------------------------------- UPGrad
@pytest.mark.parametrize("reg_eps", [1e-4, 1e-12])
@pytest.mark.parametrize("key", IDS)
def test_upgrad_projects_onto_the_dual_cone_and_conflicts_with_no_task(key: str, reg_eps: float) -> None:
    """Quinton & Rey: ``p_i = J^T v_i`` is the projection of ``g_i`` onto the dual cone
    ``{x : J x >= 0}``: ``v_i >= e_i``, ``J p_i >= 0`` and ``(v_i - e_i) * (J p_i) = 0`` (KKT of
    ``min v^T G v s.t. v >= e_i``). The update is the mean of the ``p_i``, so ``J d >= 0``."""
    jac = JACOBIANS[key]
    m, norms = len(jac), np.linalg.norm(jac, axis=1)
    method = UPGrad(TASKS[:m], reg_eps=reg_eps, norm_eps=0.0)
    gram = torch.from_numpy(jac @ jac.T)
    projections = method.projections(gram)
    assert torch.equal(method.weights(gram), projections.mean(0))
    V = projections.numpy()
    for i, v in enumerate(V):
        e, p = np.eye(m)[i], v @ jac
        size = np.abs(v) @ norms  # the terms p sums
        assert (v >= e).all()
        assert (jac @ p >= -tol(m) * norms * size).all(), (i, jac @ p)
        complementarity = np.minimum((v - e) * norms, jac @ p / safe(norms))
        assert np.abs(complementarity).max() <= tol(m) * size, (i, complementarity)
    w = V.mean(0)
    d = w @ jac
    assert (jac @ d >= -tol(m) * norms * (np.abs(w) @ norms)).all(), jac @ d


# ---------------------------------------------------------------- CAGrad
@pytest.mark.parametrize("c", [0.4, 0.9])
@pytest.mark.parametrize("key", IDS)
def test_cagrad_duality_gap_is_zero(key: str, c: float) -> None:
    """Liu et al.: ``d`` maximises ``min_i g_i . d`` over the ball ``|d - g0| <= c |g0|``; for any
    ``w`` in the simplex, ``g_w . g0 + c |g0| |g_w|`` bounds that maximum from above, so ``d`` is
    optimal exactly when some ``w`` (the dual's answer) closes the gap."""
    jac = JACOBIANS[key]
    m, norms = len(jac), np.linalg.norm(jac, axis=1)
    lam, w = (x.numpy() for x in CAGrad(TASKS[:m], c=c).primal_dual(torch.from_numpy(jac @ jac.T)))
    d, g0 = lam @ jac, jac.mean(0)
    radius = c * np.linalg.norm(g0)
    assert np.linalg.norm(d - g0) <= radius + tol(m) * np.abs(lam) @ norms
    assert (w >= 0).all() and abs(w.sum() - 1) <= tol(m)
    gw, worst = w @ jac, int(np.argmin(jac @ d))
    gap = gw @ g0 + radius * np.linalg.norm(gw) - jac[worst] @ d
    # The size of the terms each side sums: g_worst . d, and g_w . g0 + r |g_w|.
    scale = norms[worst] * (np.abs(lam) @ norms) + (np.linalg.norm(g0) + radius) * (np.abs(w) @ norms)
    assert abs(gap) <= tol(m) * scale, gap


# ---------------------------------------------------------------- Nash-MTL
@pytest.mark.parametrize("key", IDS)
def test_nash_mtl_solves_its_equation_on_the_non_zero_gradients(key: str) -> None:
    """Navon et al.: ``(G a)_i = 1 / a_i``, here with the ridge on the unit-gradient scale,
    ``a_i (G a)_i + ridge |g_i|^2 a_i^2 = 1`` for every non-zero gradient; a zero one gets 0.
    The residual sums ``m`` terms ``b_i C_ij b_j`` (``b = |g| a``), rounded."""
    jac = JACOBIANS[key]
    m, norms = len(jac), np.linalg.norm(jac, axis=1)
    ridge = 1e-12
    a = weights(NashMTL(TASKS[:m], ridge=ridge), jac)
    nonzero = norms > 0
    assert (a[nonzero] > 0).all() and (a[~nonzero] == 0).all()
    b = norms[nonzero] * a[nonzero]
    residual = a[nonzero] * ((jac @ jac.T) @ a)[nonzero] + ridge * b**2 - 1
    assert np.abs(residual).max() <= tol(m) * m * b.max() ** 2, residual


@pytest.mark.parametrize("key", [k for k in IDS if k.startswith("s")])
def test_nash_mtl_default_ridge_perturbs_each_task_alike(key: str) -> None:
    """With independent gradients and the default ridge 1e-6, the equation itself holds to about
    the ridge, whatever the norms: the ridge is relative to each gradient's norm."""
    jac = JACOBIANS[key]
    m = len(jac)
    a = weights(NashMTL(TASKS[:m]), jac)
    b = np.linalg.norm(jac, axis=1) * a
    assert np.abs(a * ((jac @ jac.T) @ a) - 1).max() <= 1e-6 * b.max() ** 2 + tol(m) * m * b.max() ** 2


# ---------------------------------------------------------------- IMTL-G
@pytest.mark.parametrize("key", IDS)
def test_imtl_g_projects_equally_on_every_unit_gradient(key: str) -> None:
    """Liu et al. (2021): ``sum(w) = 1`` and ``d . g_i / |g_i|`` the same for every non-zero
    gradient, by least squares. Where the system is singular (dependent gradients) the part of it
    below the pseudo-inverse's cutoff cannot be met, and shows in the spread."""
    jac = JACOBIANS[key]
    m, norms = len(jac), np.linalg.norm(jac, axis=1)
    w = weights(IMTLG(TASKS[:m]), jac)
    nonzero = norms > 0
    assert (w[~nonzero] == 0).all()
    units = jac[nonzero] / norms[nonzero, None]
    spread = np.ptp(units @ (w @ jac))
    # The system: differences of projections = 0, sum of weights = 1; its conditioning and the
    # part of its right-hand side outside the range the pseudo-inverse keeps.
    P = units @ jac[nonzero].T
    A = np.concatenate([P[:1] - P[1:], np.ones((1, nonzero.sum()))])
    U, S, _ = np.linalg.svd(A)
    kept = S > S[0] * max(A.shape) * EPS
    rhs = np.zeros(len(A))
    rhs[-1] = 1.0
    unreachable = np.linalg.norm(U[:, len(S):].T @ rhs) + np.linalg.norm(U[:, :len(S)][:, ~kept].T @ rhs)
    condition = S[0] / S[kept][-1]
    assert abs(w.sum() - 1) <= tol(m) * condition * np.abs(w).sum() + unreachable
    # Norm-wise: an error of condition * eps * |w| in w moves d by up to that times the largest norm.
    assert spread <= tol(m) * condition * np.abs(w).sum() * norms.max() + 2 * unreachable, (spread, condition)


# ---------------------------------------------------------------- Aligned-MTL
@pytest.mark.parametrize("key", IDS)
def test_aligned_mtl_is_its_svd_definition(key: str) -> None:
    """Senushkin et al.: ``J = U S V^T`` -> ``s_min U V^T`` over the non-zero singular values
    (torchjd's cutoff: eigenvalues of ``G`` above ``m eps`` times the largest), mean of its rows.
    Computed from ``G``'s eigenvalues, so accurate to ``eps`` times the squared condition number."""
    jac = JACOBIANS[key]
    m = len(jac)
    d = weights(AlignedMTL(TASKS[:m]), jac) @ jac
    U, S, Vt = np.linalg.svd(jac, full_matrices=False)
    rank = int((S**2 > S[0] ** 2 * m * EPS).sum())
    expected = (S[rank - 1] * U[:, :rank] @ Vt[:rank]).mean(0)
    assert np.linalg.norm(d - expected) <= tol(m) * (S[0] / S[rank - 1]) ** 2 * S[rank - 1]


# ---------------------------------------------------------------- PCGrad
@pytest.mark.parametrize("key", IDS)
def test_pcgrad_is_its_projection_definition_for_a_fixed_order(key: str) -> None:
    """Yu et al., Algorithm 1, on the gradients themselves: ``g_i``, projected in the given order
    off each ``g_j`` its current value conflicts with; the sum over ``i``."""
    jac = JACOBIANS[key]
    m, norms = len(jac), np.linalg.norm(jac, axis=1)
    rng = np.random.default_rng(m)
    orders = [rng.permutation(m).tolist() for _ in range(m)]
    d = PCGrad.project(torch.from_numpy(jac @ jac.T), orders).numpy() @ jac
    expected = np.zeros(jac.shape[1])
    for i, order in enumerate(orders):
        g = jac[i].copy()
        for j in order:
            if j != i and g @ jac[j] < 0:
                g -= (g @ jac[j]) / (jac[j] @ jac[j]) * jac[j]
        expected += g
    assert np.linalg.norm(d - expected) <= tol(m) * m * norms.sum()


# ---------------------------------------------------------------- a Gramian computed in float32
@pytest.mark.parametrize("key", [k for k in IDS if not k.startswith("s") or k.startswith(("s0-", "s1-", "s3-"))])
def test_a_float32_gramian_gives_answers_as_exact_as_float32(key: str) -> None:
    """The training step computes the Gramian in float32 (then solves in float64): rounding can
    make it indefinite, by ~1e-7. Every aggregator answers, finitely, and MGDA's and UPGrad's
    conditions hold to float32's precision, checked on the float32 gradients themselves."""
    jac32 = torch.from_numpy(JACOBIANS[key]).float()
    gram = (jac32 @ jac32.T).double()
    jac = jac32.double().numpy()
    m, norms = len(jac), np.linalg.norm(jac, axis=1)
    loose = 64 * m * float(np.finfo(np.float32).eps)
    for cls in (MGDA, UPGrad, CAGrad, NashMTL, IMTLG, AlignedMTL, PCGrad):
        assert torch.isfinite(cls(TASKS[:m]).solve(gram)).all(), cls.__name__
    a = MGDA(TASKS[:m]).solve(gram).numpy()
    d = a @ jac
    assert np.abs(np.minimum(a * norms, (jac @ d - d @ d) / norms.max())).max() <= loose * norms.max()
    w = UPGrad(TASKS[:m], norm_eps=0.0).solve(gram).numpy()
    assert (jac @ (w @ jac) >= -loose * norms * (np.abs(w) @ norms)).all()
