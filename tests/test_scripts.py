"""The command-line scripts in scripts/: each imports the package only (never another script, never a
sys.path edit), and each loads as a module (its imports resolve)."""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

import pytest
from conftest import ROOT

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


def test_mtl_evidence_sweeps_every_balancer() -> None:
    spec = importlib.util.spec_from_file_location("_script_mtl_evidence", ROOT / "scripts" / "mtl_evidence.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    names = module.parse_args([]).balancers
    assert names[0] == "static"
    assert sorted(names) == sorted(p.stem for p in (ROOT / "configs" / "balancer").glob("*.yaml"))
