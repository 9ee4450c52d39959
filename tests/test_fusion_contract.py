"""The contract every fusion config keeps, checked through the whole model on real synthetic batches.

Run over every ``configs/fusion/*.yaml`` (plus late fusion with learned weights), with 2, 3
and 4 modalities: output shapes; gradients reach every parameter and every trainable leaf
of the graph is a registered parameter; absent modalities do not influence the output
(under both missing-modality policies); bf16 autocast on CPU; determinism under a seed.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import pytest
import torch
from conftest import TINY, compose_cfg
from families import FAMILIES, classes, config_names
from omegaconf import DictConfig
from torch import Tensor

from mtmm_train.errors import UserError
from mtmm_train.fusion import DecisionFusion, TensorFusion
from mtmm_train.instantiate import build as build_component
from mtmm_train.model import MultiModalModel
from mtmm_train.recipe import TrainRecipe

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster

FUSIONS = config_names("fusion")
# Every fusion config; decision-level fusions also with learned combination weights.
DECIDING = [n for n, cls in classes(FAMILIES["fusion"]).items() if issubclass(cls, DecisionFusion)]
CASES = [(f, ()) for f in FUSIONS] + [(f, ("fusion.combine=learned",)) for f in DECIDING]
IDS = [f + "".join(e) for f, e in CASES]
MODALITIES = ("image", "audio", "text", "tabular")
BATCH = 8




@functools.cache
def composed(fusion: str, extra: tuple[str, ...]) -> DictConfig:
    return compose_cfg(TINY + [f"fusion={fusion}", "logger=none", *extra])


def build(tmp_path: Path, fusion: str, extra: tuple[str, ...], num_modalities: int, missing: str = "ignore",
          seed: int = 0) -> tuple[MultiModalModel, TrainRecipe]:
    """The model of ``fusion=<fusion>`` on the first ``num_modalities`` synthetic modalities."""
    cfg = copy.deepcopy(composed(fusion, extra))
    cfg.merge_with({"modalities": list(MODALITIES[:num_modalities]), "seed": seed, "model": {"missing": missing}})
    recipe = TrainRecipe(cfg, tmp_path)
    recipe.setup()
    return recipe.model, recipe


def batch_with_gaps(recipe: TrainRecipe) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Training samples; sample i < M lacks modality i, sample M has only the first, M + 1 has none."""
    b = recipe.splits["train"].batch(torch.arange(BATCH))
    mods = list(b.present)
    present = {m: torch.ones_like(p) for m, p in b.present.items()}
    for i, m in enumerate(mods):
        present[m][i] = False
        present[m][len(mods) + 1] = False
        if i > 0:
            present[m][len(mods)] = False
    return b.inputs, present


def loss_of(preds: dict[str, Tensor]) -> Tensor:
    return sum(p.float().square().mean() for p in preds.values())


def graph_leaves(t: Tensor) -> set[int]:
    """ids of the trainable leaf tensors in ``t``'s autograd graph."""
    seen, leaves, stack = set(), set(), [t.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if hasattr(fn, "variable"):
            leaves.add(id(fn.variable))
        stack.extend(next_fn for next_fn, _ in fn.next_functions)
    return leaves


def check_absent_inputs_are_ignored(model: MultiModalModel, inputs: dict[str, Tensor],
                                    present: dict[str, Tensor]) -> None:
    model.eval()  # BatchNorm in training mode would mix samples through the batch statistics
    first = next(iter(inputs))
    with torch.no_grad():
        before = model(inputs, present)[0]
        scrambled = {m: torch.where(present[m].view(-1, *[1] * (x.dim() - 1)), x,
                                    torch.randn_like(x) if x.is_floating_point() else torch.randint_like(x, 1, 9))
                     for m, x in inputs.items()}
        after = model(scrambled, present)[0]
        lone = len(inputs)  # the sample that has only the first modality
        changed = {**inputs, first: inputs[first].clone()}
        changed[first][lone] = torch.randn_like(changed[first][lone]) * 3 if changed[first].is_floating_point() \
            else torch.randint_like(changed[first][lone], 1, 9)
        other = model(changed, present)[0]
    for t in before:
        assert torch.isfinite(before[t]).all(), t
        torch.testing.assert_close(after[t], before[t], msg=f"absent inputs changed the {t} prediction")
    assert any(not torch.allclose(other[t][lone], before[t][lone]) for t in before), "a present modality is ignored"
    model.train()


@pytest.mark.parametrize("num_modalities", [2, 3, 4])
@pytest.mark.parametrize(("fusion", "extra"), CASES, ids=IDS)
def test_contract(fusion: str, extra: tuple[str, ...], num_modalities: int, tmp_path: Path) -> None:
    model, recipe = build(tmp_path, fusion, extra, num_modalities)
    inputs, present = batch_with_gaps(recipe)
    all_present = {m: torch.ones_like(p) for m, p in present.items()}

    # Shapes: the fusion's declared size, and every task's output.
    embs, _ = model.embed(inputs, all_present)
    z = model.fusion(embs, all_present)
    out = model.fusion.out_dim
    assert z.shape == ((BATCH, num_modalities, out) if isinstance(model.fusion, DecisionFusion) else (BATCH, out))
    preds, shared = model(inputs, all_present)
    for t, task in recipe.tasks.items():
        assert preds[t].shape == (BATCH, task.out_dim), t

    # Every trainable leaf of the graph is a registered parameter (else it would never train),
    # and a gradient reaches every registered parameter.
    loss = loss_of(preds)
    unregistered = graph_leaves(loss) - {id(p) for p in model.parameters()}
    assert not unregistered, f"{len(unregistered)} trainable tensors are not registered parameters"
    loss.backward()
    no_grad = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, f"no gradient reaches {no_grad}"
    shared_ids = {id(p) for p in model.shared_parameters()}
    assert {id(p) for p in model.encoders.parameters()} <= shared_ids
    assert not {id(p) for p in model.heads.parameters()} & shared_ids
    assert shared.requires_grad

    # bf16 autocast on CPU: finite outputs and gradients, close to float32.
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(inputs, present)[0]
    loss_of(low).backward()
    reference = model(inputs, present)[0]
    for t in low:
        assert torch.isfinite(low[t]).all(), t
        torch.testing.assert_close(low[t].float(), reference[t], atol=0.2, rtol=0.2)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)

    # Missing modalities: a batch with gaps (one sample without any) gives finite outputs
    # that do not depend on the absent inputs.
    check_absent_inputs_are_ignored(model, inputs, present)


@pytest.mark.parametrize(("fusion", "extra"), CASES, ids=IDS)
def test_learned_missing_embedding(fusion: str, extra: tuple[str, ...], tmp_path: Path) -> None:
    model, recipe = build(tmp_path, fusion, extra, 4, missing="learned")
    inputs, present = batch_with_gaps(recipe)
    loss_of(model(inputs, present)[0]).backward()
    for m, p in model.missing_embeddings.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"the missing embedding of {m} gets no gradient"
    check_absent_inputs_are_ignored(model, inputs, present)


@pytest.mark.parametrize(("fusion", "extra"), CASES, ids=IDS)
def test_deterministic_under_a_seed(fusion: str, extra: tuple[str, ...]) -> None:
    cfg = composed(fusion, extra + ("fusion.dropout=0.1",) if fusion == "transformer" else extra)
    in_dims = {"image": 16, "audio": 8, "text": 12}
    gen = torch.Generator().manual_seed(0)
    shape = (4, 5) if fusion == "transformer" else (4,)
    embs = {m: torch.randn(*shape, d, generator=gen) for m, d in in_dims.items()}
    present = {m: torch.tensor([True, False, True, True]) for m in in_dims}
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        fusion_module = build_component(cfg.fusion, "fusion", in_dims=in_dims)
        runs.append((fusion_module(embs, present), fusion_module.state_dict()))
    assert torch.equal(runs[0][0], runs[1][0])
    assert all(torch.equal(v, runs[1][1][k]) for k, v in runs[0][1].items())


def test_tensor_fusion_refuses_a_huge_product_before_allocating() -> None:
    with pytest.raises(ValueError) as e:  # 100001^4 floats could never be allocated
        TensorFusion({m: 100_000 for m in MODALITIES}, dim=None, max_features=100_000)
    msg = e.value.at("fusion")  # the builder's line: the fusion's settings under their key
    assert "fusion.max_features=100,000" in msg and "fusion.dim=16" in msg  # 17^4 = 83521 fits
    assert "max_features=100,000" in str(e.value) and "fusion." not in str(e.value)


def test_tensor_fusion_default_config_fits_four_modalities_of_64(tmp_path: Path) -> None:
    model, _ = build(tmp_path, "tensor", (), 4)
    assert model.fusion.out_dim == 9 ** 4
    with pytest.raises(UserError, match=r"65 x 65 x 65 x 65 .*fusion.dim=16"):
        build(tmp_path, "tensor", ("fusion.dim=null",), 4)
