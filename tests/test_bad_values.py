"""Values that used to pass silently or fail with a confusing message (issue 12, section 5).

Each case fails before anything is trained with one line that names the key or file, the value found
and the fix, and leaves the good run's folder as it was; the CLI cases also check the exit status
and that the refused command created no folder. The manifest cases that used to be refused wrongly
(a JSONL file with a byte-order mark, a semicolon-separated CSV, a Latin-1 file with its encoding
set) are read here.
"""

from __future__ import annotations

import csv
import json
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from conftest import TINY, compose_cfg, run_cli, train
from test_bad_inputs import (  # noqa: F401 - good_run is a fixture
    FILES,
    IMAGES,
    Env,
    assert_one_clear_line,
    good_run,
    png,
    rows,
    snapshot,
    with_files,
    write_manifest,
)

from mtmm_train.data.manifest import read_manifest
from mtmm_train.errors import UserError
from mtmm_train.recipe import NoFiniteMonitor, TrainRecipe

ONE_THREAD = {"OMP_NUM_THREADS": "1"}


# ---------------------------------------------------------------------- manifests written in tmp
def write_rows(path: Path, table: list[dict], delimiter: str = ",", encoding: str = "utf-8") -> None:
    """``table`` as a CSV with ``delimiter`` in ``encoding``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding=encoding) as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(table)


def overrides_for(env: Env, path: Path, *extra: str) -> list[str]:
    """The manifest dataset's overrides (as ``write_manifest``'s) for the manifest at ``path``."""
    return [*FILES, f"dataset.manifest={path}", f"dataset.cache_dir={env.tmp / 'cache'}", *extra]


def semicolons_read_as_commas(env: Env) -> list[str]:
    """A semicolon-separated manifest, read with dataset.delimiter=','."""
    path = env.tmp / "data" / "manifest.csv"
    write_rows(path, rows(), delimiter=";")
    return overrides_for(env, path, "dataset.delimiter=','")


def latin1(env: Env) -> list[str]:
    """A Latin-1 manifest: 'café' in data row 5 (line 6 of the file)."""
    table = [{**r, "kind": "café" if i == 4 else r["kind"]} for i, r in enumerate(rows())]
    path = env.tmp / "data" / "manifest.csv"
    write_rows(path, table, encoding="latin-1")
    return overrides_for(env, path)


def parquet_lists(env: Env) -> list[str]:
    """A Parquet manifest whose label column holds lists."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = [{**r, "kind": [r["kind"], "y"]} for r in rows()]
    path = env.tmp / "data" / "manifest.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(table), path)
    return overrides_for(env, path)


def folder_as_manifest(env: Env) -> list[str]:
    """dataset.manifest names the folder that holds the manifest."""
    overrides = write_manifest(env, rows())
    return [*overrides, f"dataset.manifest={env.tmp / 'data'}"]


def folder_as_image(root: Path) -> None:
    """One image cell names a folder."""
    (root / "img/7.png").unlink()
    (root / "img/7.png").mkdir()


@dataclass
class Case:
    """One bad value, run in this process against the good run's folder (as in test_bad_inputs)."""

    id: str
    expected: str
    overrides: list[str] = field(default_factory=list)
    prepare: object = None


CASES = [
    Case("seed_too_large", r"seed must be an integer in \[0, 4294967295\] \(2\*\*32-1\), found "
         r"99999999999999999999999; e\.g\. seed=0", ["seed=99999999999999999999999"]),
    Case("negative_seed", r"seed must be an integer in \[0, 4294967295\].*found -1", ["seed=-1"]),
    Case("infinite_lr", r"^optimizer\.lr must be finite, found inf; e\.g\. optimizer\.lr=0\.001$",
         ["optimizer.lr=inf"]),
    Case("nan_lr", r"^optimizer\.lr must be finite, found nan; e\.g\. optimizer\.lr=0\.001$", ["optimizer.lr=nan"]),
    # The check of settings against the constructor's annotations is general, not one per setting.
    Case("int_for_a_list", r"^mtl\.hidden_dims must be a list of integers, found 64; e\.g\. mtl\.hidden_dims=\[64\]$",
         ["mtl.hidden_dims=64"]),
    Case("text_in_a_list", r"^mtl\.expert_dims must be a list of integers, found \['wide'\]",
         ["mtl=mmoe", "mtl.expert_dims=[wide]"]),
    Case("number_for_a_pair", r"^optimizer\.betas must be a list of 2 numbers, found 0\.9; e\.g\. "
         r"optimizer\.betas=\[0\.9,0\.999\]$", ["optimizer.betas=0.9"]),
    Case("list_for_an_int", r"^fusion\.dim must be an integer or null, found \[3\]; e\.g\. fusion\.dim=3$",
         ["fusion=sum", "fusion.dim=[3]"]),
    Case("text_for_a_number", r"^balancer\.temperature must be a number, found 'hot'", ["balancer=dwa",
                                                                                        "balancer.temperature=hot"]),
    Case("resume_from_a_folder", r"^trainer\.resume '.*run' is a directory; give a checkpoint file, e\.g\. "
         r"trainer\.resume=.*run/checkpoints/last\.pt", prepare=lambda env: [*TINY, f"trainer.resume={env.good}"]),
    # --- data
    Case("manifest_is_a_folder", r"^dataset\.manifest '.*data' is a directory; give a file, e\.g\. "
         r"dataset\.manifest=.*data/manifest\.csv$", prepare=folder_as_manifest),
    Case("image_cell_is_a_folder", r"dataset\.modalities\.photo \(column 'photo'\): 1 of 24 paths are directories, "
         r"e\.g\. .*img/7\.png; give a file", prepare=with_files("photo", png, folder_as_image, *IMAGES)),
    Case("nan_text_label", r"^dataset\.tasks\.kind: column 'kind' row 4 of '.*manifest\.csv' holds 'NaN', which "
         r"spells a missing value \(NaN\), not a class; leave the cell empty for a missing label$",
         prepare=lambda env: write_manifest(env, [{**r, "kind": "NaN" if i == 3 else r["kind"]}
                                                  for i, r in enumerate(rows())])),
    Case("list_label_in_parquet", r"^dataset\.tasks\.kind: column 'kind' row 1 of '.*manifest\.parquet' holds a list "
         r"\(\['x', 'y'\]\), not a class label; give one value per cell", prepare=parquet_lists),
    Case("wrong_delimiter", r"dataset\.modalities\.tab reads column 'a'.*its columns: a;b;kind;y;fold; the header "
         r"looks separated by ';' \(column 'a;b;kind;y;fold'\): set \"dataset\.delimiter=';'\"$",
         prepare=semicolons_read_as_commas),
    Case("latin1_manifest", r"^dataset\.manifest '.*manifest\.csv' line 6 is not utf-8 text \(byte 0xe9\); set the "
         r"file's encoding, e\.g\. dataset\.encoding=latin-1", prepare=latin1),
    Case("unknown_encoding", r"^dataset\.encoding is 'klingon', which is not a text encoding Python knows; e\.g\. "
         r"dataset\.encoding=utf-8", prepare=lambda env: [*write_manifest(env, rows()), "dataset.encoding=klingon"]),
    Case("long_delimiter", r"^dataset\.delimiter must be auto or one character .*found '::'",
         prepare=lambda env: [*write_manifest(env, rows()), "dataset.delimiter='::'"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_value_gives_one_line_and_leaves_outputs_untouched(case: Case, tmp_path: Path,
                                                               good_run: Path) -> None:  # noqa: F811
    env = Env(tmp_path, good_run, good_run)
    args = case.prepare(env) if case.prepare else [*TINY, *case.overrides]
    before = snapshot(env.run)
    with pytest.raises(UserError) as info:
        TrainRecipe(compose_cfg(args), env.run).setup()
    assert_one_clear_line(str(info.value), case.expected)
    assert snapshot(env.run) == before


# ---------------------------------------------------------------------- manifests that are now read
def test_jsonl_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    path = tmp_path / "manifest.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join(json.dumps(r) for r in rows(4)).encode() + b"\n")
    table = read_manifest(path)
    assert list(table) == ["a", "b", "kind", "y", "fold"] and table["kind"] == ["x", "y", "z", "x"]


@pytest.mark.parametrize(("delimiter", "setting"), [(";", "auto"), ("\t", "auto"), ("|", "auto"), (",", "auto"),
                                                    (";", ";"), ("\t", "tab"), ("\t", "\\t")])
def test_the_delimiter_is_detected_or_set(tmp_path: Path, delimiter: str, setting: str) -> None:
    path = tmp_path / "manifest.csv"
    table = [{**r, "kind": f"{r['kind']} one, two"} for r in rows(6)]  # commas inside cells (quoted)
    write_rows(path, table, delimiter=delimiter)
    read = read_manifest(path, delimiter=setting)
    assert list(read) == ["a", "b", "kind", "y", "fold"] and read["kind"][1] == "y one, two"


def test_a_latin1_manifest_reads_with_its_encoding(tmp_path: Path) -> None:
    env = Env(tmp_path, tmp_path, tmp_path)
    latin1(env)
    assert read_manifest(tmp_path / "data" / "manifest.csv", encoding="latin-1")["kind"][4] == "café"


def test_a_utf8_bom_csv_is_still_read(tmp_path: Path) -> None:
    path = tmp_path / "manifest.csv"
    write_rows(path, rows(4), encoding="utf-8-sig")
    assert list(read_manifest(path))[0] == "a"


# ---------------------------------------------------------------------- a monitor that is never finite
def test_nan_never_becomes_best_and_a_run_without_a_finite_monitor_fails(tmp_path: Path, one_thread: None) -> None:
    run = tmp_path / "run"
    with pytest.raises(NoFiniteMonitor) as info:
        train(run, ["optimizer.lr=1e30", "trainer.gradient_clip_norm=null"])
    message = str(info.value)
    assert "\n" not in message and re.search(r"trainer\.monitor val/loss/total was NaN or infinite in all 1 epoch",
                                             message) and "lower optimizer.lr (it is 1e+30)" in message, message
    assert (run / "checkpoints" / "last.pt").is_file()  # to inspect
    assert not (run / "checkpoints" / "best.pt").exists() and not (run / "metrics.json").exists()
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["best"]["value"] is None


# ---------------------------------------------------------------------- through the real commands
@dataclass
class Command:
    """One refused command: its arguments, exit status, the message's pattern, and what must not exist after."""

    id: str
    args: list[str]
    status: int
    expected: str
    module: str = "mtmm_train"
    absent: list[str] = field(default_factory=list)  # relative to the command's folder


COMMANDS = [
    Command("eval_misspelt_setting", ["splt=val"], 2, r"^mtmm-eval: error: unknown setting 'splt'; did you mean "
            r"'split'\? the settings are checkpoint, split, device,", "mtmm_train.evaluate"),
    Command("predict_misspelt_nested_setting", ["checkpoint=data/x.pt", "dataset.manifst=data/m.csv"], 2,
            r"^mtmm-predict: error: unknown setting 'dataset\.manifst'; did you mean 'dataset\.manifest'\? the "
            r"settings of dataset are dataset\.manifest, dataset\.format, dataset\.delimiter, dataset\.encoding$",
            "mtmm_train.predict"),
    Command("eval_bad_list_value", ["checkpoint=data/x.pt", "noise=[abc]"], 2, r"^mtmm-eval: error: noise must be a "
            r"list of numbers, found \[abc\]; e\.g\. noise=\[0\.25,0\.5,1\.0,2\.0\]$", "mtmm_train.evaluate",
            ["data/eval"]),
    Command("eval_missing_checkpoint_in_a_data_folder", ["checkpoint=data/gone.pt", "device=cpu"], 2,
            r"^mtmm-eval: error: checkpoint='data/gone\.pt' is not a file", "mtmm_train.evaluate", ["data/eval"]),
    Command("eval_checkpoint_is_a_folder", ["checkpoint=data", "device=cpu"], 2, r"^mtmm-eval: error: "
            r"checkpoint='data' is a directory; give a file, e\.g\. checkpoint=data/checkpoints/best\.pt$",
            "mtmm_train.evaluate", ["eval"]),
    Command("train_bad_type_leaves_no_run_folder", ["paths.log_dir=logs", "trainer.max_epochs=many"], 2,
            r"^mtmm-train: error: trainer\.max_epochs must be of type int \| None, found 'many'", absent=["logs/runs"]),
    Command("sweep_checks_every_job_first", ["-m", "paths.log_dir=logs", *TINY, "trainer.max_epochs=1,0"], 2,
            r"^mtmm-train: error: sweep job 1 \(trainer\.max_epochs=0\): trainer\.max_epochs must be >= 1 or null, "
            r"found 0; no job was started$", absent=["logs/multiruns"]),
    Command("sweep_with_joblib", ["-m", "hydra/launcher=joblib", "paths.log_dir=logs", *TINY, "fusion=concat,sum",
                                  "mtl.hidden_dims=[64],64"], 2,
            r"^mtmm-train: error: sweep job 1 \(fusion=concat, mtl\.hidden_dims=64\): mtl\.hidden_dims must be a list "
            r"of integers, found 64", absent=["logs/multiruns"]),
    Command("optuna_search_checks_each_value", ["hparams_search=optuna", "paths.log_dir=logs", *TINY,
                                                "trainer.max_epochs=choice(1,0)"], 2,
            r"^mtmm-train: error: sweep job with trainer\.max_epochs=0: trainer\.max_epochs must be >= 1 or null, "
            r"found 0; no job was started$", absent=["logs/multiruns"]),
    Command("diverged_run_exits_1", ["paths.log_dir=logs", *TINY, "optimizer.lr=1e30",
                                     "trainer.gradient_clip_norm=null"], 1,
            r"^mtmm-train: error: trainer\.monitor val/loss/total was NaN or infinite in all 1 epoch\(s\)"),
]


@pytest.fixture(scope="module")
def command_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, object]]:
    """Every command at once, two at a time (each is mostly start-up time); each in its own folder with a
    ``data/`` folder and a ``logs/`` folder that already hold a file."""
    folders = {}
    for c in COMMANDS:
        cwd = tmp_path_factory.mktemp(c.id)
        for name in ("data", "logs"):
            (cwd / name).mkdir()
            (cwd / name / "keep.txt").write_text("mine\n")
        folders[c.id] = cwd
    with ThreadPoolExecutor(max_workers=2) as pool:
        procs = {c.id: pool.submit(run_cli, c.args, folders[c.id], c.module, 300, ONE_THREAD) for c in COMMANDS}
        return {k: (folders[k], p.result()) for k, p in procs.items()}


@pytest.mark.parametrize("command", COMMANDS, ids=[c.id for c in COMMANDS])
def test_refused_command_gives_one_line_and_creates_nothing(command: Command, command_runs: dict) -> None:
    cwd, proc = command_runs[command.id]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    assert proc.returncode == command.status, proc.stderr[-3000:]
    assert len(lines) == 1 and re.search(command.expected, lines[0]), proc.stderr[-3000:]
    assert "\x1b" not in lines[0]
    for name in command.absent:
        assert not (cwd / name).exists(), sorted(str(p.relative_to(cwd)) for p in cwd.rglob("*"))
    for name in ("data", "logs"):  # what was there before is untouched
        assert (cwd / name / "keep.txt").read_text() == "mine\n"
    if command.status == 2:
        assert sorted(p.name for p in (cwd / "data").iterdir()) == ["keep.txt"]
        assert not (cwd / "logs" / "multiruns").exists() and not (cwd / "logs" / "runs").exists()


def test_a_large_sweep_checks_each_value_once_under_hydras_job_numbers() -> None:
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from mtmm_train.config import sweep_jobs

    task = ["fusion=concat,sum,gated", "seed=0,1", "trainer.max_epochs=3", "optimizer.lr=0.1,0.2"]
    cfg = OmegaConf.create({"hydra": {"sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper."
                                                  "BasicSweeper", "params": None}, "overrides": {"task": task}}})
    hydra_jobs = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(task), None)[0]
    for max_jobs, count in ((100, 12), (4, 1 + 2 + 1 + 1)):  # all 12 jobs; or each value once
        jobs = list(sweep_jobs(cfg, None, max_jobs))
        assert len(jobs) == count
        for label, overrides in jobs:
            num = int(re.match(r"job (\d+) \(", label).group(1))
            assert hydra_jobs[num] == overrides, (label, overrides)


# ---------------------------------------------------------------------- a misspelt setting of every command
@pytest.mark.parametrize(("command", "args", "expected"), [
    ("export", ["checkpoint=x.pt", "outptu=m.onnx"], "mtmm-export: error: unknown setting 'outptu'; did you mean "
     "'output'? the settings are checkpoint, output, batch_size, dynamic_batch, atol, allow_foreign_targets"),
    ("predict", ["checkpoint=x.pt", "splt=val"], "mtmm-predict: error: unknown setting 'splt'; the settings are "
     "checkpoint, dataset, output, id_column, chunk_rows, device, batch_size, allow_foreign_targets"),  # none close
    ("cache", ["list", "dri=/tmp"], "mtmm-cache: error: unknown setting 'dri'; did you mean 'dir'? the settings are "
     "dir, kind"),
    ("report", ["sweep", "splt=val"], "mtmm-report: error: unknown argument 'splt=val'; did you mean --split val? the "
     "options are --metrics, --split, --which, --plot, --out, --baselines, --delta-metrics, --ignore-settings (written "
     "--option value, not key=value)"),
    ("report", ["sweep", "--splt", "val"], "mtmm-report: error: unknown argument '--splt'; did you mean --split? the "
     "options are --metrics, --split, --which, --plot, --out, --baselines, --delta-metrics, --ignore-settings"),
    ("report", ["sweep", "other"], "mtmm-report: error: unknown argument 'other'; it takes one multirun folder; the "
     "options are --metrics, --split, --which, --plot, --out, --baselines, --delta-metrics, --ignore-settings"),
], ids=["export", "predict_none_close", "cache", "report_key_value", "report_option", "report_second_folder"])
def test_a_misspelt_setting_is_one_line_with_the_closest(command: str, args: list[str], expected: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    import importlib

    module = importlib.import_module({"cache": "mtmm_train.cache_cli"}.get(command, f"mtmm_train.{command}"))
    with pytest.raises(SystemExit) as info:
        module.main(args)
    assert info.value.code == 2
    out = capsys.readouterr()
    assert out.err.splitlines() == [expected] and out.out == ""
