"""Missing modalities: training and prediction with gaps, modality dropout, and its evidence."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from conftest import TINY, compose_cfg, train
from torch import nn

from mtmm_train.batch import ModalitySpec
from mtmm_train.encoders.cnn import CNNEncoder
from mtmm_train.errors import UserError
from mtmm_train.evaluate import EvalConfig, evaluate_checkpoint
from mtmm_train.model import encode_present
from mtmm_train.recipe import TrainRecipe

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster




def test_modality_dropout_never_drops_all_of_a_sample(tmp_path: Path) -> None:
    recipe = TrainRecipe(compose_cfg(TINY + ["logger=none", "model.modality_dropout=0.5"]), tmp_path)
    recipe.setup()
    gen = torch.Generator().manual_seed(0)
    present = {m: torch.rand(20_000, generator=gen) < 0.7 for m in ("image", "audio", "text", "tabular")}
    dropped = recipe.model.drop_modalities(present)
    p = torch.stack(list(present.values()), 1)
    d = torch.stack([dropped[m] for m in present], 1)
    assert not (d & ~p).any(), "dropout made an absent modality present"
    assert torch.equal(d.any(1), p.any(1)), "a sample lost all its modalities (or gained one)"
    # Each present modality is dropped about half of the time (less: some drops are undone).
    rate = (p & ~d).sum() / p.sum()
    assert 0.35 < rate < 0.5
    # Only in training: evaluation sees the data as it is.
    batch = recipe.splits["val"].batch(torch.arange(16))
    recipe.model.eval()
    with torch.no_grad():
        a = recipe.model(batch.inputs, batch.present)[0]
        b = recipe.model(batch.inputs, batch.present)[0]
    assert all(torch.equal(a[t], b[t]) for t in a)


def test_modality_dropout_rejects_a_probability_of_one(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"model.modality_dropout must be in \[0, 1\), found 1.0"):
        TrainRecipe(compose_cfg(TINY + ["logger=none", "model.modality_dropout=1.0"]), tmp_path).setup()


@pytest.mark.parametrize("missing", ["ignore", "learned"])
@pytest.mark.parametrize("fusion", ["transformer", "late", "low_rank"])
def test_samples_lacking_modalities_train_and_predict(fusion: str, missing: str, tmp_path: Path) -> None:
    recipe = train(tmp_path, ["logger=none", f"fusion={fusion}", f"model.missing={missing}",
                              "dataset.missing_fraction=0.5", "model.modality_dropout=0.3"])
    absent = sum((~p).sum() for p in recipe.splits["train"].present.values())
    assert absent > 0.3 * 4 * len(recipe.splits["train"])  # the data really has gaps
    assert all(math.isfinite(v) for v in recipe.last_metrics.values()), recipe.last_metrics
    if missing == "learned":  # the "missing" embeddings trained
        assert all(e.abs().sum() > 0 for e in recipe.model.missing_embeddings.values())


TEXT_ONLY = ["tasks=[category]", "modalities=[image,text]", "encoder@model.encoders.image=mlp",
             "dataset.missing_fraction=0", "dataset.num_train=2000", "dataset.num_val=200", "dataset.num_test=500",
             "trainer.max_epochs=4", "trainer.batch_size=64", "logger=none", "seed=0"]


@pytest.mark.slow
def test_modality_dropout_helps_when_a_modality_is_missing_at_test_time(tmp_path: Path) -> None:
    """``category`` is read from the image; the text hints it half of the time (ceiling 0.625).

    Trained on complete data, a model leans on the image and is near chance (0.25) without
    it; trained with modality dropout it learns to use the text alone (seeds 0-4: 0.24-0.43
    against 0.56-0.60).
    """
    accuracy = {}
    for p in (0.0, 0.5):
        run = tmp_path / f"p{p}"
        train(run, TEXT_ONLY + [f"model.modality_dropout={p}"], tiny=False)
        cfg = EvalConfig(checkpoint=str(run / "checkpoints" / "last.pt"), noise=[], zero=[], drop=[], plot=False)
        result = evaluate_checkpoint(cfg, run / "eval")
        subsets = {"+".join(s["modalities"]): s["metrics"]["category/accuracy"] for s in result["subsets"]}
        assert subsets["image+text"] > 0.95 and subsets["image"] > 0.95  # the image alone suffices
        accuracy[p] = subsets["text"]
    assert accuracy[0.5] > accuracy[0.0] + 0.1, accuracy  # seeds 0-4: margins 0.14-0.35
    assert accuracy[0.5] > 0.45, accuracy


# ------------------------------------------------ a batch in which no row has a modality (encode_present)
class VectorNorms(nn.Module):
    """Linear -> BatchNorm1d on vectors (one value per channel per row) -> SyncBatchNorm (plain BatchNorm on the
    CPU without a process group); ``fail``: raise after the norms ran, recording their state first."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 4)
        self.norm = nn.BatchNorm1d(4)
        self.sync = nn.SyncBatchNorm(4, momentum=None)  # a cumulative average: momentum None, restored as such
        self.fail = fail
        self.seen: list[tuple[bool, bool, float | None]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((self.norm.training, self.sync.training, self.sync.momentum))
        out = self.sync(self.norm(self.linear(x)))
        if self.fail:
            raise RuntimeError("the encoder failed")
        return out


def buffers(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.named_buffers()}


def test_an_all_absent_batch_runs_the_encoder_on_two_rows_without_touching_its_statistics() -> None:
    torch.manual_seed(0)
    encoder = VectorNorms().train()
    before = buffers(encoder)
    rows: list[int] = []
    encoder.register_forward_pre_hook(lambda _module, args: rows.append(args[0].shape[0]))
    out = encode_present(encoder, torch.zeros(5, 3), torch.zeros(5, dtype=torch.bool), tokens=False)
    assert rows == [2] and out.shape == (5, 4) and out.dtype == torch.float32 and torch.all(out == 0)
    # BatchNorm ran on its running statistics; SyncBatchNorm stayed in training mode (under torchrun every
    # rank joins its collective) with a momentum of 0; both as they were afterwards.
    assert encoder.seen == [(False, True, 0.0)]
    assert encoder.norm.training and encoder.sync.training and encoder.sync.momentum is None
    after = buffers(encoder)
    assert all(torch.equal(before[k], after[k]) for k in before), "running statistics changed"
    (out * torch.randn(5, 4)).sum().backward()  # whatever the gradient from the fusion: exact zeros
    assert all(p.grad is not None and torch.all(p.grad == 0) for p in encoder.parameters())


def test_an_exception_in_the_encoder_restores_its_normalisation_layers() -> None:
    encoder = VectorNorms(fail=True).train()
    before = buffers(encoder)
    with pytest.raises(RuntimeError, match="the encoder failed"):
        encode_present(encoder, torch.zeros(4, 3), torch.zeros(4, dtype=torch.bool), tokens=False)
    assert encoder.seen == [(False, True, 0.0)]  # the layers were switched when it failed
    assert all(m.training for m in encoder.modules())
    assert encoder.norm.momentum == 0.1 and encoder.sync.momentum is None
    after = buffers(encoder)  # SyncBatchNorm counted the batch: its num_batches_tracked is restored too
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_mixed_batch_updates_the_statistics_from_the_present_rows_only() -> None:
    torch.manual_seed(0)
    encoder = CNNEncoder(ModalitySpec("image", (3, 8, 8), "image"), out_dim=8).train()  # BatchNorm2d
    reference = copy.deepcopy(encoder)
    x = torch.randn(6, 3, 8, 8)
    present = torch.tensor([True, False, True, True, False, True])
    x[~present] = 0  # absent rows hold zeros
    out = encode_present(encoder, x, present, tokens=False)
    expected = reference(x[present])
    assert torch.allclose(out[present], expected, atol=1e-6) and torch.all(out[~present] == 0)
    ours, theirs = buffers(encoder), buffers(reference)
    assert any(not torch.equal(ours[k], buffers(CNNEncoder(ModalitySpec("image", (3, 8, 8), "image")))[k])
               for k in ours if "running" in k)  # the statistics did move
    assert all(torch.allclose(ours[k], theirs[k], atol=1e-6) for k in ours), "statistics not of the present rows"


def test_a_training_step_without_the_modality_in_any_row(tmp_path: Path) -> None:
    """A backbone-like encoder (opted in with ``skip_absent``) with BatchNorm, and a batch that lacks its
    modality in every row: its statistics stay, its parameters get gradients of exactly zero, the loss is that of
    zeros in its place, and the other encoders train."""
    recipe = TrainRecipe(compose_cfg(TINY + ["logger=none", "fusion=concat", "dataset.missing_fraction=0"]),
                         tmp_path)
    recipe.setup()
    model = recipe.model.train()
    image = model.encoders["image"]
    assert any(isinstance(m, nn.BatchNorm2d) for m in image.modules())
    image.skip_absent = True
    batch = recipe.splits["train"].batch(torch.arange(16))
    batch.present["image"] = torch.zeros_like(batch.present["image"])
    batch.inputs["image"] = torch.zeros_like(batch.inputs["image"])
    before = buffers(image)
    recipe.optimizer.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    losses = recipe.micro_step(batch).losses

    after = buffers(image)
    assert all(torch.equal(before[k], after[k]) for k in before), "running statistics of the absent image changed"
    assert all(p.grad is not None and torch.all(p.grad == 0) for p in image.parameters())
    audio = [p.grad for p in model.encoders["audio"].parameters()]
    assert all(g is not None for g in audio) and any(g.abs().sum() > 0 for g in audio)

    # The same step with zeros in place of the image encoder's output.
    image.skip_absent = False
    image.forward = lambda x, present=None: x.new_zeros((x.shape[0], image.out_dim))  # cnn: uses_presence
    torch.manual_seed(0)
    with torch.no_grad():
        preds, _ = model(batch.inputs, batch.present)
        expected = torch.stack([task.loss(preds[t], batch.targets[t], batch.labeled[t])
                                for t, task in recipe.tasks.items()])
    assert torch.equal(losses, expected), (losses, expected)
