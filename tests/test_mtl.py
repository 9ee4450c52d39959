"""Every MTL architecture: shapes, the shared tensor is a true cut, gates, and a recipe run."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import compose_cfg, train
from families import FAMILIES, classes, config_names
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import Tensor

from mtmm_train.balancers import UPGrad, all_balancers
from mtmm_train.balancers.base import BalanceContext
from mtmm_train.errors import UserError
from mtmm_train.instantiate import build
from mtmm_train.mtl import MTLArchitecture
from mtmm_train.tensorboard import event_dir

TASKS = ["a", "b", "c"]
ARCHITECTURES = config_names("mtl")
# Architectures with mixing weights to log: those that override MTLArchitecture.gate_weights.
GATED = [n for n, cls in classes(FAMILIES["mtl"]).items() if cls.gate_weights is not MTLArchitecture.gate_weights]
# Balancers that differentiate the losses with respect to `shared` (where the gates sit), one per gated architecture.
SHARED_GRADIENT = [n for n, cls in all_balancers().items() if cls.uses_shared_gradient]


def make(name: str, overrides: tuple[str, ...] = ()) -> MTLArchitecture:
    cfg = compose_cfg([f"mtl={name}", *overrides])
    return build(cfg.mtl, "mtl", in_dim=12, tasks=TASKS)


def losses_of(features: dict[str, Tensor]) -> dict[str, Tensor]:
    # A different function of each task's features, so that the tasks' gradients differ.
    return {t: (features[t] * (i + 1)).sin().sum() for i, t in enumerate(TASKS)}


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_shapes_and_the_shared_tensor_cuts_every_path(name: str) -> None:
    torch.manual_seed(0)
    arch = make(name)
    z = torch.randn(5, 12, requires_grad=True)
    features, shared = arch(z)
    assert set(features) == set(TASKS) and all(f.shape == (5, arch.out_dim) for f in features.values())
    assert shared.shape[0] == 5
    shared_params = arch.shared_parameters()
    others = [p for p in arch.parameters() if all(p is not q for q in shared_params)]
    leaves = [z, *shared_params]
    for t, loss in losses_of(features).items():
        # Everything before the cut gets exactly the gradient that flows through `shared`.
        direct = torch.autograd.grad(loss, leaves, retain_graph=True, allow_unused=True)
        through = torch.autograd.grad(loss, shared, retain_graph=True)[0]
        chained = torch.autograd.grad(shared, leaves, grad_outputs=through, retain_graph=True, allow_unused=True)
        for d, c in zip(direct, chained, strict=True):
            d = torch.zeros(1) if d is None else d
            c = torch.zeros(1) if c is None else c
            assert torch.allclose(d, c, atol=1e-5), (name, t)
    # Parameters after the cut are task-specific: each moves at most one task's loss (for the
    # last cross-stitch matrix, row t moves task t only).
    losses = losses_of(arch(z)[0])
    moved = {t: torch.autograd.grad(loss, others, retain_graph=True, allow_unused=True) if others else ()
             for t, loss in losses.items()}
    for i, p in enumerate(others):
        if name == "cross_stitch" and p.dim() == 2 and p.shape == (len(TASKS), len(TASKS)):
            assert all(not moved[t][i][[j for j, s in enumerate(TASKS) if s != t]].any() for t in TASKS)
        else:
            users = [t for t in TASKS if moved[t][i] is not None and moved[t][i].any()]
            assert len(users) <= 1, (name, p.shape, users)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_parameter_space_aggregation_runs_through_each_architecture(name: str) -> None:
    torch.manual_seed(0)
    arch = make(name)
    z = torch.randn(6, 12)
    features, shared = arch(z)
    parts = list(losses_of(features).values())
    ctx = BalanceContext(shared, arch.shared_parameters(), {t: torch.tensor(6) for t in TASKS},
                         torch.amp.GradScaler("cpu", enabled=False), 0, task_losses=parts)
    weights = UPGrad(TASKS, mode="parameters").backward(torch.stack(parts), ctx)
    assert torch.isfinite(weights).all()
    assert all(p.grad is not None for p in arch.parameters()), name


@pytest.mark.parametrize("name", GATED)
def test_gate_weights_are_mixing_weights(name: str) -> None:
    arch = make(name)
    arch(torch.randn(7, 12))
    gates = arch.gate_weights()
    assert gates and all(k.split("/")[0] in TASKS for k in gates)
    sums: dict[str, float] = {}
    for key, value in gates.items():
        group = key.rsplit("/", 1)[0]
        sums[group] = sums.get(group, 0.0) + float(value)
    if name == "cross_stitch":
        assert all(v == pytest.approx(1.0) for v in sums.values())  # the stitches start as convex mixes
    else:
        assert all(v == pytest.approx(1.0, abs=1e-5) for v in sums.values())


def test_bad_values_are_one_line_user_errors() -> None:
    for name, override in [("mmoe", "mtl.num_experts=0"), ("ple", "mtl.num_levels=0"),
                           ("cross_stitch", "mtl.self_weight=1.5"), ("cgc", "mtl.expert_dims=[]")]:
        with pytest.raises(UserError, match=override.split("=")[0]):
            make(name, (override,))


@pytest.mark.slow
@pytest.mark.parametrize(("name", "balancer"), [(n, SHARED_GRADIENT[i % len(SHARED_GRADIENT)])
                                                for i, n in enumerate(GATED)])
def test_each_architecture_trains_in_the_recipe_and_logs_its_gates(name: str, balancer: str, tmp_path: Path) -> None:
    recipe = train(tmp_path, [f"mtl={name}", f"balancer={balancer}", "trainer.limit_train_batches=4",
                              "logger.log_every_n_steps=2", "logger.grad_cosine_every_n_steps=2"])
    assert math.isfinite(recipe.best["value"])
    acc = EventAccumulator(str(event_dir(tmp_path)), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    tasks = list(recipe.tasks)
    gate_tags = [t for t in tags if t.startswith("train/gate/")]
    assert gate_tags and {t.split("/")[2] for t in gate_tags} == set(tasks)
    assert [e.step for e in acc.Scalars(gate_tags[0])] == [2, 4]
    # Weights every step (logged every second step), cosines at the logged steps.
    for t in tasks:
        assert [e.step for e in acc.Scalars(f"train/weight/{t}")] == [1, 2, 3, 4]
    assert [e.step for e in acc.Scalars(f"train/grad_cosine/{tasks[0]}/{tasks[1]}")] == [2, 4]
    assert all(-1 <= e.value <= 1 for e in acc.Scalars(f"train/grad_cosine/{tasks[0]}/{tasks[1]}"))
