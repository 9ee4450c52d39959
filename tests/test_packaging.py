"""A non-editable wheel install runs ``mtmm-train`` from any folder (configs ship in the wheel)."""

from __future__ import annotations

import json
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from conftest import HANG_GUARD_S, ROOT


def running_site_packages() -> list[str]:
    """The site-packages folders of the interpreter running the tests: a venv's or the system's.

    ``venv --system-site-packages`` would not do: it sees the *base* interpreter's packages, which
    lack the test dependencies when the tests run in a venv (the README's way).
    """
    paths = sysconfig.get_paths()
    dirs = [*site.getsitepackages(), paths["purelib"], paths["platlib"]]
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    seen: list[str] = []
    for d in dirs:
        if Path(d).is_dir() and Path(d).resolve() != ROOT.resolve() and d not in seen:
            seen.append(d)
    return seen


@pytest.mark.slow
def test_wheel_install_runs_from_any_folder(tmp_path: Path) -> None:
    # Built from a copy of the sources, as a clean clone has them: nothing left in the checkout (build/,
    # *.egg-info/) and nothing reused from it, e.g. a mtmm_train/configs link that scripts/gpu_check.sh makes.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    junk = shutil.ignore_patterns("__pycache__", "*.egg-info")

    def package_files(folder: str, names: list[str]) -> set[str]:
        return junk(folder, names) | ({"configs"} if Path(folder) == ROOT / "mtmm_train" else set())

    shutil.copytree(ROOT / "configs", src / "configs", ignore=junk)
    shutil.copytree(ROOT / "mtmm_train", src / "mtmm_train", ignore=package_files)
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
                    str(src)], check=True, capture_output=True, text=True)
    wheel = next(dist.glob("mtmm_train-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "mtmm_train/configs/train.yaml" in names
    assert "mtmm_train/configs/dataset/synthetic.yaml" in names

    # A fresh venv with the wheel, which reuses this interpreter's torch, hydra, ... through a .pth
    # file listing its site-packages. A .pth file's lines are only appended to sys.path, so the .pth
    # files inside those folders (among them this checkout's editable install) are not run, and the
    # venv's own site-packages, which holds the wheel, comes first.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, text=True)
    py = venv / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    assert purelib.startswith(str(venv)), purelib
    (Path(purelib) / "_mtmm_test_deps.pth").write_text("\n".join(running_site_packages()) + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True,
                   capture_output=True, text=True)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([str(venv / "bin" / "mtmm-train"), "--cfg", "job"], cwd=elsewhere, env=env,
                          capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stderr
    assert "_target_: mtmm_train.data.synthetic.synthetic" in proc.stdout
    # The code that runs is the wheel's, not the checkout's (an editable install would point back),
    # and the checkout is not on the path at all.
    code = "import json, sys, mtmm_train; print(json.dumps([mtmm_train.__file__, sys.path]))"
    where = subprocess.run([str(py), "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True,
                           check=True).stdout
    module_file, path = json.loads(where)
    assert module_file == str(Path(purelib) / "mtmm_train" / "__init__.py"), where
    assert not any(p and Path(p).resolve() == ROOT.resolve() for p in path), where
