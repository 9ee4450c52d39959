"""Filesystem faults: read-only mounts, files where folders belong, names too long, a full disk.

Each ends in one line naming the path and the fix (exit 2 when checked before the run starts,
1 when the disk fails mid-run), never a traceback, and loses nothing that was written before.

A read-only folder is a genuinely read-only tmpfs when running as root (where chmod stops no
write) and a chmod 0555 folder otherwise; a full disk is simulated in the command's process
(a file that raises ENOSPC past a few bytes), through the real CLI.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from conftest import HANG_GUARD_S, ROOT, TINY, run_cli, train

from mtmm_train import checkpoint, fileio
from mtmm_train.fileio import WriteError

ONE_THREAD = {"OMP_NUM_THREADS": "1"}

# Runs a CLI's main() (argv[1], "module:function") with the rest of argv, on a disk that is full
# for the files whose temporary name starts with "." + $MTMM_FULL_FILE + ".": the first write of
# more than $MTMM_FULL_AFTER bytes in total raises ENOSPC, as write(2) does on a full disk. A
# $MTMM_FULL_FILE with a "/" (".hydra/config.yaml") is a file that others than the project write
# with a plain open() (Hydra's own): the path of a file opened for writing ends with it.
FULL_DISK = r"""
import builtins, errno, importlib, os, sys, tempfile
target, limit = "." + os.environ["MTMM_FULL_FILE"] + ".", int(os.environ["MTMM_FULL_AFTER"])
mkstemp, fdopen, open_, names = tempfile.mkstemp, os.fdopen, builtins.open, {}

def named_mkstemp(*args, **kwargs):
    fd, name = mkstemp(*args, **kwargs)
    names[fd] = os.path.basename(name)
    return fd, name

class FullDisk:
    def __init__(self, f):
        self.f, self.written = f, 0
    def write(self, data):
        if self.written + len(data) > limit:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.written += len(data)
        return self.f.write(data)
    def __getattr__(self, name):
        return getattr(self.f, name)
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        return self.f.__exit__(*exc)

def full_fdopen(fd, *args, **kwargs):
    f = fdopen(fd, *args, **kwargs)
    return FullDisk(f) if names.get(fd, "").startswith(target) else f

def full_open(file, mode="r", *args, **kwargs):
    f = open_(file, mode, *args, **kwargs)
    written = any(c in mode for c in "wax+")
    return FullDisk(f) if written and str(file).endswith(os.sep + os.environ["MTMM_FULL_FILE"]) else f

tempfile.mkstemp, os.fdopen = named_mkstemp, full_fdopen
if "/" in os.environ["MTMM_FULL_FILE"]:
    builtins.open = full_open
module, function = sys.argv[1].split(":")
sys.argv = [module, *sys.argv[2:]]
getattr(importlib.import_module(module), function)()
"""


def on_a_full_disk(entry: str, args: list[str], cwd: Path, file: str, after: int = 100) -> subprocess.CompletedProcess:
    """Run ``entry`` (``module:function``) with ``args``; writing ``file`` fills the disk after ``after`` bytes."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "MTMM_FULL_FILE": file, "MTMM_FULL_AFTER": str(after)}
    return subprocess.run([sys.executable, "-c", FULL_DISK, entry, *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=HANG_GUARD_S)


def one_error_line(proc: subprocess.CompletedProcess, tool: str = "mtmm-train") -> str:
    """The single line on stderr, with no traceback anywhere; returns it."""
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"{tool}: error: "), proc.stderr[-3000:]
    return lines[0]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` and a hash of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def no_temporaries(folder: Path) -> bool:
    return not list(folder.rglob(".*.tmp"))


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[tuple[Path, Callable[[], None]]]:
    """A folder to fill, and the function that makes it (and everything in it) read-only.

    As root, chmod stops no write: the folder is then a tmpfs, remounted read-only (EROFS, as a
    read-only NFS or bind mount gives). Skipped where neither works.
    """
    folder = tmp_path / "ro"
    folder.mkdir()
    mounted = False
    if os.geteuid() == 0:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(folder)], capture_output=True)
        if done.returncode != 0:
            pytest.skip("as root chmod does not stop writes, and mounting a tmpfs is not allowed here")
        mounted = True

    def seal() -> None:
        if mounted:
            subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True, capture_output=True)
        else:
            for p in [folder, *folder.rglob("*")]:
                if p.is_dir():
                    p.chmod(0o555)
        try:
            (folder / "probe").write_text("x")
        except OSError:
            return
        pytest.skip(f"could not make {folder} read-only")

    yield folder, seal
    if mounted:
        subprocess.run(["umount", str(folder)], check=True, capture_output=True)
    else:
        for p in [folder, *folder.rglob("*")]:
            if p.is_dir():
                p.chmod(0o755)


# ---------------------------------------------------------------------- the run folder, before training
def test_a_run_folder_on_a_read_only_mount(read_only: tuple[Path, Callable[[], None]], tmp_path: Path) -> None:
    folder, seal = read_only
    (folder / "old-run").mkdir()
    (folder / "old-run" / "metrics.json").write_text('{"best": {}}')
    seal()
    before = snapshot(folder)
    for run in (folder / "new-run", folder / "old-run"):  # to be created; there already
        proc = run_cli([f"hydra.run.dir={run}", *TINY], cwd=tmp_path, env=ONE_THREAD)
        assert proc.returncode == 2, proc.stderr[-3000:]
        line = one_error_line(proc)
        assert f"hydra.run.dir '{run}'" in line and ("read-only" in line or "permission denied" in line), line
        assert line.endswith("pass hydra.run.dir=<a writable folder>"), line
    assert snapshot(folder) == before


def test_a_run_folder_where_no_one_may_write(tmp_path: Path) -> None:
    # /sys is read-only to everyone (root included) on Linux: creating a folder at its top fails.
    if not Path("/sys/kernel").is_dir():
        pytest.skip("no sysfs")
    run = Path("/sys/mtmm-train-test-run")
    proc = run_cli([f"hydra.run.dir={run}", *TINY], cwd=tmp_path, env=ONE_THREAD)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = one_error_line(proc)
    assert f"hydra.run.dir '{run}' cannot be created" in line and "pass hydra.run.dir=" in line, line
    assert not run.exists()


@pytest.mark.parametrize("where", ["run_dir", "under_a_file", "checkpoints", "tensorboard"])
def test_a_file_where_a_folder_belongs(where: str, tmp_path: Path) -> None:
    run = tmp_path / "run"
    blocker = {"run_dir": run, "under_a_file": run, "checkpoints": run / "checkpoints",
               "tensorboard": run / "tensorboard"}[where]
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a folder")
    folder = run / "sub" if where == "under_a_file" else run
    before = snapshot(tmp_path)
    proc = run_cli([f"hydra.run.dir={folder}", *TINY], cwd=tmp_path, env=ONE_THREAD)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = one_error_line(proc)
    expected = {
        "run_dir": f"hydra.run.dir '{run}' is a file, not a folder; pass hydra.run.dir=<a writable folder>",
        "under_a_file": f"hydra.run.dir '{folder}' cannot be created: '{run}' is a file, not a folder; pass "
                        "hydra.run.dir=",
        "checkpoints": f"the checkpoints folder '{blocker}' is a file, not a folder; move it away, or pass another "
                       "hydra.run.dir",
        "tensorboard": f"the TensorBoard folder '{blocker}' is a file, not a folder; move it away, or pass another "
                       "hydra.run.dir (or logger=none)",
    }[where]
    assert expected in line, line
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before
    new = [k for k in after if k not in before]
    if where in ("run_dir", "under_a_file"):  # refused before Hydra wrote anything
        assert new == [], new
    else:  # Hydra's own files only: nothing was built or trained
        assert all(".hydra/" in k or k.endswith(".log") for k in new), new


def test_a_run_folder_name_too_long_for_the_filesystem(tmp_path: Path) -> None:
    run = tmp_path / ("x" * 300)
    proc = run_cli([f"hydra.run.dir={run}", *TINY], cwd=tmp_path, env=ONE_THREAD)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = one_error_line(proc)
    assert f"hydra.run.dir '{run}' cannot be created: a name in the path has 300 characters, more than the " \
           "filesystem allows" in line and line.endswith("pass hydra.run.dir=<a writable folder>"), line


# ---------------------------------------------------------------------- the dataset cache
@pytest.fixture
def manifest_config(tmp_path: Path) -> Callable[[Path], list[str]]:
    """A manifest dataset (tests/test_data_files.py's files) as a user's config; returns its overrides."""
    from test_data_files import make_rows, write_manifest

    data = tmp_path / "data"
    data.mkdir()
    manifest = write_manifest(data, make_rows(data, n=36))
    conf = tmp_path / "myconf" / "dataset"
    conf.mkdir(parents=True)
    (conf / "mydata.yaml").write_text(f"""
defaults:
  - files
  - /reader@modalities.tabular: numeric
  - /target@tasks.colour: label
  - /encoder@_global_.model.encoders.tabular: mlp
  - /head@_global_.model.heads.colour: linear
  - _self_
manifest: {manifest}
split_column: fold
num_workers: 0
modalities:
  tabular: {{columns: [a, b]}}
""")

    def overrides(cache_dir: Path) -> list[str]:
        return ["-cd", str(tmp_path / "myconf"), "dataset=mydata", f"dataset.cache_dir={cache_dir}",
                "trainer.max_epochs=1", "trainer.batch_size=8", "logger.progress_bar=false"]
    return overrides


def test_a_read_only_dataset_cache_folder(read_only: tuple[Path, Callable[[], None]], tmp_path: Path,
                                          manifest_config: Callable[[Path], list[str]]) -> None:
    cache, seal = read_only
    seal()
    proc = run_cli([*manifest_config(cache), f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, env=ONE_THREAD)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = one_error_line(proc)
    assert f"the dataset cache folder '{cache / 'files'}' cannot be created: the filesystem is read-only" in line \
        or f"the dataset cache folder '{cache / 'files'}' cannot be created: permission denied" in line, line
    assert line.endswith("point dataset.cache_dir (or MTMM_CACHE_DIR) at a writable folder, or pass "
                         "dataset.cache=false"), line
    assert not (tmp_path / "run" / "checkpoints").exists()  # before any training


def test_a_dataset_cache_folder_that_is_a_file(tmp_path: Path, manifest_config: Callable[[Path], list[str]]) -> None:
    cache = tmp_path / "cache"
    cache.write_text("not a folder")
    proc = run_cli([*manifest_config(cache), f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, env=ONE_THREAD)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"dataset.cache_dir '{cache}' is a file, not a folder; point dataset.cache_dir (or MTMM_CACHE_DIR) at a " \
           "folder, or pass dataset.cache=false" in one_error_line(proc)
    assert cache.read_text() == "not a folder"


# ---------------------------------------------------------------------- a full disk during training
def test_a_full_disk_mid_run_is_one_line_and_the_earlier_files_survive(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(run)  # the earlier files: a finished run's (in this process; the full disk goes through the CLI)
    kept = {name: (run / name).read_bytes() for name in ("checkpoints/best.pt", "metrics.json")}
    # A second run in the folder (seed=1) writes last.pt each step, then fills the disk writing best.pt;
    # continued, it fills the disk writing metrics.json; continued again (room made), it finishes.
    args = [f"hydra.run.dir={run}", *TINY, "seed=1", "trainer.checkpoint_every_n_steps=1"]
    for file, extra in (("best.pt", []), ("metrics.json", ["trainer.resume=auto"])):
        proc = on_a_full_disk("mtmm_train.cli:main", [*args, *extra], tmp_path, file)
        assert proc.returncode == 1, proc.stderr[-3000:]
        line = one_error_line(proc)
        target = run / ("checkpoints/best.pt" if file == "best.pt" else file)
        assert f"cannot write '{target}': the disk is full; the files written before are intact" in line, line
        assert line.endswith("then continue with trainer.resume=auto in the same hydra.run.dir"), line
        assert no_temporaries(run)
        assert (run / "metrics.json").read_bytes() == kept["metrics.json"]  # the first run's, byte for byte
        if file == "best.pt":
            assert (run / "checkpoints/best.pt").read_bytes() == kept["checkpoints/best.pt"]
            assert checkpoint.load(run / "checkpoints" / "last.pt")["step"] == 3  # this run's, whole
    again = run_cli([*args, "trainer.resume=auto"], cwd=tmp_path, env=ONE_THREAD)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((run / "metrics.json").read_text())["steps"] == 3


# ---------------------------------------------------------------------- a full disk when Hydra writes
HYDRA_FULL = "the disk is full; pass hydra.run.dir=<a writable folder> (hydra.sweep.dir with -m)"


def test_a_full_disk_when_hydra_writes_the_run_folder_is_one_line_and_leaves_no_folder(tmp_path: Path) -> None:
    # Hydra writes .hydra/config.yaml with a plain open() before the run's code starts.
    run = tmp_path / "runs" / "new"
    proc = on_a_full_disk("mtmm_train.cli:main", [f"hydra.run.dir={run}", *TINY], tmp_path, ".hydra/config.yaml",
                          after=0)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert one_error_line(proc) == f"mtmm-train: error: cannot write in '{run}': {HYDRA_FULL}"
    assert not (tmp_path / "runs").exists()  # the folders this command created, with Hydra's files only


# Each job of a sweep fails with an error of its own (not of the filesystem's state, though it carries an
# errno that a failed write of Hydra's could have): the basic launcher runs both, then raises job 0's.
FAILING_JOBS = r"""
import errno, sys
from mtmm_train import cli

def run(cfg):
    raise PermissionError(errno.EACCES, f"job {cfg.seed} cannot read", "/nowhere/input")

cli.run = run
sys.argv = ["mtmm-train", *sys.argv[1:]]
cli.main()
"""


def test_a_sweep_job_error_is_not_taken_for_a_failed_write_of_hydras(tmp_path: Path) -> None:
    # A job's own error is marked on the exception itself: a module-level "last error" held job 1's
    # error when Hydra raised job 0's, which then read as Hydra's own write failing (exit 2, one line).
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", FAILING_JOBS, "-m", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                           "seed=0,1", *TINY], cwd=tmp_path, capture_output=True, text=True, env=env,
                          timeout=HANG_GUARD_S)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "cannot write" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.rstrip().endswith("PermissionError: [Errno 13] job 0 cannot read: '/nowhere/input'"), \
        proc.stderr[-3000:]


# ---------------------------------------------------------------------- mtmm-eval
@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("trained")
    train(run, ["logger=none", "modalities=[image,tabular]", "tasks=[category]"])
    return run / "checkpoints" / "best.pt"


EVAL_FAST = ["subsets=false", "noise=[1.0]", "zero=[]", "drop=[]", "plot=false"]


def test_mtmm_eval_of_a_checkpoint_in_a_read_only_folder(trained: Path, read_only: tuple[Path, Callable[[], None]],
                                                         tmp_path: Path) -> None:
    folder, seal = read_only
    (folder / "run" / "checkpoints").mkdir(parents=True)
    ckpt = folder / "run" / "checkpoints" / "best.pt"
    ckpt.write_bytes(trained.read_bytes())
    seal()
    proc = run_cli([f"checkpoint={ckpt}", *EVAL_FAST], cwd=tmp_path, module="mtmm_train.evaluate", env=ONE_THREAD)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = one_error_line(proc, "mtmm-eval")
    assert f"hydra.run.dir '{folder / 'run' / 'eval' / 'best'}' cannot be created" in line, line
    assert "pass hydra.run.dir=<a writable folder> for the results (by default they go next to the checkpoint" in line
    # What the message says to do works.
    out = tmp_path / "out"
    proc = run_cli([f"checkpoint={ckpt}", *EVAL_FAST, f"hydra.run.dir={out}"], cwd=tmp_path,
                   module="mtmm_train.evaluate", env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "robustness.json").read_text())["checkpoint"] == str(ckpt)


def test_a_full_disk_while_mtmm_eval_writes_keeps_the_earlier_results(trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = [f"checkpoint={trained}", *EVAL_FAST, f"hydra.run.dir={out}"]
    proc = run_cli(args, cwd=tmp_path, module="mtmm_train.evaluate", env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr[-3000:]
    earlier = (out / "robustness.json").read_bytes()
    proc = on_a_full_disk("mtmm_train.evaluate:main", [*args, "noise=[2.0]"], tmp_path, "robustness.json")
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = one_error_line(proc, "mtmm-eval")
    assert f"cannot write '{out / 'robustness.json'}': the disk is full; the files there from before are intact" \
        in line, line
    assert (out / "robustness.json").read_bytes() == earlier  # still the earlier, valid, file
    json.loads(earlier)
    assert no_temporaries(out)


def test_a_full_disk_when_hydra_writes_mtmm_evals_folder_keeps_the_earlier_results(trained: Path,
                                                                                    tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = [f"checkpoint={trained}", *EVAL_FAST]
    proc = run_cli([*args, f"hydra.run.dir={out}"], cwd=tmp_path, module="mtmm_train.evaluate", env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr[-3000:]

    def results() -> dict[str, str]:  # all but Hydra's own files, which Hydra rewrites (.hydra/, the .log)
        return {k: v for k, v in snapshot(out).items() if not k.startswith(".hydra") and not k.endswith(".log")}

    earlier = results()
    assert "robustness.json" in earlier and "metrics.json" in earlier
    new = tmp_path / "new" / "eval"
    for folder in (out, new):  # there from before; to be created
        proc = on_a_full_disk("mtmm_train.evaluate:main", [*args, f"hydra.run.dir={folder}"], tmp_path,
                              ".hydra/config.yaml", after=0)
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert one_error_line(proc, "mtmm-eval") == (f"mtmm-eval: error: cannot write in '{folder}': the disk is full; "
                                                     "make room, or pass hydra.run.dir=<a writable folder> for the "
                                                     "results")
    assert results() == earlier  # byte for byte, and no lock file or temporary left
    assert not (tmp_path / "new").exists()


# ---------------------------------------------------------------------- mtmm-report
def fake_job(folder: Path, overrides: list[str], metrics: str | None) -> Path:
    """A job folder as a sweep leaves it: .hydra/overrides.yaml and (unless None) metrics.json."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if metrics is not None:
        (folder / "metrics.json").write_text(metrics)
    return folder


GOOD = json.dumps({"monitor": "val/loss/total", "best": {"value": 0.5, "epoch": 1, "step": 3, "metrics": {
    "val/loss/total": 0.5, "val/category/accuracy": 0.75}}, "final": {"val/loss/total": 0.6}})


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """A sweep of four jobs: one good, one cut short mid-write, one without 'best', one unfinished."""
    root = tmp_path / "sweep"
    fake_job(root / "0", ["fusion=concat", "seed=0"], GOOD)
    fake_job(root / "1", ["fusion=sum", "seed=0"], GOOD[:40])
    fake_job(root / "2", ["fusion=max", "seed=0"], json.dumps({"monitor": "val/loss/total", "final": {}}))
    fake_job(root / "3", ["fusion=mean", "seed=0"], None)
    return root


def test_mtmm_report_leaves_out_unreadable_jobs_with_one_warning_each(sweep: Path, tmp_path: Path) -> None:
    proc = run_cli([str(sweep)], cwd=tmp_path, module="mtmm_train.report")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    warnings = proc.stderr.splitlines()
    assert len(warnings) == 2 and all(w.startswith("mtmm-report: warning: left out ") for w in warnings), warnings
    assert f"{sweep / '1' / 'metrics.json'} is not valid JSON (" in warnings[0]
    assert f"{sweep / '2' / 'metrics.json'} has no 'best' entry" in warnings[1]
    assert "| (defaults) | 1 | 0.5000 | 0.7500 |" in proc.stdout  # job 0 alone (n = 1: no ±)
    report = (sweep / "report.md").read_text()
    assert "2 unreadable job(s) left out" in report and "1 unfinished job(s) left out" in report


def test_mtmm_report_out_is_a_file(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "report-file"
    out.write_text("keep me")
    proc = run_cli([str(sweep), "--out", str(out)], cwd=tmp_path, module="mtmm_train.report")
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = [w for w in proc.stderr.splitlines() if not w.startswith("mtmm-report: warning:")]
    assert len(line) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert line[0] == f"mtmm-report: error: --out '{out}' is a file, not a folder; pass --out <a writable folder> " \
                      "(it is created if missing)"
    assert out.read_text() == "keep me"


def test_mtmm_report_on_a_full_disk_keeps_the_earlier_report(sweep: Path, tmp_path: Path) -> None:
    assert run_cli([str(sweep)], cwd=tmp_path, module="mtmm_train.report").returncode == 0
    earlier = {name: (sweep / name).read_bytes() for name in ("report.md", "report.csv")}
    fake_job(sweep / "4", ["fusion=gated", "seed=0"], GOOD)  # the report would change
    proc = on_a_full_disk("mtmm_train.report:main", [str(sweep)], tmp_path, "report.md")
    assert proc.returncode == 1, proc.stderr[-3000:]
    errors = [w for w in proc.stderr.splitlines() if not w.startswith("mtmm-report: warning:")]
    assert errors == [f"mtmm-report: error: cannot write '{sweep / 'report.md'}': the disk is full; the files there "
                      "from before are intact: make room, or pass --out <another folder>"], proc.stderr
    assert {name: (sweep / name).read_bytes() for name in earlier} == earlier
    assert no_temporaries(sweep)


# ---------------------------------------------------------------------- the atomic writer itself
def test_atomic_write_keeps_the_old_file_and_no_temporary_on_any_failure(tmp_path: Path) -> None:
    path = tmp_path / "state.pt"
    fileio.save_torch({"v": torch.zeros(3)}, path)
    good = path.read_bytes()

    class Full:
        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def full_save(obj: object, f: object) -> None:  # torch wraps the OSError in a RuntimeError
        torch.serialization.save(obj, Full())

    with pytest.MonkeyPatch.context() as m:
        m.setattr(torch, "save", full_save)
        with pytest.raises(WriteError) as info:
            fileio.save_torch({"v": torch.ones(1000)}, path)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)
    assert info.value.__cause__ is None and info.value.__suppress_context__  # one error, not a chain
    with pytest.raises(ZeroDivisionError):  # not a filesystem fault: passes through as it is
        with fileio.atomic_write(path) as f:
            f.write(b"half")
            _ = 1 / 0
    assert path.read_bytes() == good and no_temporaries(tmp_path)
    fileio.write_json(tmp_path / "m.json", {"x": float("nan")})
    assert (tmp_path / "m.json").read_text() == '{\n  "x": NaN\n}'


@pytest.mark.parametrize("umask", [0o077, 0o002], ids=["umask_077", "umask_002"])
def test_written_files_get_the_mode_a_plain_open_would(umask: int, tmp_path: Path) -> None:
    """0666 less the umask (mkstemp's 0600 is not kept); a file replaced keeps its own mode."""
    import stat

    def mode(p: Path) -> int:
        return stat.S_IMODE(p.stat().st_mode)

    old = os.umask(umask)
    try:
        run = tmp_path / "run"
        train(run, ["logger=none"])  # every file a training run writes: checkpoints, metrics.json
        fileio.write_text(run / "notes" / "a.md", "x")  # a folder it creates too
        written = sorted(p for p in run.rglob("*") if p.is_file())
        assert {"best.pt", "last.pt", "metrics.json", "a.md"} <= {p.name for p in written}
        assert {p.name: oct(mode(p)) for p in written} == {p.name: oct(0o666 & ~umask) for p in written}
        (run / "metrics.json").chmod(0o640)
        fileio.write_json(run / "metrics.json", {"replaced": True})
        assert mode(run / "metrics.json") == 0o640 and json.loads((run / "metrics.json").read_text())["replaced"]
    finally:
        os.umask(old)
