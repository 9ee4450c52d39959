"""What TensorBoard shows of a run: runs named after their folders, the training curves first, and an
HParams table with the run's dataset, tasks, modalities and components, read by TensorBoard's own backend."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import train
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mtmm_train.tensorboard import BEST, TEST, event_dir, run_name


def tensorboard_app(logdir: Path):
    """TensorBoard's web app over ``logdir``, its files read once, as a werkzeug test client (no server)."""
    from tensorboard import default, program
    from tensorboard.backend import application
    from werkzeug.test import Client

    tb = program.TensorBoard(plugins=default.get_plugins())
    tb.configure(argv=[None, "--logdir", str(logdir), "--load_fast", "false", "--reload_interval", "0"])
    provider, multiplexer = tb._make_data_provider()
    multiplexer.Reload()
    return Client(application.TensorBoardWSGIApp(tb.flags, tb.plugin_loaders, provider, tb.assets_zip_provider,
                                                 multiplexer))


def hparams_table(logdir: Path) -> tuple[list[str], list[str], dict[str, dict]]:
    """The HParams tab as TensorBoard serves it: hparam columns, metric columns, and per session its
    hparams and metric values."""
    client = tensorboard_app(logdir)
    experiment = client.post("/data/plugin/hparams/experiment", json={"experimentName": ""}).get_json()
    groups = client.post("/data/plugin/hparams/session_groups", json={
        "experimentName": "", "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS"], "colParams": [],
        "startIndex": 0, "sliceSize": 100}).get_json()["sessionGroups"]
    sessions = {g["name"]: {"hparams": g["hparams"], "metrics": {m["name"]["tag"]: m["value"] for m in
                                                                 g["metricValues"]}} for g in groups}
    return ([h["name"] for h in experiment["hparamInfos"]], [m["name"]["tag"] for m in experiment["metricInfos"]],
            sessions)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """Two jobs of a sweep folder: all tasks and modalities, and a single-task, two-modality run."""
    sweep = tmp_path_factory.mktemp("tb") / "2026-12-01_10-00-00"
    full = train(sweep / "0", ["trainer.max_epochs=2"])
    single = train(sweep / "1", ["tasks=[score]", "modalities=[image,tabular]", "fusion=sum"])
    return sweep, {"0": full, "1": single}


def test_a_run_is_named_after_its_folder_and_a_sweep_job_after_sweep_and_job(tmp_path: Path) -> None:
    assert run_name(tmp_path / "logs" / "runs" / "2026-12-01_10-00-00") == "2026-12-01_10-00-00"
    assert run_name(tmp_path / "multiruns" / "2026-12-01_10-00-00" / "3") == "2026-12-01_10-00-00/3"
    assert event_dir(tmp_path / "r") == tmp_path / "r" / "tensorboard" / "r"


def test_the_run_list_shows_the_run_folders(runs: tuple[Path, dict]) -> None:
    sweep, _ = runs
    listed = tensorboard_app(sweep).get("/data/runs").get_json()
    name = sweep.name
    assert sorted(listed) == [f"0/tensorboard/{name}/0", f"0/tensorboard/{name}/0/{BEST}",
                              f"0/tensorboard/{name}/0/{TEST}", f"1/tensorboard/{name}/1",
                              f"1/tensorboard/{name}/1/{BEST}", f"1/tensorboard/{name}/1/{TEST}"]


def test_no_card_of_one_point_comes_before_the_training_curves(runs: tuple[Path, dict]) -> None:
    # TensorBoard groups cards by the tag's first part, sorted by name: everything under train/ and val/,
    # and no best/... or test/... tag (the best values live in the HParams table, and they and the test
    # results are points on the validation curves' cards, in the runs best/ and test/).
    sweep, recipes = runs
    for job in ("0", "1"):
        tags: set[str] = set()
        for folder in (event_dir(sweep / job), event_dir(sweep / job) / BEST, event_dir(sweep / job) / TEST):
            acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
            acc.Reload()
            tags |= set(acc.Tags()["scalars"])
        assert {t.split("/")[0] for t in tags} == {"train", "val"}, tags
    curves = EventAccumulator(str(event_dir(sweep / "0")), size_guidance={"scalars": 0})
    curves.Reload()
    assert len(curves.Scalars("train/loss/total")) == 6 and len(curves.Scalars("val/match/auroc")) == 2
    # The best epoch's values: one point each, at the best epoch's step, on the curves' tags.
    best = EventAccumulator(str(event_dir(sweep / "0") / BEST), size_guidance={"scalars": 0})
    best.Reload()
    recipe = recipes["0"]
    point = best.Scalars("val/match/auroc")
    assert [(p.step, p.value) for p in point] == [(recipe.best["step"],
                                                    pytest.approx(recipe.best["metrics"]["val/match/auroc"]))]
    assert "val/loss/match" not in best.Tags()["scalars"]  # per-task losses: curves only, not table columns
    # The best checkpoint's test results: one point per metric at the best step, on the validation card.
    test = EventAccumulator(str(event_dir(sweep / "0") / TEST), size_guidance={"scalars": 0})
    test.Reload()
    assert recipe.test_metrics and len(test.Tags()["scalars"]) == len(recipe.test_metrics)
    for key, value in recipe.test_metrics.items():
        assert [(p.step, p.value) for p in test.Scalars("val/" + key.split("/", 1)[1])] == \
            [(recipe.best["step"], pytest.approx(value))], key


def test_the_hparams_table_tells_runs_apart(runs: tuple[Path, dict]) -> None:
    sweep, recipes = runs
    columns, metrics, sessions = hparams_table(sweep)
    assert {"dataset", "tasks", "modalities", "encoder/image", "encoder/tabular", "fusion", "mtl",
            "balancer", "seed", "lr"} <= set(columns)
    assert "val/loss/total" in metrics and "val/category/accuracy" in metrics and "val/score/r2" in metrics
    full = sessions[f"0/tensorboard/{sweep.name}/0/{BEST}"]
    single = sessions[f"1/tensorboard/{sweep.name}/1/{BEST}"]
    assert full["hparams"]["tasks"] == "category,match,tags,score"
    assert full["hparams"]["modalities"] == "image,audio,text,tabular"
    assert (full["hparams"]["encoder/image"], full["hparams"]["encoder/text"]) == ("cnn", "embedding_bag")
    assert (full["hparams"]["fusion"], full["hparams"]["mtl"], full["hparams"]["balancer"]) == \
        ("concat", "hard_sharing", "static")
    assert full["hparams"]["dataset"] == single["hparams"]["dataset"] == "synthetic"
    assert (single["hparams"]["tasks"], single["hparams"]["modalities"], single["hparams"]["fusion"]) == \
        ("score", "image,tabular", "sum")
    assert "encoder/audio" not in single["hparams"]
    # The values are the best epoch's, not the last one's.
    assert full["metrics"]["val/loss/total"] == pytest.approx(recipes["0"].best["metrics"]["val/loss/total"])
    assert single["metrics"]["val/score/r2"] == pytest.approx(recipes["1"].best["metrics"]["val/score/r2"])
    # The test split's results (trainer.test) stay out: as columns they would push out the settings.
    assert recipes["1"].test_metrics and not any(c.startswith("test/") for c in columns + metrics)
