"""Presence-aware BatchNorm (mtmm_train/encoders/norm.py): the from-scratch encoders learn their BatchNorm
statistics from the rows that have the modality, with no host read.

Against ``nn.BatchNorm`` run on the present rows alone: outputs, running statistics, batch counts; a batch
with no present row changes nothing; the model hands the encoders the masks after modality dropout; the
masked path compiles into one graph.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from conftest import TINY, compose_cfg
from families import FAMILIES, classes
from torch import nn

from mtmm_train.batch import ModalitySpec
from mtmm_train.encoders import CNNEncoder, Conv1dEncoder
from mtmm_train.encoders.norm import MaskedBatchNorm1d, MaskedBatchNorm2d
from mtmm_train.recipe import TrainRecipe

pytestmark = pytest.mark.usefixtures("one_thread")

IMAGE = ModalitySpec("image", (2, 8, 8), "image")
AUDIO = ModalitySpec("audio", (2, 16), "sequence")
# (masked class, plain class, input shape of one row)
KINDS = [(MaskedBatchNorm2d, nn.BatchNorm2d, (3, 5, 4)), (MaskedBatchNorm1d, nn.BatchNorm1d, (3, 7)),
         (MaskedBatchNorm1d, nn.BatchNorm1d, (3,))]
IDS = ["2d", "1d-sequence", "1d-vector"]
USES_PRESENCE = [cls for cls in classes(FAMILIES["encoder"]).values() if cls.uses_presence]


def pair(masked: type, plain: type, momentum: float | None = 0.1) -> tuple[nn.Module, nn.Module]:
    """A masked and a plain BatchNorm of 3 channels with the same (non-trivial) parameters and statistics."""
    torch.manual_seed(0)
    a = masked(3, momentum=momentum)
    with torch.no_grad():
        a.weight.uniform_(0.5, 1.5)
        a.bias.uniform_(-0.5, 0.5)
        a.running_mean.uniform_(-1, 1)
        a.running_var.uniform_(0.5, 2)
    b = plain(3, momentum=momentum)
    b.load_state_dict(a.state_dict())
    return a, b


def assert_same_statistics(a: nn.Module, b: nn.Module) -> None:
    torch.testing.assert_close(a.running_mean, b.running_mean, rtol=0, atol=1e-6)
    torch.testing.assert_close(a.running_var, b.running_var, rtol=0, atol=1e-6)
    assert torch.equal(a.num_batches_tracked, b.num_batches_tracked)


@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum", "cumulative"])
@pytest.mark.parametrize(("masked", "plain", "shape"), KINDS, ids=IDS)
def test_every_row_present_is_plain_batch_norm(masked: type, plain: type, shape: tuple, momentum: float | None) -> None:
    a, b = pair(masked, plain, momentum)
    for step in range(3):
        x = torch.randn(6, *shape) * (step + 1) + step
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = a(xa, torch.ones(6, dtype=torch.bool)), b(xb)
        torch.testing.assert_close(ya, yb, rtol=0, atol=1e-6)
        assert_same_statistics(a, b)
        g = torch.randn_like(ya)
        ya.backward(g)
        yb.backward(g)
        torch.testing.assert_close(xa.grad, xb.grad, rtol=0, atol=1e-5)
        torch.testing.assert_close(a.weight.grad, b.weight.grad, rtol=0, atol=1e-5)
    assert a.num_batches_tracked.item() == 3
    a.eval()
    b.eval()  # evaluation: the running statistics, the mask changes nothing
    x = torch.randn(4, *shape)
    torch.testing.assert_close(a(x, torch.tensor([True, False, False, True])), b(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum", "cumulative"])
@pytest.mark.parametrize(("masked", "plain", "shape"), KINDS, ids=IDS)
def test_absent_rows_count_for_nothing(masked: type, plain: type, shape: tuple, momentum: float | None) -> None:
    a, b = pair(masked, plain, momentum)
    present = torch.tensor([True, False, True, True, False, False, True])
    for step in range(2):
        x = torch.randn(7, *shape) + 2.0
        x[~present] = 100.0 * (step + 1)  # anything: absent rows must not matter (in the data they are zeros)
        ya = a(x, present)
        yb = b(x[present])
        torch.testing.assert_close(ya[present], yb, rtol=0, atol=1e-5)
        assert torch.isfinite(ya).all()
        assert_same_statistics(a, b)
    plain_stats = plain(3, momentum=momentum)  # what the whole batch would have taught: far from it
    plain_stats.load_state_dict(pair(masked, plain, momentum)[0].state_dict())
    plain_stats(x)
    assert not torch.allclose(plain_stats.running_mean, a.running_mean, atol=1e-2)


@pytest.mark.parametrize(("masked", "plain", "shape"), KINDS, ids=IDS)
def test_no_present_row_leaves_the_statistics_alone(masked: type, plain: type, shape: tuple) -> None:
    a, _ = pair(masked, plain)
    before = copy.deepcopy(a.state_dict())
    x = torch.zeros(4, *shape, requires_grad=True)
    y = a(x, torch.zeros(4, dtype=torch.bool))
    assert torch.isfinite(y).all()
    y.square().sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(a.weight.grad).all() and torch.isfinite(a.bias.grad).all()
    for key, value in a.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_state_dict_keys_are_batch_norm_ones() -> None:
    for masked, plain, _ in KINDS:
        assert isinstance(masked(3), plain)
        assert list(masked(3).state_dict()) == list(plain(3).state_dict())
    # A checkpoint of the encoder from before loads (nn.BatchNorm2d there, same keys).
    enc = CNNEncoder(IMAGE, out_dim=8)
    old = nn.Sequential(*[nn.BatchNorm2d(m.num_features) if isinstance(m, nn.BatchNorm2d) else m for m in enc.net])
    assert list(old.state_dict()) == list(enc.net.state_dict())
    enc.net.load_state_dict(old.state_dict())


@pytest.mark.parametrize("cls", USES_PRESENCE, ids=lambda c: c.__name__)
def test_encoders_take_the_mask(cls: type) -> None:
    """An encoder with ``uses_presence``: all rows present equals no mask; the present rows' outputs do not
    depend on the absent rows."""
    spec = IMAGE if cls is CNNEncoder else AUDIO
    torch.manual_seed(0)
    enc = cls(spec, out_dim=8).train()
    same = copy.deepcopy(enc)
    x = torch.randn(6, *spec.shape)
    torch.testing.assert_close(enc(x, torch.ones(6, dtype=torch.bool)), same(x), rtol=0, atol=1e-5)
    torch.testing.assert_close(enc.tokens(x, torch.ones(6, dtype=torch.bool)), same.tokens(x), rtol=0, atol=1e-5)
    present = torch.tensor([True, True, False, True, False, True])
    y = x.clone()
    y[~present] = 0
    z = x.clone()
    z[~present] = 5.0
    torch.testing.assert_close(enc(y, present)[present], enc(z, present)[present], rtol=0, atol=1e-5)


@pytest.mark.parametrize("cls", [CNNEncoder, Conv1dEncoder], ids=lambda c: c.__name__)
def test_the_masked_path_compiles_into_one_graph(cls: type) -> None:
    spec = IMAGE if cls is CNNEncoder else AUDIO
    torch.manual_seed(0)
    eager = cls(spec, out_dim=8).train()
    compiled = copy.deepcopy(eager)
    run = torch.compile(compiled, fullgraph=True, backend="aot_eager")  # a graph break would raise
    for present in (torch.tensor([True, False, True, True, False]), torch.zeros(5, dtype=torch.bool)):
        x = torch.randn(5, *spec.shape)
        x[~present] = 0
        torch.testing.assert_close(run(x, present), eager(x, present), rtol=1e-5, atol=1e-5)
    for key, value in eager.state_dict().items():
        torch.testing.assert_close(compiled.state_dict()[key], value, rtol=1e-5, atol=1e-6, msg=key)


def bn_layers(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def test_the_model_passes_the_masks_after_modality_dropout(tmp_path: Path) -> None:
    """One training forward of the synthetic model with gaps and modality dropout: the image and audio
    encoders' running statistics are those of their encoders run on the rows still present."""
    recipe = TrainRecipe(compose_cfg(TINY + ["logger=none", "dataset.missing_fraction=0.5",
                                            "model.modality_dropout=0.3"]), tmp_path)
    recipe.setup()
    model = recipe.model.train()
    batch = recipe.splits["train"].batch(torch.arange(32))
    checked = [m for m, enc in model.encoders.items() if getattr(enc, "uses_presence", False) and bn_layers(enc)]
    assert {"image", "audio"} <= set(checked)
    reference = {m: copy.deepcopy(model.encoders[m]) for m in checked}
    torch.manual_seed(3)
    dropped = model.drop_modalities(batch.present)  # the first draw of a training forward
    torch.manual_seed(3)
    model(batch.inputs, batch.present)
    for m in checked:
        rows = dropped[m]
        assert 0 < rows.sum() < rows.numel() and (batch.present[m] & ~rows).any(), m  # gaps and drops
        reference[m](batch.inputs[m][rows])  # a plain forward on the present rows alone
        for got, want in zip(bn_layers(model.encoders[m]), bn_layers(reference[m]), strict=True):
            assert_same_statistics(got, want)


@pytest.mark.parametrize(("overrides", "masked"), [
    (["dataset.missing_fraction=0.0"], False),  # every row has every modality: nothing to mask
    (["dataset.missing_fraction=0.0", "model.modality_dropout=0.2"], True),  # dropout makes rows absent
    (["dataset.missing_fraction=0.2"], True),
], ids=["complete", "dropout", "gaps"])
def test_the_mask_is_used_only_where_a_modality_can_be_absent(tmp_path: Path, overrides: list[str],
                                                               masked: bool) -> None:
    """The builder keeps the plain (faster) BatchNorm path where no training batch can lack the modality."""
    recipe = TrainRecipe(compose_cfg(TINY + ["logger=none", *overrides]), tmp_path)
    recipe.setup()
    for m in ("image", "audio"):
        enc = recipe.model.encoders[m]
        assert bn_layers(enc) and enc.uses_presence is masked, m
        assert bool(recipe.splits["train"].present[m].all()) is (overrides[0].endswith("0.0")), m


@pytest.mark.parametrize("tokens", [False, True], ids=["pooled", "tokens"])
def test_a_video_encoder_hands_the_mask_to_its_frame_encoder(tokens: bool) -> None:
    """``frames`` with a ``cnn`` per frame: the frames of absent clips count for nothing in its BatchNorm."""
    from mtmm_train.encoders.frames import FramesEncoder

    torch.manual_seed(0)
    enc = FramesEncoder(ModalitySpec("clip", (3, 3, 8, 8), "video"), frame={
        "_target_": "mtmm_train.encoders.cnn.CNNEncoder", "out_dim": 8, "channels": [4]}, out_dim=8).train()
    assert enc.uses_presence and bn_layers(enc)
    reference = copy.deepcopy(enc)
    x, present = torch.randn(6, 3, 3, 8, 8), torch.tensor([True, False, True, True, False, True])
    x[~present] = 0.0
    out = enc.tokens(x, present) if tokens else enc(x, present)
    assert out.shape == ((6, 3, 8) if tokens else (6, 8)) and torch.isfinite(out).all()
    reference(x[present])  # a plain forward on the present clips alone
    for got, want in zip(bn_layers(enc), bn_layers(reference), strict=True):
        assert_same_statistics(got, want)
