"""``mtmm-report``: n per configuration, a panel per metric, baselines matched on dataset and settings,
test-split columns; on fake multirun folders (the CLI end to end: tests/test_cli.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mtmm_train.errors import UserError
from mtmm_train.report import best_row, group, load_jobs, lower_is_better, main, report


def job(folder: Path, overrides: list[str], metrics: dict[str, float], config: dict | None = None,
        dataset: str | None = None, test: dict[str, float] | None = None, monitor: str = "val/loss/total",
        mode: str = "min") -> Path:
    """A finished job folder: overrides, metrics.json and (optionally) the composed config and Hydra's choices."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if config is not None:
        (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
        choices = {"dataset": dataset or "synthetic"}
        (folder / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": choices}}}))
    value = metrics.get(monitor, 1.0)
    result = {"monitor": monitor, "monitor_mode": mode, "best": {"value": value, "metrics": metrics},
              "final": metrics, "test": test or {}}
    (folder / "metrics.json").write_text(json.dumps(result))
    return folder


def config(**changes: object) -> dict:
    """A composed config, as .hydra/config.yaml holds it, with dotted-key changes."""
    cfg: dict = {"seed": 0, "tasks": None, "fusion": {"_target_": "mtmm_train.fusion.concat.ConcatFusion"},
                 "balancer": {"_target_": "mtmm_train.balancers.static.StaticWeights"},
                 "trainer": {"max_epochs": 8, "device": "auto"},
                 "dataset": {"_target_": "mtmm_train.data.files.files", "manifest": None},
                 "paths": {"log_dir": "logs"}}
    for key, value in changes.items():
        node = cfg
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    return cfg


def rows_of(table: str) -> dict[str, str]:
    return {line.split("|")[1].strip(): line for line in table.splitlines()[2:] if line.startswith("| ")}


def test_n_is_shown_and_one_run_has_no_plus_minus(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    job(sweep / "0", ["fusion=concat", "seed=0"], {"val/loss/total": 4.1639, "val/a/accuracy": 0.5})
    job(sweep / "1", ["fusion=sum", "seed=0"], {"val/loss/total": 4.2, "val/a/accuracy": 0.6})
    job(sweep / "2", ["fusion=sum", "seed=1"], {"val/loss/total": 4.4, "val/a/accuracy": 0.8})
    table = report(sweep)
    assert table.splitlines()[0].startswith("| configuration | n | val/loss/total | a/accuracy |")
    rows = rows_of(table)
    assert rows["fusion=concat"] == "| fusion=concat | 1 | 4.1639 | 0.5000 |"  # not 4.1639 ± 0.0000
    assert rows["fusion=sum"] == "| fusion=sum | 2 | 4.3000 ± 0.1414 | 0.7000 ± 0.1414 |"
    # Best per metric, each in its direction: the loss lowest (concat), the accuracy highest (sum).
    assert "- val/loss/total (lowest): fusion=concat" in table and "- a/accuracy (highest): fusion=sum" in table
    header, *lines = (sweep / "report.csv").read_text().splitlines()
    assert header.startswith("configuration,n,monitor_mean,monitor_std,")
    assert lines[0].startswith("fusion=concat,1,4.1639,,")  # no std from one run


def test_directions_come_from_the_metric_and_the_monitor_mode() -> None:
    assert lower_is_better("val/loss/total") and lower_is_better("test/score/mae") and lower_is_better("val/x/rmse")
    assert not lower_is_better("val/a/accuracy") and not lower_is_better("val/score/r2")
    assert not lower_is_better("delta_m")
    assert lower_is_better("monitor", "min") and not lower_is_better("monitor", "max")


def test_plot_has_a_panel_per_metric_on_axes_around_the_data_and_marks_the_best(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    for i, (fusion, loss, acc) in enumerate([("concat", 4.1639, 0.50), ("concat", 4.1641, 0.52),
                                             ("sum", 4.1633, 0.40), ("sum", 4.1635, 0.44)]):
        job(sweep / str(i), [f"fusion={fusion}", f"seed={i % 2}"], {"val/loss/total": loss, "val/a/accuracy": acc})
    rows = group(load_jobs(sweep)[0])
    assert [rows[best_row(rows, k)].config for k in ("monitor", "val/a/accuracy")] == ["fusion=sum", "fusion=concat"]

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    saved = []
    real_close = plt.close
    monkey = pytest.MonkeyPatch()
    monkey.setattr(plt, "close", lambda fig=None: saved.append(fig))  # keep the figure to look at it
    try:
        report(sweep, make_plot=True)
    finally:
        monkey.undo()
    assert (sweep / "report.png").stat().st_size > 0
    fig = saved[0]
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == 2  # monitor and a/accuracy
    loss_panel = panels[0]
    low, high = loss_panel.get_xlim()
    assert 4.16 < low < 4.1633 and 4.1641 < high < 4.17  # around the data, not from zero
    assert "lower is better" in loss_panel.get_title() and "higher is better" in panels[1].get_title()
    # The best configuration is the orange star: sum for the loss (lower), concat for the accuracy (higher).
    for ax, best_y in ((panels[0], 0), (panels[1], 1)):  # rows from the top: concat at y=1, sum at y=0
        stars = [line for line in ax.get_lines() if line.get_marker() == "*"]
        assert len(stars) == 1 and list(stars[0].get_ydata()) == [best_y]
    real_close(fig)


def test_baselines_from_several_folders_match_dataset_and_settings(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    multi, single_a, single_b = tmp_path / "multi", tmp_path / "single_a", tmp_path / "single_b"
    manifest = "/data/a.csv"
    both = {"val/cat/accuracy": 0.9, "val/score/mae": 0.4}
    # The reported sweep: fusion swept, on one manifest, 4 epochs.
    for i, fusion in enumerate(["concat", "sum"]):
        target = f"mtmm_train.fusion.{fusion}.{fusion.title()}Fusion"
        job(multi / str(i), [f"fusion={fusion}", "dataset=files", f"dataset.manifest={manifest}",
                             "trainer.max_epochs=4"], both,
            config(**{"fusion._target_": target, "dataset.manifest": manifest, "trainer.max_epochs": 4}), "files")
    common = {"dataset.manifest": manifest, "trainer.max_epochs": 4}
    # Matching: the cat baseline (folder a), with fusion=sum too; score in folder b, on another device (ignored).
    job(single_a / "0", ["tasks=[cat]"], {"val/cat/accuracy": 0.8},
        config(tasks=["cat"], **common), "files")
    job(single_a / "1", ["tasks=[cat]", "fusion=sum"], {"val/cat/accuracy": 0.6},
        config(tasks=["cat"], **{"fusion._target_": "mtmm_train.fusion.sum.SumFusion"}, **common), "files")
    job(single_b / "0", ["tasks=[score]"], {"val/score/mae": 0.5},
        config(tasks=["score"], **{"trainer.device": "cuda"}, **common), "files")
    # Not matching: another manifest; the default number of epochs.
    job(single_b / "1", ["tasks=[score]"], {"val/score/mae": 9.0},
        config(tasks=["score"], **{"dataset.manifest": "/data/b.csv", "trainer.max_epochs": 4}), "files")
    job(single_b / "2", ["tasks=[score]"], {"val/score/mae": 7.0},
        config(tasks=["score"], **{"dataset.manifest": manifest}), "files")

    table = report(multi, baselines=[single_a, single_b])
    rows = rows_of(table)
    # concat: cat vs 0.8 (the concat baseline) +12.5%, score vs 0.5 +20% -> 16.25;
    # sum: cat vs 0.6 (the sum baseline) +50%, score +20% -> 35.
    assert rows["fusion=concat"].endswith("| 16.2500 |") and rows["fusion=sum"].endswith("| 35.0000 |")
    assert f"- fusion=concat: cat: 1 run(s) ({single_a / '0'}); score: 1 run(s) ({single_b / '0'})" in table
    assert f"- fusion=sum: cat: 1 run(s) ({single_a / '1'}); score: 1 run(s) ({single_b / '0'})" in table
    assert "but for those swept here (fusion._target_)" in table
    assert capsys.readouterr().err == ""  # every task has a baseline: no warning

    # A task without a baseline: a warning that says why, and Delta_m from the other task only.
    job(multi / "2", ["fusion=gated", "dataset=files", f"dataset.manifest={manifest}", "trainer.max_epochs=4"],
        {**both, "val/tags/auroc": 0.7},
        config(**{"fusion._target_": "mtmm_train.fusion.gated.X", "dataset.manifest": manifest,
                  "trainer.max_epochs": 4}), "files")
    table = report(multi, baselines=[single_a, single_b])
    err = capsys.readouterr().err
    assert "mtmm-report: warning: no baseline for task 'tags' of 1 of 3 configuration(s)" in err
    assert f"no baseline run reports val/tags/... on dataset files ({manifest})" in err
    assert "- fusion=gated: cat: 2 run(s)" in table and "tags: none" in table


def test_a_baseline_with_other_settings_is_not_used_and_the_warning_names_the_difference(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    multi, single = tmp_path / "multi", tmp_path / "single"
    job(multi / "0", ["trainer.max_epochs=4", "seed=0"], {"val/cat/accuracy": 0.9},
        config(**{"trainer.max_epochs": 4}))
    job(single / "0", ["tasks=[cat]"], {"val/cat/accuracy": 0.8}, config(tasks=["cat"]))
    table = report(multi, baselines=[single])
    assert rows_of(table)["(defaults)"].endswith("| n/a |")
    err = capsys.readouterr().err
    assert f"the closest, {single / '0'}, has trainer.max_epochs=8 (here: 4)" in err
    # --ignore-settings relaxes the match.
    main([str(multi), "--baselines", str(single), "--ignore-settings", "trainer.max_epochs"])
    assert "| 12.5000 |" in capsys.readouterr().out


def test_test_split_columns(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    sweep = tmp_path / "sweep"
    job(sweep / "0", ["fusion=concat"], {"val/loss/total": 1.0, "val/a/accuracy": 0.5},
        test={"test/loss/total": 1.1, "test/a/accuracy": 0.45})
    job(sweep / "1", ["fusion=sum"], {"val/loss/total": 0.9, "val/a/accuracy": 0.6},
        test={"test/loss/total": 1.0, "test/a/accuracy": 0.55})
    table = report(sweep, split="test")
    assert table.splitlines()[0] == "| configuration | n | val/loss/total | test/a/accuracy |"
    assert rows_of(table)["fusion=sum"] == "| fusion=sum | 1 | 0.9000 | 0.5500 |"
    assert "test split of the best checkpoint" in (sweep / "report.md").read_text()
    main([str(sweep), "--metrics", "test/*"])
    out = capsys.readouterr().out
    assert "| configuration | n | test/loss/total | test/a/accuracy |" in out
    # Runs without test results: one clear line.
    bare = tmp_path / "bare"
    job(bare / "0", ["fusion=concat"], {"val/loss/total": 1.0})
    with pytest.raises(UserError, match="--split test: no run under .* has test metrics"):
        report(bare, split="test")
