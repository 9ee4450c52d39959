"""Each gradient aggregation method against answers computed independently here, in float64.

Fixed Jacobians: orthogonal, aligned, opposite and conflicting gradients; the papers' closed
forms for two tasks (PCGrad, MGDA, UPGrad); direct solutions of each method's defining
equations otherwise. Then ``agg(sJ) = s agg(J)`` where the method is scale-equivariant; the
inputs of issue 18 on which torchjd's or the earlier solvers were wrong; PCGrad's own generator.
Properties over many random and hard inputs: ``tests/test_aggregator_properties.py``.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from conftest import CONFIGS
from omegaconf import OmegaConf
from scipy.optimize import fsolve

from mtmm_train.balancers import MGDA, PCGrad, UPGrad, torchjd_api
from mtmm_train.balancers.aggregation import GradientAggregation
from mtmm_train.balancers.aligned_mtl import AlignedMTL
from mtmm_train.balancers.cagrad import CAGrad
from mtmm_train.balancers.imtl_g import IMTLG
from mtmm_train.balancers.nash_mtl import NashMTL
from mtmm_train.instantiate import build

TOL = 1e-6
TASKS = ["a", "b", "c", "d"]


def J(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


ORTHOGONAL = J([[2.0, 0, 0], [0, 1.0, 0]])
ALIGNED = J([[1.0, 2, 0], [2, 4, 0]])  # g2 = 2 g1
OPPOSITE = J([[1.0, 1, 0], [-2, -2, 0]])  # g2 = -2 g1
CONFLICT = J([[1.0, 1], [-2, 0.5]])  # g1 . g2 < 0
CASES = {"orthogonal": ORTHOGONAL, "aligned": ALIGNED, "opposite": OPPOSITE, "conflict": CONFLICT}


def methods() -> dict[str, GradientAggregation]:
    """Every method, with settings for exact answers (tiny regularisers, tight tolerances)."""
    return {
        "upgrad": UPGrad(TASKS, reg_eps=1e-12, norm_eps=1e-12),
        "mgda": MGDA(TASKS, epsilon=1e-12, max_iters=10_000),
        "pcgrad": PCGrad(TASKS, seed=0),
        "cagrad": CAGrad(TASKS, c=0.4),
        "nash_mtl": NashMTL(TASKS, ridge=1e-12),
        "imtl_g": IMTLG(TASKS),
        "aligned_mtl": AlignedMTL(TASKS),
    }


def close(actual: torch.Tensor, expected: torch.Tensor | np.ndarray) -> None:
    expected = torch.as_tensor(expected, dtype=torch.float64)
    assert torch.allclose(actual, expected, atol=TOL, rtol=TOL), f"{actual.tolist()} != {expected.tolist()}"


# ---------------------------------------------------------------- independent answers
def pcgrad_two(jac: torch.Tensor) -> torch.Tensor:
    """Yu et al. 2020, Algorithm 1 with two tasks: project each gradient off the other if they conflict."""
    g1, g2 = jac
    dot = g1 @ g2
    p1 = g1 - dot / (g2 @ g2) * g2 if dot < 0 else g1
    p2 = g2 - dot / (g1 @ g1) * g1 if dot < 0 else g2
    return p1 + p2


def mgda_two(jac: torch.Tensor) -> torch.Tensor:
    """Sener & Koltun 2018, Algorithm 1: the min-norm point of the segment [g1, g2] in closed form."""
    g1, g2 = jac
    diff = g1 - g2
    alpha = ((g2 - g1) @ g2 / (diff @ diff)).clamp(0, 1) if diff @ diff > 0 else 0.5
    return alpha * g1 + (1 - alpha) * g2


def upgrad_two(jac: torch.Tensor) -> torch.Tensor:
    """With two tasks the dual cone projection of g_i is PCGrad's projection, so UPGrad is PCGrad / 2."""
    return pcgrad_two(jac) / 2


def cagrad_two(jac: torch.Tensor, c: float) -> torch.Tensor:
    """Liu et al. 2021: minimise g_w . g0 + c|g0||g_w| over w = (x, 1-x) by ternary search, then d."""
    g1, g2 = jac.numpy()
    g0 = (g1 + g2) / 2
    r = c * np.linalg.norm(g0)

    def f(x: float) -> float:
        gw = x * g1 + (1 - x) * g2
        return gw @ g0 + r * np.linalg.norm(gw)

    lo, hi = 0.0, 1.0
    for _ in range(200):
        a, b = lo + (hi - lo) / 3, hi - (hi - lo) / 3
        lo, hi = (lo, b) if f(a) < f(b) else (a, hi)
    gw = (lo + hi) / 2 * g1 + (1 - (lo + hi) / 2) * g2
    return torch.from_numpy(g0 + r * gw / np.linalg.norm(gw))


def nash(jac: torch.Tensor) -> torch.Tensor:
    """Navon et al. 2022: solve G a = 1 / a with SciPy's root finder, d = a @ J."""
    G = (jac @ jac.T).numpy()
    a = fsolve(lambda a: G @ a - 1 / a, np.ones(len(G)) / np.sqrt(np.diag(G)), xtol=1e-14)
    assert np.allclose(G @ a * a, 1, atol=1e-9)
    return torch.from_numpy(a) @ jac


def aligned_mtl(jac: torch.Tensor) -> torch.Tensor:
    """Senushkin et al. 2023: J = U S V^T -> s_min U V^T over the nonzero singular values; mean row."""
    U, S, Vt = np.linalg.svd(jac.numpy(), full_matrices=False)
    r = int((S > 1e-10 * S.max()).sum())
    return torch.from_numpy((S[r - 1] * U[:, :r] @ Vt[:r]).mean(0))


# ---------------------------------------------------------------- known answers
@pytest.mark.parametrize("case", list(CASES))
def test_two_task_closed_forms(case: str) -> None:
    jac, m = CASES[case], methods()
    close(m["pcgrad"].aggregate(jac), pcgrad_two(jac))
    close(m["mgda"].aggregate(jac), mgda_two(jac))
    close(m["upgrad"].aggregate(jac), upgrad_two(jac))
    close(m["cagrad"].aggregate(jac), cagrad_two(jac, 0.4))
    close(m["aligned_mtl"].aggregate(jac), aligned_mtl(jac))


def test_hand_worked_answers() -> None:
    m = methods()
    # No conflict: PCGrad sums, UPGrad averages; MGDA's min-norm point of (2,0,0),(0,1,0) has
    # weights 1/5, 4/5 (inverse squared norms).
    close(m["pcgrad"].aggregate(ORTHOGONAL), [2.0, 1.0, 0.0])
    close(m["upgrad"].aggregate(ORTHOGONAL), [1.0, 0.5, 0.0])
    close(m["mgda"].aggregate(ORTHOGONAL), [0.4, 0.8, 0.0])
    # Opposite gradients: a Pareto-stationary point, no common descent direction.
    for name in ("pcgrad", "mgda", "upgrad", "imtl_g"):
        close(m[name].aggregate(OPPOSITE), [0.0, 0.0, 0.0])
    # Aligned gradients: MGDA picks the shorter one.
    close(m["mgda"].aggregate(ALIGNED), ALIGNED[0])
    # Nash-MTL: orthogonal -> sum of unit vectors; aligned (any positive ratio) -> sqrt(2) u1.
    close(m["nash_mtl"].aggregate(ORTHOGONAL), [1.0, 1.0, 0.0])
    close(m["nash_mtl"].aggregate(ALIGNED), np.sqrt(2) * ALIGNED[0] / ALIGNED[0].norm())
    # CAGrad: c = 0 is the mean; equal orthogonal gradients give (1 + c) g0.
    close(CAGrad(TASKS, c=0.0).aggregate(CONFLICT), CONFLICT.mean(0))
    equal = J([[3.0, 0], [0, 3.0]])
    close(m["cagrad"].aggregate(equal), 1.4 * equal.mean(0))
    # Aligned-MTL: orthogonal rows of norms 2 and 1 both shrink to norm 1.
    close(m["aligned_mtl"].aggregate(ORTHOGONAL), [0.5, 0.5, 0.0])
    # IMTL-G: orthogonal -> weights 1/|g_i| normalised (1/3, 2/3).
    close(m["imtl_g"].aggregate(ORTHOGONAL), [2 / 3, 2 / 3, 0.0])


@pytest.mark.parametrize("seed", [0, 1])
def test_more_tasks_against_defining_equations(seed: int) -> None:
    jac = torch.randn(4, 9, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    jac[1] = -0.8 * jac[0] + 0.3 * jac[1]  # a conflicting pair
    m = methods()
    close(m["nash_mtl"].aggregate(jac), nash(jac))
    close(m["aligned_mtl"].aggregate(jac), aligned_mtl(jac))
    # IMTL-G: weights sum to 1 and the update projects equally on every unit gradient.
    w = m["imtl_g"].solve(jac @ jac.T)
    d = w @ jac
    proj = (jac / jac.norm(dim=1, keepdim=True)) @ d
    assert abs(float(w.sum()) - 1) < TOL and float(proj.max() - proj.min()) < TOL
    # MGDA: at the min-norm point g_i . d >= |d|^2, with equality where w_i > 0 (exact: a QP, not
    # Frank-Wolfe, which was only about 1e-3 close after 10,000 iterations for four tasks).
    w = m["mgda"].solve(jac @ jac.T)
    d = w @ jac
    assert float(w.sum()) == pytest.approx(1) and (w >= 0).all()
    assert torch.all(jac @ d >= d @ d - 1e-12)
    assert torch.allclose((jac @ d)[w > 0], d @ d, atol=1e-12)
    # UPGrad: the update conflicts with no task.
    assert torch.all(jac @ m["upgrad"].aggregate(jac) >= -TOL)
    # CAGrad's update lies within c|g0| of g0.
    g0 = jac.mean(0)
    assert float((m["cagrad"].aggregate(jac) - g0).norm()) <= 0.4 * float(g0.norm()) + TOL


# ---------------------------------------------------------------- scale
@pytest.mark.parametrize("name", ["upgrad", "mgda", "pcgrad", "cagrad", "imtl_g", "aligned_mtl"])
def test_scale_equivariant(name: str) -> None:
    jac = torch.randn(3, 7, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    method = methods()[name]
    if isinstance(method, PCGrad):
        method.generator.manual_seed(0)  # PCGrad's random orders with three tasks
    base = method.aggregate(jac)
    for s in (1e-3, 7.5, 1e4):
        if isinstance(method, PCGrad):
            method.generator.manual_seed(0)
        assert torch.allclose(method.aggregate(s * jac), s * base, rtol=1e-6, atol=1e-9 * s), (name, s)


def test_upgrad_default_is_scale_equivariant_for_small_gradients() -> None:
    """``norm_eps`` is an absolute threshold on the Gramian's trace: at torchjd's 1e-4 (the former
    default) gradients scaled by 1e-3 got the plain mean, which conflicts with a task (relative
    difference 2.5 on this input). The config's default (0) leaves the update scale-equivariant."""
    jac = torch.randn(3, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    jac[1:] -= 1.5 * jac[:1]  # both others conflict with the first
    default = build(OmegaConf.load(CONFIGS / "balancer" / "upgrad.yaml"), "balancer", tasks=TASKS)
    base = default.aggregate(jac)
    assert torch.all(jac @ base >= 0)
    for s in (1e-2, 1e-4, 1e-8):
        assert torch.allclose(default.aggregate(s * jac) / s, base, rtol=1e-9, atol=0), s
    # An explicit norm_eps keeps torchjd's absolute threshold: below it, the mean, conflicts included.
    thresholded = UPGrad(TASKS, norm_eps=1e-4)
    assert torch.allclose(thresholded.aggregate(jac), base, rtol=1e-9, atol=0)  # trace 48: above it
    small = thresholded.aggregate(1e-3 * jac) / 1e-3  # trace 5e-5: below it
    assert torch.allclose(small, jac.mean(0)) and (jac @ small).min() < 0


def test_nash_mtl_is_scale_invariant_so_fp16_must_unscale_first() -> None:
    jac = torch.randn(3, 7, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    method = methods()["nash_mtl"]
    close(method.aggregate(1024.0 * jac), method.aggregate(jac))  # agg(sJ) = agg(J), not s agg(J)


def test_weights_are_computed_in_float64_whatever_the_gramian_dtype() -> None:
    # torchjd's UPGrad refuses a bf16 Gramian (the TypeError seen on an H100 under autocast).
    jac = torch.randn(3, 5, generator=torch.Generator().manual_seed(5))
    gramian = (jac @ jac.T).bfloat16()
    with pytest.raises(TypeError, match="BFloat16"):
        torchjd_api.gramian_weighting("upgrad", norm_eps=1e-4, reg_eps=1e-4)(gramian)
    for name, method in methods().items():
        w = method.solve(gramian)
        assert w.dtype == torch.float64 and torch.isfinite(w).all(), name


def test_a_non_finite_gramian_skips_the_solver() -> None:
    gramian = torch.tensor([[1.0, float("inf")], [float("inf"), 1.0]])
    for name, method in methods().items():
        assert torch.equal(method.solve(gramian), torch.ones(2, dtype=torch.float64)), name


# ---------------------------------------------------------------- issue 18: inputs the solvers got wrong
# Each failed before: Nash-MTL's ridge relative to the mean squared norm, torchjd's MGDA
# (Frank-Wolfe) and UPGrad (ridge relative to the trace), CAGrad answering 0 beside a zero
# gradient. The comments give the earlier answers.
@pytest.mark.parametrize("rho", [1e2, 3e2, 1e3, 1e4])
def test_nash_mtl_with_gradient_norms_far_apart(rho: float) -> None:
    # J = diag(1, rho): a = (1, 1 / rho) solves G a = 1 / a, so d = (1, 1) for any rho. It was 0.25%
    # off at rho = 100, 2.2% at 300, (0.82, 1) at 1000 and (0.14, 1) at 10^4: the ridge, 1e-6 of
    # the mean squared norm, swamped the small task. Now 1e-6 of each task's own (d = (1, 1) / sqrt(1 + 1e-6)).
    jac = J([[1.0, 0], [0, rho]])
    close(NashMTL(TASKS).aggregate(jac), [1.0, 1.0])
    close(methods()["nash_mtl"].aggregate(jac), [1.0, 1.0])


def test_mgda_is_the_exact_min_norm_point_with_three_tasks() -> None:
    # (1, 0) and (-1, 0) put 0 in the hull: d = 0. torchjd's Frank-Wolfe, at the config's settings,
    # answered (-0.0024, 0.049).
    jac = J([[1.0, 0], [-1, 0], [0, 1]])
    assert float(MGDA(TASKS).aggregate(jac).abs().max()) <= 1e-15
    # Three tasks, the min-norm point on an edge: (2, 0), (0, 1), (2, 2) -> on [g1, g2] at (0.4, 0.8).
    close(MGDA(TASKS).aggregate(J([[2.0, 0], [0, 1], [2, 2]])), [0.4, 0.8])


def test_cagrad_beside_a_task_whose_gradient_is_zero() -> None:
    # No update improves task 3, so the best worst improvement is 0; g0 = (1/3, 1/3) conflicts
    # with no task and is the centre of the ball: the answer. It was d = 0, outside the ball.
    close(CAGrad(TASKS).aggregate(J([[1.0, 0], [0, 1], [0, 0]])), [1 / 3, 1 / 3])
    # Pareto-stationary with every gradient non-zero: g0 = (0, 1/3) is the closest point of the
    # ball where no task loses (J d >= 0 needs d_x = 0).
    close(CAGrad(TASKS).aggregate(J([[1.0, 0], [-1, 0], [0, 1]])), [0.0, 1 / 3])


@pytest.mark.parametrize("reg_eps", [1e-4, 1e-12])
def test_upgrad_conflicts_with_no_task_when_norms_are_1e6_apart(reg_eps: float) -> None:
    # torchjd's UPGrad conflicts with the small task here: cosine -0.60 at reg_eps=1e-4 and -0.35
    # at 1e-12 (its ridge is relative to the trace, 1e6 times the small task's squared norm).
    jac = J([[1e-3, 0], [-600, 800]])
    gram = jac @ jac.T
    torchjd_d = torchjd_api.gramian_weighting("upgrad", norm_eps=1e-4, reg_eps=reg_eps)(gram) @ jac
    assert float(jac[0] @ torchjd_d) / (float(jac[0].norm()) * float(torchjd_d.norm())) < -0.3
    d = UPGrad(TASKS, reg_eps=reg_eps).aggregate(jac)
    assert torch.all(jac @ d >= 0)
    close(d, upgrad_two(jac))  # two tasks: PCGrad / 2


# ---------------------------------------------------------------- PCGrad's generator
def conflicting_gramian(m: int = 4, seed: int = 0) -> torch.Tensor:
    jac = torch.randn(m, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    jac[1:] -= 1.5 * jac[:1]  # every task conflicts with the first: the orders matter
    return jac @ jac.T


def test_pcgrad_leaves_the_global_generator_alone() -> None:
    # torchjd's PCGrad drew its orders from torch's global generator, which dropout and the rest
    # of the run draw from: choosing PCGrad changed them.
    method, gram = PCGrad(TASKS, seed=0), conflicting_gramian()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    for _ in range(3):
        method.weights(gram)
    assert torch.equal(torch.get_rng_state(), before)


def test_pcgrad_draws_torchjd_orders_from_its_seed() -> None:
    gram = conflicting_gramian()
    answers = []
    for seed in range(6):
        torch.manual_seed(seed)
        expected = torchjd_api.gramian_weighting("pcgrad")(gram)  # the same algorithm, the global generator
        got = PCGrad(TASKS, seed=seed).weights(gram)
        assert torch.allclose(got, expected, rtol=1e-12, atol=0), seed
        answers.append(tuple(got.tolist()))
    assert len(set(answers)) > 1  # the orders do change the answer


def test_pcgrad_seed_comes_from_the_run_seed() -> None:
    from conftest import compose_cfg

    from mtmm_train.instantiate import build

    for seed in (0, 7):
        method = build(compose_cfg(["balancer=pcgrad", f"seed={seed}"]).balancer, "balancer", tasks=TASKS)
        assert method.seed == seed
        assert torch.equal(method.generator.get_state(), torch.Generator().manual_seed(seed).get_state())


def test_pcgrad_generator_is_checkpointed_and_resume_is_exact() -> None:
    gram = conflicting_gramian()
    method = PCGrad(TASKS, seed=0)
    for _ in range(3):
        method.weights(gram)
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)  # as the recipe's checkpoint holds it
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    expected = [method.weights(gram) for _ in range(5)]
    resumed = PCGrad(TASKS, seed=99)
    resumed.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(expected, (resumed.weights(gram) for _ in range(5)), strict=True))
    # A checkpoint written before PCGrad had a generator still loads (the generator keeps its seed).
    PCGrad(TASKS, seed=0).load_state_dict({})
