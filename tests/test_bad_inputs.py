"""A catalog of bad inputs (config, data, checkpoints), each run against an existing, good run folder.

Every case must fail before anything is trained or written, with one line that names the key or
the file, what was found and how to fix it, and leave the run folder's checkpoints, metrics.json
and TensorBoard files byte for byte as they were. Most cases run in this process through the
path the CLI takes (compose, ``TrainRecipe.setup``; ``evaluate_checkpoint`` for ``mtmm-eval``);
those marked ``cli`` also run through the real command in a subprocess (exit status 2, one stderr
line, no traceback). docs/reliability.md, "Bad inputs", lists the same catalog.
"""

from __future__ import annotations

import csv
import hashlib
import re
import shutil
import wave
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, TINY, compose_cfg, run_cli, train
from hydra.errors import HydraException
from PIL import Image

from mtmm_train.errors import UserError
from mtmm_train.evaluate import EvalConfig, eval_dir, evaluate_checkpoint
from mtmm_train.recipe import TrainRecipe

# A one-line message also says what to do: a fix after "; ", or the allowed values.
FIX = re.compile(r"; |must be|one of|allowed|choose")


@dataclass
class Env:
    """Where a case runs: its scratch folder and the run folder it must leave untouched."""

    tmp: Path
    run: Path  # the good run (or a copy a case prepared); the bad command writes here if anything
    good: Path  # the good run's folder, to copy its checkpoint from


@dataclass
class Case:
    """One bad input.

    Attributes:
        id: the test id.
        kind: ``config``, ``data`` or ``checkpoint``.
        expected: a regex the message must match: the key or file, and the value found.
        overrides: command-line overrides (``mtmm-eval``: its arguments).
        prepare: writes files under ``env.tmp`` (may point ``env.run`` to a prepared folder);
            returns more overrides.
        cli: also run it through the real command in a subprocess.
        tool: ``train`` (``mtmm-train``) or ``eval`` (``mtmm-eval``).
        hydra: Hydra's own composition error (in-process: several lines listing the choices; the
            CLI puts it on one line, exit status 2).
    """

    id: str
    kind: str
    expected: str
    overrides: list[str] = field(default_factory=list)
    prepare: Callable[[Env], list[str]] | None = None
    cli: bool = False
    tool: str = "train"
    hydra: bool = False


# ---------------------------------------------------------------------- data: manifests in tmp
FILES = ["dataset=files", "dataset.split_column=fold", "dataset.cache=false", "dataset.num_workers=0",
         "+reader@dataset.modalities.tab=numeric", "dataset.modalities.tab.columns=[a,b]",
         "+target@dataset.tasks.kind=label", "+target@dataset.tasks.y=regression",
         "+encoder@model.encoders.tab=mlp", "+head@model.heads.kind=linear", "+head@model.heads.y=linear",
         "trainer.max_epochs=1", "trainer.batch_size=4", "logger.progress_bar=false"]
KINDS = ("x", "y", "z")
FOLDS = ("train", "train", "train", "val")  # by row % 4


def rows(n: int = 24) -> list[dict]:
    """A good manifest's rows: two numeric features, a 3-class label, a regression target, a fold."""
    return [{"a": round(0.1 * i + i % 3, 3), "b": float(i), "kind": KINDS[i % 3], "y": 0.5 * i, "fold": FOLDS[i % 4]}
            for i in range(n)]


def write_manifest(env: Env, table: list[dict], extra: tuple[str, ...] = ()) -> list[str]:
    """Write ``table`` as ``<tmp>/data/manifest.csv``; return the overrides that read it."""
    path = env.tmp / "data" / "manifest.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    return [*FILES, f"dataset.manifest={path}", f"dataset.cache_dir={env.tmp / 'cache'}", *extra]


def with_cell(row: int, column: str, value: object) -> Callable[[Env], list[str]]:
    """A good manifest with one cell changed."""

    def prepare(env: Env) -> list[str]:
        table = rows()
        table[row][column] = value
        return write_manifest(env, table)

    return prepare


def with_files(column: str, write: Callable[[Path, int], str], bad: Callable[[Path], None],
               *overrides: str) -> Callable[[Env], list[str]]:
    """A good manifest plus a column of files, then ``bad(data folder)`` spoils one of them.

    Args:
        column: the new column (and modality).
        write: ``write(data folder, row)`` writes that row's file and returns its relative path.
        bad: the mistake.
        overrides: the reader and encoder of the new modality.
    """

    def prepare(env: Env) -> list[str]:
        root, table = env.tmp / "data", rows()
        for i, r in enumerate(table):
            r[column] = write(root, i)
        bad(root)
        return write_manifest(env, table, overrides)

    return prepare


def png(root: Path, i: int) -> str:
    """A 4x4 PNG for row ``i``."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((4, 4, 3), 10 * i, dtype=np.uint8)).save(root / f"img/{i}.png")
    return f"img/{i}.png"


def npy(root: Path, i: int) -> str:
    """A 3-vector ``.npy`` for row ``i``."""
    (root / "npy").mkdir(parents=True, exist_ok=True)
    np.save(root / f"npy/{i}.npy", np.full(3, i, dtype=np.float32))
    return f"npy/{i}.npy"


def wav(root: Path, i: int) -> str:
    """A 0.1 s silent WAV for row ``i``."""
    (root / "wav").mkdir(parents=True, exist_ok=True)
    with wave.open(str(root / f"wav/{i}.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(np.zeros(800, dtype=np.int16).tobytes())
    return f"wav/{i}.wav"


IMAGES = ("+reader@dataset.modalities.photo=image", "dataset.modalities.photo.size=[4,4]",
          "+encoder@model.encoders.photo=cnn")
ARRAYS = ("+reader@dataset.modalities.emb=array", "+encoder@model.encoders.emb=mlp")
AUDIO = ("+reader@dataset.modalities.voice=audio", "+encoder@model.encoders.voice=conv1d")


def header_only(env: Env) -> list[str]:
    """A manifest with its header and no row."""
    overrides = write_manifest(env, rows())
    path = env.tmp / "data" / "manifest.csv"
    path.write_text(path.read_text().splitlines()[0] + "\n")
    return overrides


def empty_file(env: Env) -> list[str]:
    """A manifest of zero bytes."""
    overrides = write_manifest(env, rows())
    (env.tmp / "data" / "manifest.csv").write_bytes(b"")
    return overrides


def no_val_rows(env: Env) -> list[str]:
    """Every row in the training fold."""
    return write_manifest(env, [{**r, "fold": "train"} for r in rows()])


def one_class(env: Env) -> list[str]:
    """One class everywhere."""
    return write_manifest(env, [{**r, "kind": "x"} for r in rows()])


def no_val_label(env: Env) -> list[str]:
    """The regression target is empty in every validation row."""
    return write_manifest(env, [{**r, "y": "" if r["fold"] == "val" else r["y"]} for r in rows()])


def third_binary_class(env: Env) -> list[str]:
    """A binary target (no/yes) with a third value."""
    table = [{**r, "sick": ("no", "yes")[i % 2]} for i, r in enumerate(rows())]
    table[6]["sick"] = "maybe"
    return write_manifest(env, table, ("+target@dataset.tasks.sick=binary", "+head@model.heads.sick=linear"))


def broken_png(root: Path) -> None:
    """An image file that is not an image."""
    (root / "img/2.png").write_bytes(b"\x89PNG\r\n\x1a\n not really an image")


def nan_array(root: Path) -> None:
    """NaN inside one array file."""
    np.save(root / "npy/9.npy", np.array([1.0, np.nan, 2.0], dtype=np.float32))


def short_array(root: Path) -> None:
    """One array of another shape."""
    np.save(root / "npy/4.npy", np.zeros(5, dtype=np.float32))


# ---------------------------------------------------------------------- checkpoints
class CodePayload:
    """Unpickled with full pickle, this would create ``marker`` (any code could run instead)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


def marker(env: Env) -> Path:
    """The file a code-carrying checkpoint would create if it were ever unpickled unsafely."""
    return env.tmp / "pwned"


def code_checkpoint(env: Env) -> Path:
    """A checkpoint whose model entry runs code when unpickled."""
    path = env.tmp / "evil" / "checkpoints" / "last.pt"
    path.parent.mkdir(parents=True)
    torch.save({"model": CodePayload(marker(env)), "config": {}}, path)
    return path


def truncated(env: Env) -> Path:
    """The good run's last.pt cut in half, elsewhere."""
    good = (env.good / "checkpoints" / "last.pt").read_bytes()
    path = env.tmp / "cut" / "checkpoints" / "last.pt"
    path.parent.mkdir(parents=True)
    path.write_bytes(good[: len(good) // 2])
    return path


def resume(make: Callable[[Env], Path]) -> Callable[[Env], list[str]]:
    """Resume the good run's folder from the file ``make`` writes."""
    return lambda env: [*TINY, f"trainer.resume={make(env)}"]


def resume_good_with(*overrides: str) -> Callable[[Env], list[str]]:
    """Resume the good run's own last.pt under a different config."""
    return lambda env: [*TINY, f"trainer.resume={env.good / 'checkpoints' / 'last.pt'}", *overrides]


def truncated_in_run(env: Env) -> list[str]:
    """A copy of the good run whose last.pt is cut short, resumed with trainer.resume=auto."""
    env.run = env.tmp / "run"
    shutil.copytree(env.good, env.run)
    last = env.run / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    return [*TINY, "trainer.resume=auto"]


def text_file(env: Env) -> Path:
    """A text file named like a checkpoint."""
    path = env.tmp / "notes.pt"
    path.write_text("these are my notes, not a checkpoint\n")
    return path


def foreign_dict(env: Env) -> Path:
    """Another program's torch file."""
    path = env.tmp / "weights.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    return path


def evaluate(make: Callable[[Env], Path]) -> Callable[[Env], list[str]]:
    """``mtmm-eval`` on the file ``make`` writes; its run folder already holds an earlier evaluation."""

    def prepare(env: Env) -> list[str]:
        path = make(env)
        env.run = path.parent.parent
        earlier = Path(eval_dir(str(path))) / "robustness.json"
        earlier.parent.mkdir(parents=True, exist_ok=True)
        earlier.write_text('{"earlier": "evaluation"}\n')
        return [f"checkpoint={path}", "device=cpu", "plot=false"]

    return prepare


def foreign_target(env: Env) -> Path:
    """The good checkpoint, its stored fusion naming os.system."""
    state = torch.load(env.good / "checkpoints" / "last.pt", weights_only=True)
    state["config"]["fusion"]["_target_"] = "os.system"
    path = env.tmp / "crafted" / "checkpoints" / "best.pt"
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return path


def absent(env: Env) -> Path:
    """A checkpoint path that does not exist."""
    return env.tmp / "gone" / "checkpoints" / "best.pt"


CASES = [
    # --- config: the schema of trainer/logger, range checks, components, cross-checks
    Case("unknown_group_option", "config", r"Could not find 'fusion/nope'", ["fusion=nope"], hydra=True, cli=True),
    Case("unknown_trainer_key", "config", r"trainer\.max_epoch is not a setting of trainer; did you mean "
         r"trainer\.max_epochs\?", ["+trainer.max_epoch=3"]),
    Case("unknown_logger_key", "config", r"logger\.colour is not a setting of logger; allowed keys: tensorboard",
         ["+logger.colour=red"]),
    Case("wrong_type_int", "config", r"trainer\.max_epochs must be of type int \| None, found 'many'; e\.g\. "
         r"trainer\.max_epochs=8 \(or null\)", ["trainer.max_epochs=many"], cli=True),
    Case("wrong_type_bool", "config", r"trainer\.compile must be of type bool, found 'maybe'",
         ["trainer.compile=maybe"]),
    Case("seed_not_an_integer", "config", r"seed must be an integer, found 'abc'", ["seed=abc"]),
    Case("zero_batch_size", "config", r"trainer\.batch_size must be >= 1, found 0", ["trainer.batch_size=0"]),
    Case("negative_batch_size", "config", r"trainer\.batch_size must be >= 1, found -4", ["trainer.batch_size=-4"]),
    Case("zero_epochs", "config", r"trainer\.max_epochs must be >= 1 or null, found 0", ["trainer.max_epochs=0"]),
    Case("bad_precision", "config", r"trainer\.precision must be one of 32, bf16, fp16, found 'fp8'",
         ["trainer.precision=fp8"]),
    Case("bad_compile_mode", "config", r"trainer\.compile_mode must be one of default, reduce-overhead, "
         r"max-autotune, max-autotune-no-cudagraphs, found 'fast'", ["trainer.compile_mode=fast"]),
    Case("bad_device", "config", r"trainer\.device 'tpu:x' is not a device; use auto, cpu", ["trainer.device=tpu:x"]),
    Case("bad_nonfinite_policy", "config", r"trainer\.nonfinite must be one of warn, skip, stop, found 'maybe'",
         ["trainer.nonfinite=maybe"]),
    Case("accumulation_longer_than_an_epoch", "config", r"an epoch has 2 training batch\(es\) \(64 samples, "
         r"trainer\.batch_size=32[^)]*\), fewer than the trainer\.accumulate_grad_batches=4 of one optimizer step",
         ["dataset.num_train=64", "trainer.batch_size=32", "trainer.accumulate_grad_batches=4"]),
    Case("zero_log_interval", "config", r"logger\.log_every_n_steps must be >= 1, found 0",
         ["logger.log_every_n_steps=0"]),
    Case("monitor_not_computed", "config", r"trainer\.monitor is 'val/loss/nope', which this run does not compute; "
         r"choose one of: val/loss/total", ["trainer.monitor=val/loss/nope"]),
    Case("negative_encoder_size", "config", r"model\.encoders\.tabular\.out_dim must be a size >= 1, found -8",
         ["model.encoders.tabular.out_dim=-8"]),
    Case("negative_encoder_channels", "config", r"model\.encoders\.image\.channels must be sizes >= 1, found "
         r"\[16, -4\]", ["model.encoders.image.channels=[16,-4]"]),
    Case("negative_fusion_size", "config", r"fusion\.dim must be a size >= 1, found -3",
         ["fusion=sum", "fusion.dim=-3"]),
    Case("negative_trunk_size", "config", r"mtl\.hidden_dims must be sizes >= 1, found \[-5\]",
         ["mtl.hidden_dims=[-5]"]),
    Case("zero_expert_size", "config", r"mtl\.expert_dims must be sizes >= 1, found \[64, 0\]",
         ["mtl=mmoe", "mtl.expert_dims=[64,0]"]),
    Case("tensor_fusion_over_its_limit", "config", r"fusion=tensor would have 17,850,625 features .*above "
         r"fusion\.max_features=100,000; set fusion\.dim=16", ["fusion=tensor", "fusion.dim=null"], cli=True),
    Case("heads_do_not_divide", "config", r"fusion\.num_heads must divide the fused size 64, found num_heads=3; "
         r"e\.g\. fusion\.num_heads=2", ["fusion=attention", "fusion.num_heads=3"]),
    Case("unknown_constructor_argument", "config", r"fusion \(_target_ mtmm_train\.fusion\.concat\.ConcatFusion\) "
         r"could not be built: .*unexpected keyword argument 'bogus'", ["+fusion.bogus=1"]),
    Case("bad_optimizer_value", "config", r"optimizer \(_target_ torch\.optim\.AdamW\) could not be built: Invalid "
         r"learning rate: -1", ["optimizer.lr=-1"]),
    Case("out_of_range_dataset_setting", "config", r"dataset\.missing_fraction must be in \[0, 1\), found 1\.5",
         ["dataset.missing_fraction=1.5"]),
    Case("modality_without_encoder", "config", r"modality 'text' of the dataset has no encoder; add one, e\.g\. "
         r"\+encoder@model\.encoders\.text=mlp", ["~model.encoders.text"]),
    Case("encoder_for_a_missing_modality", "config", r"model\.encoders\.video is configured, but the dataset has no "
         r"modality 'video'", ["+encoder@model.encoders.video=mlp"]),
    Case("encoder_of_the_wrong_kind", "config", r"model\.encoders\.tabular: CNNEncoder reads image input, but "
         r"modality 'tabular' is vector", ["encoder@model.encoders.tabular=cnn"]),
    Case("task_without_head", "config", r"task 'tags' of the dataset has no head", ["~model.heads.tags"]),
    Case("unknown_task_selected", "config", r"tasks names unknown task 'nope'; the dataset has: category",
         ["tasks=[nope]"]),
    Case("unknown_modality_selected", "config", r"modalities names unknown modality 'video'; the dataset has: image",
         ["modalities=[image,video]"]),
    Case("no_task_selected", "config", r"tasks is empty; name at least one of: category", ["tasks=[]"]),
    # --- data: a manifest dataset (dataset=files) written into tmp
    Case("nan_feature", "data", r"dataset\.modalities\.tab: column 'a' row 4 holds 'nan', not a finite number",
         prepare=with_cell(3, "a", "nan"), cli=True),
    Case("inf_feature", "data", r"dataset\.modalities\.tab: column 'b' row 6 holds '-inf', not a finite number",
         prepare=with_cell(5, "b", "-inf")),
    Case("overflowing_feature", "data", r"column 'b' row 2 holds '1e999', not a finite number",
         prepare=with_cell(1, "b", "1e999")),
    Case("not_a_number", "data", r"dataset\.modalities\.tab: column 'a' row 3 holds '1,5', not a number",
         prepare=with_cell(2, "a", "1,5")),
    Case("nan_regression_target", "data", r"dataset\.tasks\.y: column 'y' row 8 holds 'NaN', not a finite number",
         prepare=with_cell(7, "y", "NaN")),
    Case("nan_inside_an_array_file", "data", r"dataset\.modalities\.emb: 1 row\(s\) hold NaN or Inf values, the first "
         r"is row 10 \('npy/9\.npy'\)", prepare=with_files("emb", npy, nan_array, *ARRAYS)),
    Case("wrong_array_shape", "data", r"dataset\.modalities\.emb: '.*4\.npy' has shape \(5,\), but '.*0\.npy' has "
         r"\(3,\)", prepare=with_files("emb", npy, short_array, *ARRAYS)),
    Case("label_outside_the_training_classes", "data", r"dataset\.tasks\.kind: column 'kind' has classes outside the "
         r"training split only: 'w' \(1 rows\)", prepare=with_cell(3, "kind", "w")),
    Case("third_class_in_a_binary_task", "data", r"dataset\.tasks\.sick: column 'sick' has 3 classes in the training "
         r"split \(maybe, no, yes\)", prepare=third_binary_class),
    Case("single_class", "data", r"dataset\.tasks\.kind: column 'kind' has 1 class\(es\) in the training split \(x\)",
         prepare=one_class),
    Case("empty_manifest", "data", r"dataset\.manifest '.*manifest\.csv' has no rows", prepare=header_only),
    Case("empty_file", "data", r"dataset\.manifest '.*manifest\.csv' is empty", prepare=empty_file),
    Case("empty_split", "data", r"the 'val' split is empty \(from the split column 'fold'\)", prepare=no_val_rows),
    Case("split_without_labels", "data", r"dataset\.tasks\.y: the 'val' split has no label for it",
         prepare=no_val_label),
    Case("unknown_split_value", "data", r"dataset\.split_column 'fold' has the value 'training'",
         prepare=with_cell(1, "fold", "training")),
    Case("wrong_column_name", "data", r"dataset\.tasks\.kind reads column 'class', which the manifest does not have; "
         r"its columns: a, b, kind",
         prepare=lambda env: write_manifest(env, rows(), ("dataset.tasks.kind.column=class",))),
    Case("missing_manifest", "data", r"dataset\.manifest '/no/such/manifest\.csv' does not exist",
         prepare=lambda env: [*write_manifest(env, rows()), "dataset.manifest=/no/such/manifest.csv"]),
    Case("missing_image_file", "data", r"dataset\.modalities\.photo \(column 'photo'\): 1 of 24 files not found, "
         r"e\.g\. .*img/7\.png", prepare=with_files("photo", png, lambda root: (root / "img/7.png").unlink(), *IMAGES),
         cli=True),
    Case("missing_audio_file", "data", r"dataset\.modalities\.voice \(column 'voice'\): 1 of 24 files not found, "
         r"e\.g\. .*wav/5\.wav", prepare=with_files("voice", wav, lambda root: (root / "wav/5.wav").unlink(), *AUDIO)),
    Case("corrupt_image_file", "data", r"dataset\.modalities\.photo: 1 of 24 files could not be read as images: "
         r".*img/2\.png", prepare=with_files("photo", png, broken_png, *IMAGES)),
    # --- checkpoints: resume (trainer.resume) and mtmm-eval
    Case("missing_checkpoint", "checkpoint", r"checkpoint '/no/such/last\.pt' does not exist",
         ["trainer.resume=/no/such/last.pt"]),
    Case("truncated_checkpoint", "checkpoint", r"checkpoint '.*cut/checkpoints/last\.pt' cannot be loaded safely",
         prepare=resume(truncated)),
    Case("truncated_last_pt_resume_auto", "checkpoint", r"checkpoint '.*run/checkpoints/last\.pt' cannot be loaded "
         r"safely .*; it is truncated", prepare=truncated_in_run, cli=True),
    Case("checkpoint_of_another_model", "checkpoint", r"checkpoint '.*last\.pt' was written for another model config "
         r"\(.*size mismatch for mtl\.trunk\.0\.weight", prepare=resume_good_with("mtl.hidden_dims=[64]")),
    Case("checkpoint_of_another_fusion", "checkpoint", r"checkpoint '.*last\.pt' was trained with fusion\._target_="
         r"mtmm_train\.fusion\.concat\.ConcatFusion, but this run has mtmm_train\.fusion\.sum\.SumFusion",
         prepare=resume_good_with("fusion=sum")),
    Case("checkpoint_of_another_optimizer", "checkpoint", r"checkpoint '.*last\.pt' was trained with "
         r"optimizer\._target_=torch\.optim\.AdamW, but this run has torch\.optim\.SGD",
         prepare=resume_good_with("optimizer=sgd")),
    Case("checkpoint_of_another_precision", "checkpoint", r"checkpoint '.*last\.pt' was written for another model "
         r"config \(.*GradScaler", prepare=resume_good_with("trainer.precision=fp16")),
    Case("pickle_that_carries_code", "checkpoint", r"checkpoint '.*evil/checkpoints/last\.pt' cannot be loaded safely",
         prepare=resume(code_checkpoint), cli=True),
    Case("not_a_checkpoint", "checkpoint", r"checkpoint '.*notes\.pt' cannot be loaded safely",
         prepare=resume(text_file)),
    Case("another_programs_checkpoint", "checkpoint", r"checkpoint '.*weights\.pt' is not an mtmm-train checkpoint "
         r"\(no 'model'",
         prepare=resume(foreign_dict)),
    Case("eval_foreign_target", "checkpoint", r"the stored config's fusion\._target_ is 'os\.system'.*"
         r"allow_foreign_targets=true", prepare=evaluate(foreign_target), tool="eval", cli=True),
    Case("eval_pickle_that_carries_code", "checkpoint", r"checkpoint '.*evil/checkpoints/last\.pt' cannot be loaded "
         r"safely", prepare=evaluate(code_checkpoint), tool="eval"),
    Case("eval_truncated_checkpoint", "checkpoint", r"cut/checkpoints/last\.pt' cannot be loaded safely",
         prepare=evaluate(truncated), tool="eval"),
    Case("eval_missing_checkpoint", "checkpoint", r"checkpoint='.*gone/checkpoints/best\.pt' is not a file",
         prepare=evaluate(absent), tool="eval"),
]
CLI_CASES = [c for c in CASES if c.cli]


# ---------------------------------------------------------------------- fixtures and helpers
@pytest.fixture(scope="module")
def good_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One good run (checkpoints, metrics.json, TensorBoard files) that every bad case aims at."""
    run = tmp_path_factory.mktemp("good") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is faster
    try:
        train(run)
    finally:
        torch.set_num_threads(threads)
    assert (run / "checkpoints" / "last.pt").is_file() and (run / "metrics.json").is_file()
    assert list((run / "tensorboard").iterdir())
    return run


def snapshot(folder: Path, hydra_files: bool = True) -> dict[str, tuple[str, int]]:
    """Every file under ``folder``: its SHA-256 and modification time.

    Args:
        hydra_files: include ``.hydra/`` and ``*.log``, which Hydra itself rewrites and appends
            to when a command runs in the folder (before our code does anything).
    """
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()
            and (hydra_files or (".hydra" not in p.parts and p.suffix != ".log"))}


def prepared(case: Case, tmp_path: Path, good_run: Path) -> tuple[Env, list[str]]:
    """The case's files written, and its arguments (a config case on the tiny budget of the good run)."""
    env = Env(tmp_path, good_run, good_run)
    if case.prepare:
        return env, [*case.overrides, *case.prepare(env)]
    return env, [*TINY, *case.overrides] if case.tool == "train" else list(case.overrides)


def run_in_process(case: Case, env: Env, args: list[str]) -> BaseException:
    """What the CLI does (compose, then set up the recipe in the run folder), returning the error."""
    with pytest.raises((UserError, HydraException)) as info:
        if case.tool == "eval":
            cfg = EvalConfig(**dict(a.split("=", 1) for a in args))  # type: ignore[arg-type]
            cfg.plot = False
            evaluate_checkpoint(cfg, Path(eval_dir(cfg.checkpoint)))
        else:
            TrainRecipe(compose_cfg(args), env.run).setup()
    return info.value


def assert_one_clear_line(message: str, expected: str) -> None:
    """One line that matches ``expected`` (key or file, and value) and says what to do."""
    assert "\n" not in message and "\x1b" not in message, repr(message)  # one plain line
    assert re.search(expected, message), f"{expected!r} not in {message!r}"
    assert FIX.search(message), f"no fix or allowed values in {message!r}"


# ---------------------------------------------------------------------- tests
def test_the_catalog_covers_every_kind() -> None:
    documented = re.search(r"\((\d+) cases; (\d+) also through the real commands",
                           (ROOT / "docs" / "reliability.md").read_text())
    assert documented, "docs/reliability.md must give the catalog's size"
    assert (int(documented[1]), int(documented[2])) == (len(CASES), len(CLI_CASES))
    kinds = [c.kind for c in CASES]
    assert len(CASES) >= 30 and min(kinds.count(k) for k in ("config", "data", "checkpoint")) >= 10
    assert len({c.id for c in CASES}) == len(CASES)
    assert 6 <= len(CLI_CASES) <= 8 and {c.kind for c in CLI_CASES} == {"config", "data", "checkpoint"}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_one_line_and_leaves_outputs_untouched(case: Case, tmp_path: Path, good_run: Path) -> None:
    env, args = prepared(case, tmp_path, good_run)
    before = snapshot(env.run)
    error = run_in_process(case, env, args)
    if case.hydra:  # Hydra's own error: several lines, listing the choices of the group
        assert isinstance(error, HydraException) and re.search(case.expected, str(error))
        assert "Available options" in str(error)
    else:
        assert isinstance(error, UserError), repr(error)
        assert_one_clear_line(str(error), case.expected)
    assert snapshot(env.run) == before
    assert not marker(env).exists()  # a checkpoint that carries code never ran it


@pytest.fixture(scope="module")
def cli_runs(good_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Env, dict, object]]:
    """Every ``cli`` case through the real command, all at once (each is mostly start-up time).

    Returns:
        case id -> (its Env, the run folder's snapshot before, the finished process).
    """
    started = {}
    for case in CLI_CASES:
        env, args = prepared(case, tmp_path_factory.mktemp(case.id), good_run)
        module = "mtmm_train.evaluate" if case.tool == "eval" else "mtmm_train"
        if case.tool == "train" and env.run == good_run:
            # Its own copy: two commands in one folder at once would meet the run lock, not their mistake.
            env = Env(env.tmp, env.tmp / "run", good_run)
            shutil.copytree(good_run, env.run)
        if case.tool == "train":
            args = [f"hydra.run.dir={env.run}", *args]  # the same folder: a rerun of the command with a mistake
        started[case.id] = (env, snapshot(env.run, hydra_files=False), module, args)
    with ThreadPoolExecutor(max_workers=2) as pool:  # two at a time: CI has two cores
        procs = {k: pool.submit(run_cli, args, env.tmp, module, 300, {"OMP_NUM_THREADS": "1"})
                 for k, (env, _, module, args) in started.items()}
        return {k: (env, before, procs[k].result()) for k, (env, before, _, _) in started.items()}


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.id for c in CLI_CASES])
def test_bad_input_through_the_real_cli(case: Case, cli_runs: dict[str, tuple[Env, dict, object]]) -> None:
    env, before, proc = cli_runs[case.id]
    name = "mtmm-eval" if case.tool == "eval" else "mtmm-train"
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr + proc.stdout
    # Hydra's own composition errors too: the CLI puts them on one line (e.g. the group's options).
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith(f"{name}: error: "), proc.stderr[-2000:]
    assert_one_clear_line(lines[0], case.expected)
    if case.hydra:
        assert "available options in 'fusion': attention, concat," in lines[0]
    assert snapshot(env.run, hydra_files=False) == before
    assert not marker(env).exists()


def test_the_code_carrying_payload_would_run_if_unpickled(tmp_path: Path) -> None:
    # The check above means something only if the payload really runs code under a full unpickle.
    env = Env(tmp_path, tmp_path, tmp_path)
    path = code_checkpoint(env)
    torch.load(path, weights_only=False)
    assert marker(env).exists()
