"""Missing modalities: training and prediction with gaps, modality dropout, and its evidence."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import TINY, compose_cfg, train

from mtmm_train.errors import UserError
from mtmm_train.evaluate import EvalConfig, evaluate_checkpoint
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
