"""The command-line scripts in scripts/: each imports the package only (never another script, never a
sys.path edit), each loads as a module (its imports resolve), and each prints its usage for --help
without doing any work."""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import ROOT, run_cli

SCRIPTS = sorted((ROOT / "scripts").glob("*.py"))


def imported_modules(path: Path) -> set[str]:
    """The top-level names of every module ``path`` imports."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_a_script_imports_no_other_script_and_leaves_sys_path_alone(path: Path) -> None:
    others = {p.stem for p in SCRIPTS} - {path.stem}
    assert not imported_modules(path) & others, "shared code belongs in mtmm_train/benchmarking.py"
    assert "sys.path" not in path.read_text()


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_a_script_loads_as_a_module(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Without scripts/ on the path, as when the script is imported from elsewhere: a module of its
    # own name must not be found next to it.
    monkeypatch.setattr(sys, "path", [p for p in sys.path if Path(p or ".").resolve() != path.parent.resolve()])
    spec = importlib.util.spec_from_file_location(f"_script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert callable(module.main)


def test_every_script_prints_its_usage_for_help_and_does_nothing_else(tmp_path: Path) -> None:
    """``python scripts/<x>.py --help``: exit 0 and a usage on stdout, no traceback, and nothing written
    (in the folder it runs in, or the dataset cache); nothing may download. Two at a time: each is mostly
    the import of torch."""
    cache = tmp_path / "cache"
    env = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "MTMM_CACHE_DIR": str(cache)}

    def help_of(path: Path) -> tuple[Path, object]:
        cwd = tmp_path / path.stem
        cwd.mkdir()
        return cwd, run_cli([str(path), "--help"], cwd=cwd, module="", timeout=120, env=env)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(zip(SCRIPTS, pool.map(help_of, SCRIPTS), strict=True))
    for path, (cwd, proc) in results.items():
        assert proc.returncode == 0, (path.name, proc.stderr[-2000:])
        assert proc.stdout.startswith("usage:") and path.name in proc.stdout.splitlines()[0], (path.name, proc.stdout)
        assert "Traceback" not in proc.stderr, (path.name, proc.stderr[-2000:])
        assert list(cwd.iterdir()) == [], (path.name, sorted(p.name for p in cwd.rglob("*")))
    assert not cache.exists() or list(cache.iterdir()) == []


def test_build_av_digits_refuses_an_option_in_one_line(tmp_path: Path) -> None:
    proc = run_cli([str(ROOT / "scripts" / "build_av_digits.py"), "--speeds", "120"], cwd=tmp_path, module="",
                   env={"MTMM_CACHE_DIR": str(tmp_path / "cache")})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip() == "build_av_digits: error: unknown option '--speeds'; the arguments are overrides " \
                                  "of a run (key=value, e.g. dataset.speeds=[120,200] seed=1); see --help"
    assert list(tmp_path.iterdir()) == []


def test_mtl_evidence_sweeps_every_balancer() -> None:
    spec = importlib.util.spec_from_file_location("_script_mtl_evidence", ROOT / "scripts" / "mtl_evidence.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    names = module.parse_args([]).balancers
    assert names[0] == "static"
    assert sorted(names) == sorted(p.stem for p in (ROOT / "configs" / "balancer").glob("*.yaml"))


def test_benchmark_finetune_suite_measures_each_choice(tmp_path: Path) -> None:
    """``scripts/benchmark.py --suite finetune`` at tiny settings: one row per choice, each from its own process."""
    out = tmp_path / "finetune.json"
    tiny = ["dataset.image_size=32", "model.encoders.image.model_name=test_vit", "dataset.num_train=16",
            "trainer.batch_size=8", "trainer.eval_batch_size=8"]
    proc = run_cli([str(ROOT / "scripts" / "benchmark.py"), "--suite", "finetune", "--choices", "frozen+cache",
                    "full", "--rounds", "1", "--steps", "1", "--warmup", "0", "--out", str(tmp_path),
                    "--json", str(out), "--override", *tiny], cwd=tmp_path, module="",
                   env={"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["finetune"]
    assert [(r["config"], r["choice"]) for r in rows] == [("vit_tiny+bert", "frozen+cache"), ("vit_tiny+bert", "full")]
    by = {r["choice"]: r for r in rows}
    for r in rows:
        assert r["step_ms"] > 0 and r["peak_rss_mb"] > 0 and r["trainable_params"] > 0, r
    assert by["frozen+cache"]["trainable_params"] < by["full"]["trainable_params"]
    assert by["frozen+cache"]["activations_mb"] < by["full"]["activations_mb"]  # the backbones saved nothing
    assert "vs full" in proc.stdout


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "scripts").glob("*.sh")))
def test_shell_scripts_print_their_comment_for_help_and_refuse_arguments(name: str, tmp_path: Path) -> None:
    """``bash scripts/<x>.sh --help`` prints the header comment and does nothing else (gpu_check.sh would
    otherwise start the GPU checks, gpu_wheels.sh a download); any argument is refused in one line."""
    script = ROOT / "scripts" / name
    shown = subprocess.run(["bash", str(script), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and shown.stderr == "", shown.stderr
    lines = shown.stdout.splitlines()
    assert len(lines) > 3 and not any(line.startswith(("#", "set -", "case ")) for line in lines), shown.stdout
    refused = subprocess.run(["bash", str(script), "--budget", "10"], cwd=tmp_path, capture_output=True, text=True,
                             timeout=60)
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr == f"{name}: error: it takes no arguments, found '--budget'; set its environment " \
                             "variables instead (--help)\n"
    assert list(tmp_path.iterdir()) == []
