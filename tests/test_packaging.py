"""A non-editable wheel install runs ``mtmm-train`` from any folder (configs ship in the wheel)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT


@pytest.mark.slow
def test_wheel_install_runs_from_any_folder(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
                    str(ROOT)], check=True, capture_output=True, text=True)
    wheel = next(dist.glob("mtmm_train-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "mtmm_train/configs/train.yaml" in names
    assert "mtmm_train/configs/dataset/synthetic.yaml" in names

    # A venv that reuses the installed torch, hydra, ... but not the source tree.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True,
                   capture_output=True, text=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([str(venv / "bin" / "mtmm-train"), "--cfg", "job"], cwd=elsewhere, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "_target_: mtmm_train.data.synthetic.synthetic" in proc.stdout
    # The code that runs is the wheel's, not the checkout's (an editable install would point back).
    where = subprocess.run([str(py), "-c", "import mtmm_train; print(mtmm_train.__file__)"], cwd=elsewhere, env=env,
                           capture_output=True, text=True, check=True).stdout
    assert str(venv) in where
