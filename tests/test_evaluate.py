"""``mtmm-eval``: subsets, corruptions, robustness score, outputs, and its errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import run_cli, train
from omegaconf import OmegaConf

from mtmm_train import checkpoint
from mtmm_train.data import TensorSplit
from mtmm_train.errors import UserError
from mtmm_train.evaluate import EvalConfig, corrupt, evaluate_checkpoint, keep_only, random_draws, robustness_score

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster

MODALITIES = ["image", "audio", "text", "tabular"]
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # tiny models: one thread is faster, and leaves the other core free




@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny trained run with every modality and task; returns its best checkpoint."""
    run = tmp_path_factory.mktemp("run")
    train(run, ["logger=none", "fusion=late"])
    return run / "checkpoints" / "best.pt"


def test_cli_writes_table_plot_and_scores(trained: Path, tmp_path: Path) -> None:
    result = run_cli([f"checkpoint={trained}", "noise=[0.5,2.0]", "zero=[1.0]", "drop=[0.5,1.0]"], cwd=tmp_path,
                     module="mtmm_train.evaluate", env=ONE_THREAD)
    assert result.returncode == 0, result.stderr[-2000:]
    out = trained.parent.parent / "eval" / "best"  # next to the run's checkpoints
    data = json.loads((out / "robustness.json").read_text())
    assert [s["modalities"] for s in data["subsets"]][:2] == [MODALITIES, MODALITIES[:3]]
    assert len(data["subsets"]) == 15  # every non-empty subset of 4 modalities
    for s in data["subsets"]:
        assert {"category/accuracy", "match/auroc", "tags/auroc", "score/r2", "loss/total"} <= set(s["metrics"])
    kinds = {(c["modality"], c["kind"]): c for c in data["corruptions"]}
    assert set(kinds) == {(m, k) for m in MODALITIES for k in ("noise", "zero", "drop")}
    assert kinds[("image", "noise")]["levels"] == [0.5, 2.0]
    assert set(data["robustness"]) == {"category", "match", "tags", "score"}
    table = (out / "robustness.md").read_text()
    assert "| image+audio | " in table and "| tabular | drop | " in table and "| mean |" in table
    png = (out / "robustness.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert (out / ".hydra" / "overrides.yaml").exists()


def test_dropping_a_modality_everywhere_equals_the_subset_without_it(trained: Path, tmp_path: Path) -> None:
    cfg = EvalConfig(checkpoint=str(trained), noise=[], zero=[], drop=[0.5, 1.0], plot=False)
    result = evaluate_checkpoint(cfg, tmp_path)
    subsets = {tuple(s["modalities"]): s["metrics"] for s in result["subsets"]}
    assert subsets[tuple(MODALITIES)] == result["clean"]
    for c in result["corruptions"]:
        without = tuple(m for m in MODALITIES if m != c["modality"])
        for t, key in result["primary"].items():
            assert c["values"][t][-1] == pytest.approx(subsets[without][key], abs=1e-6), (c["modality"], t)
    assert not (tmp_path / "robustness.png").exists()


def test_old_checkpoints_get_new_trainer_defaults(trained: Path, tmp_path: Path) -> None:
    state = checkpoint.load(trained)
    del state["config"]["trainer"]["limit_train_batches"]  # as if written before the key existed
    old = tmp_path / "old.pt"
    checkpoint.save(state, old)
    result = evaluate_checkpoint(EvalConfig(checkpoint=str(old), subsets=False, noise=[1.0], zero=[], drop=[],
                                            plot=False), tmp_path / "eval")
    assert len(result["corruptions"]) == 4 and not result["subsets"]


@pytest.mark.parametrize(("change", "message"), [
    ({"checkpoint": "missing.pt"}, "checkpoint='missing.pt' is not a file"),
    ({"split": "holdout"}, "split is 'holdout'"),
    ({"zero": [1.5]}, "zero levels must be in (0, 1]"),
    ({"noise": [-1.0]}, "noise levels must be > 0"),
])
def test_user_errors(trained: Path, tmp_path: Path, change: dict, message: str) -> None:
    cfg = EvalConfig(**{"checkpoint": str(trained), "plot": False, **change})
    with pytest.raises(UserError) as e:
        evaluate_checkpoint(cfg, tmp_path)
    assert message in str(e.value)


def test_cli_without_checkpoint_is_a_one_line_error(tmp_path: Path) -> None:
    result = run_cli([], cwd=tmp_path, module="mtmm_train.evaluate", env=ONE_THREAD)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "mtmm-eval: error: checkpoint is required: mtmm-eval checkpoint=logs/runs/<time>/checkpoints/best.pt"]


def _split(n: int = 400) -> TensorSplit:
    gen = torch.Generator().manual_seed(0)
    inputs = {"img": torch.randn(n, 3, 4, generator=gen) * 2 + 1, "tok": torch.randint(1, 50, (n, 10), generator=gen)}
    present = {m: torch.arange(n) % 10 != 0 for m in inputs}  # 10% missing
    for m, x in inputs.items():
        inputs[m] = torch.where(present[m].view(-1, *[1] * (x.dim() - 1)), x, torch.zeros((), dtype=x.dtype))
    return TensorSplit(inputs, present, {"y": torch.zeros(n)}, {"y": torch.ones(n, dtype=torch.bool)})


def test_corruptions_are_nested_and_touch_one_modality() -> None:
    split = _split()
    draws = random_draws(split.inputs["img"], None, torch.Generator().manual_seed(1))
    zeroed = [corrupt(split, "img", "zero", lv, draws) for lv in (0.25, 0.5, 1.0)]
    hits = [(z.inputs["img"] == 0).flatten(1).all(1) & split.present["img"] for z in zeroed]
    assert (hits[0] <= hits[1]).all() and (hits[1] <= hits[2]).all()  # a higher level zeroes a superset
    assert hits[2].sum() == split.present["img"].sum()
    assert 0.15 < hits[0].float().mean() < 0.35
    assert all(torch.equal(z.present["img"], split.present["img"]) for z in zeroed)  # zero: still "present"
    dropped = corrupt(split, "img", "drop", 0.5, draws)
    assert torch.equal(dropped.present["img"], split.present["img"] & ~hits[1])
    assert torch.equal(dropped.inputs["tok"], split.inputs["tok"]) and dropped.present["tok"] is split.present["tok"]

    noisy = corrupt(split, "img", "noise", 0.5, draws)
    delta = (noisy.inputs["img"] - split.inputs["img"])[split.present["img"]]
    std = split.inputs["img"][split.present["img"]].std()
    assert float(delta.std()) == pytest.approx(0.5 * float(std), rel=0.1)
    assert (noisy.inputs["img"][~split.present["img"]] == 0).all()  # absent samples stay absent zeros

    tok_draws = random_draws(split.inputs["tok"], 50, torch.Generator().manual_seed(2))
    noisy_tok = corrupt(split, "tok", "noise", 1.0, tok_draws)
    replaced = (noisy_tok.inputs["tok"] != split.inputs["tok"]).float().mean()
    assert replaced == pytest.approx((1 - math.exp(-1.0)) * 49 / 50, abs=0.05)  # a random id may equal the old one


def test_keep_only_marks_the_others_missing() -> None:
    split = _split()
    kept = keep_only(split, ("tok",))
    assert not kept.present["img"].any() and (kept.inputs["img"] == 0).all()
    assert torch.equal(kept.inputs["tok"], split.inputs["tok"])


def test_robustness_score() -> None:
    assert robustness_score([0.5, 1.0], [0.8, 0.8], 0.8) == pytest.approx(1.0)
    assert robustness_score([1.0, 2.0], [0.5, 0.0], 1.0) == pytest.approx(0.5)  # linear fall to zero
    assert robustness_score([1.0], [0.6], 0.8) == pytest.approx(0.875)
    assert math.isnan(robustness_score([1.0], [0.1], -0.2))  # R^2 below zero: no meaningful ratio


def test_config_schema_rejects_typos() -> None:
    with pytest.raises(Exception, match="nois"):
        OmegaConf.merge(OmegaConf.structured(EvalConfig), {"nois": [1.0]})


def test_without_corruptions_plain_metrics_and_no_nan(trained: Path, tmp_path: Path) -> None:
    result = evaluate_checkpoint(EvalConfig(checkpoint=str(trained), subsets=False, noise=[], zero=[], drop=[],
                                            plot=True), tmp_path)
    assert result["robustness"] == {} and result["corruptions"] == []
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["metrics"] == result["clean"] and math.isfinite(written["metrics"]["category/accuracy"])
    text = (tmp_path / "robustness.md").read_text() + (tmp_path / "metrics.md").read_text()
    assert "nan" not in text and "| mean |" not in text and "| category | loss " in text
    assert not (tmp_path / "robustness.png").exists()  # nothing to plot


def test_training_evaluates_the_best_checkpoint_on_the_test_split(trained: Path) -> None:
    metrics = json.loads((trained.parent.parent / "metrics.json").read_text())
    assert set(metrics["test"]) >= {"test/loss/total", "test/category/accuracy", "test/score/r2"}
    clean = evaluate_checkpoint(EvalConfig(checkpoint=str(trained), subsets=False, noise=[], zero=[], drop=[],
                                           plot=False), trained.parent.parent / "eval_test")["clean"]
    for k, v in clean.items():  # mtmm-eval of best.pt on the test split: the same numbers
        assert metrics["test"][f"test/{k}"] == pytest.approx(v, abs=1e-6), k
