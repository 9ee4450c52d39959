"""Every balancer config on a tiny model: it trains, drops unlabelled tasks, survives bf16 and fp16.

The model is a one-layer trunk and three linear heads on fixed data, with conflicting tasks
(``b``'s target is close to minus ``a``'s), so that every method has something to balance.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import io
import math
import re
from pathlib import Path

import pytest
import torch
from conftest import CONFIGS, compose_cfg
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

import mtmm_train.balancers
from mtmm_train.balancers import MGDA, RandomWeighting, UPGrad, all_balancers, torchjd_api
from mtmm_train.balancers.aggregation import GradientAggregation
from mtmm_train.balancers.base import BalanceContext, Balancer, SeededGenerator
from mtmm_train.errors import SettingError, UserError
from mtmm_train.instantiate import build

TASKS = ["a", "b", "c"]
A, C = TASKS.index("a"), TASKS.index("c")
# Found, not listed: every config file, and in both spaces every aggregator (a test below checks
# that the config files and the balancer classes match one to one).
BALANCERS = sorted(p.stem for p in (CONFIGS / "balancer").glob("*.yaml"))
AGGREGATORS = [name for name, cls in all_balancers().items() if cls.family == "aggregation"]
CASES = [(b, None) for b in BALANCERS] + [(b, "parameters") for b in AGGREGATORS]


class Tiny(nn.Module):
    """``x (B, 4) -> h (B, 8) -> one output per task``; ``norm`` adds a LayerNorm or BatchNorm."""

    def __init__(self, tasks: list[str] = TASKS, norm: str | None = None) -> None:
        super().__init__()
        layers = [nn.Linear(4, 8)] + {None: [], "layer": [nn.LayerNorm(8)], "batch": [nn.BatchNorm1d(8)]}[norm]
        self.trunk = nn.Sequential(*layers, nn.Tanh())
        self.heads = nn.ModuleDict({t: nn.Linear(8, 1) for t in tasks})

    def forward(self, x: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        h = self.trunk(x)
        return {t: head(h).squeeze(1) for t, head in self.heads.items()}, h


def data(n: int = 32) -> tuple[Tensor, dict[str, Tensor]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    w = torch.randn(4, generator=g)
    ys = {"a": x @ w, "b": -(x @ w) + 0.5 * x[:, 0], "c": x[:, 1] - x[:, 2]}
    return x, ys


@functools.cache
def balancer_config(name: str, mode: str | None) -> DictConfig:
    return compose_cfg([f"balancer={name}"] + ([f"balancer.mode={mode}"] if mode else [])).balancer


def make(name: str, mode: str | None = None, tasks: list[str] = TASKS) -> Balancer:
    """A fresh balancer built from ``configs/balancer/<name>.yaml``, as the recipe builds it."""
    return build(balancer_config(name, mode), "balancer", tasks=tasks)


def step(model: Tiny, balancer: Balancer, x: Tensor, ys: dict[str, Tensor], labeled: dict[str, Tensor],
         autocast: contextlib.AbstractContextManager | None = None,
         scaler: torch.amp.GradScaler | None = None, amp: bool = False, poison: str | None = None,
         index: int = 0, separate: bool = True) -> tuple[Tensor, Tensor]:
    """One forward and balancer backward (masked MSE per task, as the Task classes compute it), called
    as ``training_step`` calls it: returns the ``(T,)`` losses and weights, in task order.

    ``separate``: also pass the per-task scalars (``BalanceContext.task_losses``), as ``training_step`` does.
    """
    scaler = scaler or torch.amp.GradScaler("cpu", enabled=False)
    with autocast or contextlib.nullcontext():
        preds, shared = model(x)
        parts = []
        for t in balancer.tasks:
            per = (preds[t].float() - ys[t]) ** 2
            parts.append(torch.where(labeled[t], per, 0.0).sum() / labeled[t].sum().clamp_min(1))
        if poison:
            i = balancer.tasks.index(poison)
            parts[i] = parts[i] * float("inf")
    losses = torch.stack(parts)
    ctx = BalanceContext(shared, list(model.trunk.parameters()), {t: labeled[t].sum() for t in balancer.tasks},
                         scaler, index, amp, task_losses=parts if separate else ())
    return losses, balancer.backward(losses, ctx)


def all_labeled(n: int = 32, tasks: list[str] = TASKS) -> dict[str, Tensor]:
    return {t: torch.ones(n, dtype=torch.bool) for t in tasks}


def grads(model: nn.Module) -> dict[str, Tensor]:
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


# ---------------------------------------------------------------- contract
@pytest.mark.parametrize(("name", "mode"), CASES, ids=[f"{b}-{m or 'default'}" for b, m in CASES])
def test_every_balancer_config_trains_the_tiny_model(name: str, mode: str | None) -> None:
    torch.manual_seed(0)
    model, balancer = Tiny(), make(name, mode)
    assert isinstance(balancer, Balancer) and balancer.tasks == TASKS
    x, ys = data()
    opt = torch.optim.SGD(list(model.parameters()) + list(balancer.parameters()), lr=0.1)
    first = None
    for _ in range(15):
        opt.zero_grad()
        losses, weights = step(model, balancer, x, ys, all_labeled())
        total = sum(losses.detach().tolist())
        first = total if first is None else first
        assert weights.shape == (len(TASKS),) and weights.dtype == torch.float32
        assert torch.isfinite(weights).all() and not weights.requires_grad
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        opt.step()
    assert total < 0.9 * first, (name, first, total)


def test_every_balancer_has_a_config_and_every_config_a_balancer() -> None:
    classes = all_balancers()
    configs = {p.stem: OmegaConf.load(p) for p in (CONFIGS / "balancer").glob("*.yaml")}
    no_config, no_class = set(classes) - set(configs), set(configs) - set(classes)
    assert not no_config, f"balancers without a configs/balancer/<name>.yaml: {no_config}"
    assert not no_class, f"configs/balancer/<name>.yaml without a mtmm_train/balancers/<name>.py balancer: {no_class}"
    for name, cls in classes.items():
        node = configs[name]
        assert node._target_ == f"{cls.__module__}.{cls.__qualname__}", name
        assert cls.family in ("weighting", "aggregation"), name
        assert cls.__name__ in mtmm_train.balancers.__all__, f"{cls.__name__}: export it in mtmm_train/balancers"
        # Config keys are the constructor's parameters, every one of them (its default lives in the config).
        params = set(inspect.signature(cls).parameters) - {"tasks"}
        assert set(node) - {"_target_"} == params, (name, params)
        # A balancer that draws random numbers does so from a generator of its own, seeded by the run's seed.
        assert ("seed" in params) == issubclass(cls, SeededGenerator), name
        if "seed" in params:
            assert OmegaConf.to_container(node)["seed"] == "${seed}", name


BAD_VALUES = [("upgrad", "mode", "sideways"), ("cagrad", "c", -1), ("dwa", "window", 0),
              ("aligned_mtl", "scale_mode", "max"), ("nash_mtl", "ridge", 0), ("gradnorm", "alpha", -1),
              ("famo", "min_loss", "low"), ("mgda", "max_iters", 2.5), ("static", "weights.a", -1)]


@pytest.mark.parametrize(("name", "param", "value"), BAD_VALUES)
def test_a_bad_value_is_a_plain_error_naming_the_parameter(name: str, param: str, value: object) -> None:
    kwargs = {"weights": {"a": value}} if param == "weights.a" else {param: value}
    p = re.escape(param)
    template = rf"^{p} must be .+, found {re.escape(repr(value))}$"
    with pytest.raises(ValueError, match=template) as e:
        all_balancers()[name](TASKS, **kwargs)
    assert isinstance(e.value, SettingError) and e.value.setting == param
    assert "balancer." not in str(e.value)  # where the balancer sits in the config is the builder's to say
    assert e.value.at("balancer") == f"balancer.{e.value}"


def test_bad_values_are_one_line_user_errors() -> None:
    for override, key in [("balancer=upgrad", "mode=sideways"), ("balancer=cagrad", "c=-1"),
                          ("balancer=dwa", "window=0"), ("balancer=aligned_mtl", "scale_mode=max"),
                          ("balancer=nash_mtl", "ridge=0"), ("balancer=gradnorm", "alpha=-1"),
                          ("balancer=static", "weights.d=2")]:
        cfg = compose_cfg([override, f"+balancer.{key}" if "weights." in key else f"balancer.{key}"])
        param, value = key.split("=")
        with pytest.raises(UserError) as e:
            build(cfg.balancer, "balancer", tasks=TASKS)
        message = str(e.value)
        # The parameter's config key, as the builder puts it in front: `balancer.<param> must be ...`.
        param = param.split(".")[0]
        assert re.match(rf"balancer\.{param}\b", message), message
        assert value in message and "\n" not in message, message


@pytest.mark.parametrize("name", ["upgrad", "gradnorm"])
def test_a_task_gradient_runs_only_that_task_layers_backward(name: str) -> None:
    """Per-task gradients come from the scalars the ``(T,)`` losses were stacked from
    (``BalanceContext.task_losses``): one element of the stacked tensor would run every head's
    backward, ``T`` times the work. A caller without them gets the same numbers, at that cost."""
    x, ys = data()
    runs = []
    for separate in (True, False):
        torch.manual_seed(0)
        model = Tiny()
        calls = dict.fromkeys(TASKS, 0)
        for t, head in model.heads.items():
            head.register_full_backward_hook(lambda *_, t=t, calls=calls: calls.__setitem__(t, calls[t] + 1))
        _, weights = step(model, make(name), x, ys, all_labeled(), separate=separate)
        runs.append((weights, grads(model), calls))
    (w0, g0, calls0), (w1, g1, calls1) = runs
    assert calls0 == dict.fromkeys(TASKS, 2)  # its own gradient, then the one backward of the update
    assert calls1 == dict.fromkeys(TASKS, len(TASKS) + 1)
    assert torch.equal(w0, w1) and all(torch.equal(g0[k], g1[k]) for k in g0)


class Beside(Tiny):
    """Returns a copy of the trunk's output as ``shared``: a tensor beside the heads' input, not
    before it (what a wholly compiled model hands back)."""

    def forward(self, x: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        h = self.trunk(x)
        return {t: head(h).squeeze(1) for t, head in self.heads.items()}, h * 1.0


@pytest.mark.parametrize("name", ["upgrad", "gradnorm"])
def test_a_shared_tensor_off_the_losses_path_is_an_error_not_zero_gradients(name: str) -> None:
    x, ys = data()
    with pytest.raises(UserError, match="no task loss depends on the shared tensor"):
        step(Beside(), make(name), x, ys, all_labeled())
    step(Tiny(), make(name), x, ys, {t: torch.zeros(32, dtype=torch.bool) for t in TASKS})  # unlabelled: fine



# ---------------------------------------------------------------- random draws
@pytest.mark.parametrize(("name", "mode"), CASES, ids=[f"{b}-{m or 'default'}" for b, m in CASES])
def test_no_balancer_draws_from_the_global_generator(name: str, mode: str | None) -> None:
    """Dropout, modality dropout and augmentation draw from torch's global generator: a balancer
    that drew from it too (RLW's weights, PCGrad's orders did) would make ``balancer=rlw`` and
    ``balancer=static`` differ in more than the weighting, and keep data-parallel processes
    drawing the same weights only while their global generators stay in step."""
    torch.manual_seed(0)
    model, balancer, (x, ys) = Tiny(), make(name, mode), data()
    before = torch.get_rng_state()
    weights = [step(model, balancer, x, ys, all_labeled(), index=i)[1] for i in range(3)]
    assert torch.equal(torch.get_rng_state(), before), name
    if name == "rlw":
        assert not torch.equal(weights[0], weights[1])  # it does draw, fresh weights every step


def rlw_context(labeled: list[str], n: int = 4) -> BalanceContext:
    """A step's context as RLW reads it: only which tasks have labels."""
    counts = {t: torch.tensor(n if t in labeled else 0) for t in TASKS}
    return BalanceContext(torch.zeros(1, 1), [], counts, torch.amp.GradScaler("cpu", enabled=False), 0)


def draws(method: RandomWeighting, k: int, labeled: list[str] = TASKS) -> Tensor:
    ctx, losses = rlw_context(labeled), torch.ones(len(TASKS))
    return torch.stack([method.loss_weights(losses, ctx) for _ in range(k)])


def test_rlw_draws_from_its_seed() -> None:
    assert torch.equal(draws(RandomWeighting(TASKS, seed=3), 5), draws(RandomWeighting(TASKS, seed=3), 5))
    assert not torch.equal(draws(RandomWeighting(TASKS, seed=3), 5), draws(RandomWeighting(TASKS, seed=4), 5))
    for seed in (0, 7):  # the config passes the run's seed
        method = build(compose_cfg(["balancer=rlw", f"seed={seed}"]).balancer, "balancer", tasks=TASKS)
        assert method.seed == seed and "seed=" + str(seed) in repr(method)
        assert torch.equal(method.generator.get_state(), torch.Generator().manual_seed(seed).get_state())


def test_rlw_weights_average_one_per_labelled_task_and_zero_without_labels() -> None:
    w = draws(RandomWeighting(TASKS, seed=0), 4000, labeled=["a", "b"])
    assert torch.all(w[:, C] == 0) and torch.all(w[:, :C] > 0)
    assert torch.allclose(w.sum(1), torch.full((4000,), 2.0))  # T' softmax over the T' labelled tasks
    assert w[:, :C].mean(0).tolist() == pytest.approx([1.0, 1.0], abs=0.05)
    assert w[:, :C].std(0).min() > 0.1  # random, not static
    assert torch.equal(draws(RandomWeighting(TASKS, seed=0), 3, labeled=[]), torch.zeros(3, len(TASKS)))
    # The labels do not shift the sequence: each call draws T numbers whatever the labels.
    partly, fully = draws(RandomWeighting(TASKS, seed=0), 3, ["a", "b"]), draws(RandomWeighting(TASKS, seed=0), 3)
    assert torch.allclose(partly[:, :C] / partly[:, :C].sum(1, keepdim=True),
                          torch.softmax(torch.log(fully[:, :C]), 1))


def test_rlw_generator_is_checkpointed_and_resume_is_exact() -> None:
    method = RandomWeighting(TASKS, seed=0)
    draws(method, 3)
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)  # as the recipe's checkpoint holds it
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    expected = draws(method, 5)
    resumed = RandomWeighting(TASKS, seed=99)
    resumed.load_state_dict(state)
    assert torch.equal(draws(resumed, 5), expected)
    # A checkpoint written before RLW had a generator still loads (the generator keeps its seed).
    old = RandomWeighting(TASKS, seed=0)
    old.load_state_dict({})
    assert torch.equal(draws(old, 3), draws(RandomWeighting(TASKS, seed=0), 3))


# ---------------------------------------------------------------- the two spaces
def test_representation_mode_weights_the_shared_gradient_and_leaves_heads_unweighted() -> None:
    torch.manual_seed(0)
    model, x, ys = Tiny(), *data()
    losses, weights = step(model, UPGrad(TASKS), x, ys, all_labeled())
    got = grads(model)
    model.zero_grad()
    preds, _ = model(x)
    expected = {}
    for t in TASKS:
        loss = ((preds[t] - ys[t]) ** 2).mean()
        g = torch.autograd.grad(loss, list(model.parameters()), retain_graph=True, allow_unused=True)
        for (k, _), gi in zip(model.named_parameters(), g, strict=True):
            if gi is not None:
                w = weights[TASKS.index(t)] if k.startswith("trunk") else 1.0
                expected[k] = expected.get(k, 0) + w * gi
    for k in got:
        assert torch.allclose(got[k], expected[k], atol=1e-5), k
    assert sorted(weights.tolist()) != [1.0, 1.0, 1.0]  # the tasks do conflict


@pytest.mark.parametrize("method", [UPGrad, MGDA])
def test_parameter_mode_aggregates_the_jacobian_of_the_shared_parameters(method: type) -> None:
    torch.manual_seed(0)
    model, x, ys = Tiny(), *data()
    balancer = method(TASKS, mode="parameters")
    step(model, balancer, x, ys, all_labeled())
    got = torch.cat([p.grad.flatten() for p in model.trunk.parameters()])
    preds, _ = model(x)
    rows = []
    for t in TASKS:
        g = torch.autograd.grad(((preds[t] - ys[t]) ** 2).mean(), list(model.trunk.parameters()), retain_graph=True)
        rows.append(torch.cat([gi.flatten() for gi in g]))
    jac = torch.stack(rows)
    assert torch.allclose(got, balancer.aggregate(jac), atol=1e-5)
    assert not torch.allclose(got, jac.sum(0), atol=1e-3)


# ---------------------------------------------------------------- sparse labels
@pytest.mark.parametrize("method", [UPGrad, MGDA])
@pytest.mark.parametrize("mode", ["representation", "parameters"])
def test_a_task_without_labels_is_dropped_not_zeroed(method: type, mode: str) -> None:
    x, ys = data()
    labeled = {**all_labeled(), "c": torch.zeros(32, dtype=torch.bool)}
    torch.manual_seed(0)
    model = Tiny()
    _, weights = step(model, method(TASKS, mode=mode), x, ys, labeled)
    dropped = grads(model)
    torch.manual_seed(0)
    two = Tiny()
    step(two, method(["a", "b"], mode=mode), x, ys, all_labeled(tasks=["a", "b"]))
    for k, g in grads(two).items():
        assert torch.allclose(dropped[k], g, atol=1e-6), k
    assert float(weights[C]) == 0.0 and float(weights[A]) > 0
    # Why not a zero row: it changes the answer (MGDA's min-norm point becomes 0).
    jac = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(MGDA(TASKS).aggregate(jac), torch.zeros(2, dtype=torch.float64))
    assert not torch.allclose(MGDA(TASKS).aggregate(jac[:2]), torch.zeros(2, dtype=torch.float64))


@pytest.mark.parametrize(("name", "mode"), CASES, ids=[f"{b}-{m or 'default'}" for b, m in CASES])
def test_sparse_labels_give_finite_updates(name: str, mode: str | None) -> None:
    """Task c is labelled on every fourth step only, and then on a quarter of the batch."""
    torch.manual_seed(0)
    model, balancer, (x, ys) = Tiny(), make(name, mode), data()
    opt = torch.optim.SGD(list(model.parameters()) + list(balancer.parameters()), lr=0.05)
    quarter = torch.arange(32) % 4 == 0
    for i in range(8):
        labeled = {**all_labeled(), "c": quarter if i % 4 == 0 else torch.zeros(32, dtype=torch.bool)}
        opt.zero_grad()
        losses, weights = step(model, balancer, x, ys, labeled)
        assert torch.isfinite(losses).all()
        assert torch.isfinite(weights).all()
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
        if isinstance(balancer, GradientAggregation) and i % 4:
            assert float(weights[C]) == 0.0
        opt.step()
    for buffer in balancer.buffers():
        assert torch.isfinite(buffer).all() or name == "dwa"  # DWA keeps NaN for "no mean yet"


def test_no_labelled_task_at_all_is_a_no_op() -> None:
    x, ys = data()
    none = {t: torch.zeros(32, dtype=torch.bool) for t in TASKS}
    for name, mode in CASES:
        model = Tiny()
        _, weights = step(model, make(name, mode), x, ys, none)
        assert torch.isfinite(weights).all(), name
        assert all(p.grad is None or not p.grad.any() for p in model.parameters()), name


def test_stateful_balancers_ignore_unlabelled_steps() -> None:
    x, ys = data()
    no_c = {**all_labeled(), "c": torch.zeros(32, dtype=torch.bool)}
    # Uncertainty: an unlabelled task's log-variance gets no gradient (the regulariser drops too).
    unc = make("uncertainty")
    step(Tiny(), unc, x, ys, no_c)
    assert unc.log_vars.grad[2] == 0 and unc.log_vars.grad[0] != 0
    # GradNorm: the first loss of c is recorded at its first labelled step, not before.
    gn = make("gradnorm")
    for labeled in (no_c, no_c, all_labeled()):
        losses, _ = step(Tiny(), gn, x, ys, labeled)
        if labeled is no_c:
            assert gn.seen[2] == 0 and gn.initial_losses[2] == 0
    assert gn.seen[2] == 1 and gn.initial_losses[2] == pytest.approx(float(losses[C].detach()))
    assert float(gn.weights.sum()) == pytest.approx(3.0)
    # DWA: a window's mean loss counts only the steps where the task had labels.
    dwa = build(compose_cfg(["balancer=dwa", "balancer.window=2"]).balancer, "balancer", tasks=TASKS)
    model = Tiny()
    first, _ = step(model, dwa, x, ys, all_labeled(), index=0)
    step(model, dwa, x, ys, no_c, index=1)
    step(model, dwa, x, ys, no_c, index=2)  # a new window: window 0's means move to `previous`
    assert float(dwa.previous[2]) == pytest.approx(float(first[C].detach()))  # not half of it
    # FAMO: an unlabelled task gets weight 0.
    _, weights = step(Tiny(), make("famo"), x, ys, no_c)
    assert float(weights[C]) == 0 and float(weights[A]) > 0


# ---------------------------------------------------------------- mixed precision
@pytest.mark.parametrize("norm", ["layer", "batch"])
def test_bf16_autocast_with_normalisation_layers(norm: str) -> None:
    """torchjd issue 699: its vmap'd ``mtl_backward`` fails on an autocast graph with BatchNorm or
    LayerNorm; with ``ctx.amp`` the aggregators differentiate one task at a time instead."""
    x, ys = data()
    model = Tiny(norm=norm)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        preds, h = model(x)
        losses = [((preds[t].float() - ys[t]) ** 2).mean() for t in TASKS]
    with pytest.raises(RuntimeError, match="expected scalar type"):
        torchjd_api.shared_jacobians(losses, h, list(model.trunk.parameters()), sequential=False)
    for name, mode in CASES + [(a, "representation") for a in AGGREGATORS]:
        torch.manual_seed(0)
        model = Tiny(norm=norm)
        _, weights = step(model, make(name, mode), x, ys, all_labeled(), torch.autocast("cpu", dtype=torch.bfloat16),
                          amp=True)
        assert torch.isfinite(weights).all(), (name, mode)
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters()), (name, mode)


@pytest.mark.parametrize(("name", "mode"), CASES, ids=[f"{b}-{m or 'default'}" for b, m in CASES])
def test_fp16_with_grad_scaler(name: str, mode: str | None) -> None:
    """Loss scaling changes neither the weights nor the unscaled gradients (the Jacobian is
    unscaled before aggregating); an overflowed step raises nothing and the scaler skips it."""
    x, ys = data()
    scale = 2.0**12
    runs = []
    for enabled in (False, True):
        torch.manual_seed(0)
        model, balancer = Tiny(), make(name, mode)
        scaler = torch.amp.GradScaler("cpu", init_scale=scale, enabled=enabled)
        _, weights = step(model, balancer, x, ys, all_labeled(), torch.autocast("cpu", dtype=torch.float16), scaler,
                          amp=True)
        runs.append((weights, {k: g / (scale if enabled else 1.0) for k, g in grads(model).items()}))
    (w0, g0), (w1, g1) = runs
    for i, t in enumerate(TASKS):
        assert float(w1[i]) == pytest.approx(float(w0[i]), rel=2e-2, abs=1e-4), t
    for k in g0:
        assert torch.allclose(g1[k], g0[k], rtol=5e-2, atol=1e-3), k
    # Overflow: one task's loss is infinite.
    scaler = torch.amp.GradScaler("cpu", init_scale=scale)
    model, balancer = Tiny(), make(name, mode)
    opt = torch.optim.SGD(list(model.parameters()) + list(balancer.parameters()), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    step(model, balancer, x, ys, all_labeled(), torch.autocast("cpu", dtype=torch.float16), scaler, amp=True,
         poison="a")
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() < scale  # the step was skipped
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    opt.zero_grad()
    _, weights = step(model, balancer, x, ys, all_labeled(), torch.autocast("cpu", dtype=torch.float16), scaler,
                      amp=True)
    assert torch.isfinite(weights).all()  # the balancer's state survived


# ---------------------------------------------------------------- through the recipe
@pytest.mark.slow
def test_aggregators_train_in_the_recipe_in_bf16_and_on_a_single_task(tmp_path: Path) -> None:
    from conftest import train
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from mtmm_train.tensorboard import event_dir

    def weights(folder: Path, task: str) -> list[float]:
        acc = EventAccumulator(str(event_dir(folder)), size_guidance={"scalars": 0})
        acc.Reload()
        return [e.value for e in acc.Scalars(f"train/weight/{task}")]

    recipe = train(tmp_path / "bf16", ["balancer=upgrad", "balancer.mode=parameters", "trainer.precision=bf16",
                                       "tasks=[category,score]"])
    assert all(math.isfinite(v) for k, v in recipe.best["metrics"].items() if "/loss/" in k)
    assert len(weights(tmp_path / "bf16", "score")) == 3 and all(w > 0 for w in weights(tmp_path / "bf16", "score"))
    # A single task (selected on the command line): CAGrad's one weight is 1 + c.
    train(tmp_path / "one", ["balancer=cagrad", "tasks=[score]"])
    assert weights(tmp_path / "one", "score") == pytest.approx([1.4] * 3)


def test_bench_balancers_table() -> None:
    from mtmm_train.benchmarking import balancer_table

    rows = balancer_table("cpu", (2,), overrides=("dataset.num_classes=2",), batch_size=8,
                          balancers=["static", "upgrad"], steps=1, rounds=1, warmup=1)
    assert [(r["balancer"], r["mode"]) for r in rows] == [("static", "-"), ("upgrad", "representation"),
                                                          ("upgrad", "parameters")]
    assert rows[0]["ratio"] == 1.0 and all(r["step_ms"] > 0 and "error" not in r for r in rows)
