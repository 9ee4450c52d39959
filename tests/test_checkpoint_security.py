"""Checkpoints never run code: weights_only loads, and stored configs with foreign _target_ are refused."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from conftest import train

from mtmm_train import checkpoint
from mtmm_train.errors import UserError
from mtmm_train.evaluate import load_recipe


class Payload:
    def __reduce__(self):  # what a malicious pickle does on load
        return (print, ("pwned",))


def test_a_pickle_that_carries_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"model": Payload(), "config": {}}))
    with pytest.raises(UserError, match="cannot be loaded safely"):
        checkpoint.load(path)


def test_a_truncated_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    train(tmp_path)
    good = (tmp_path / "checkpoints" / "last.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(good[: len(good) // 2])
    with pytest.raises(UserError, match="cannot be loaded safely"):
        checkpoint.load(tmp_path / "cut.pt")


def test_eval_refuses_a_stored_config_that_names_a_foreign_callable(tmp_path: Path) -> None:
    train(tmp_path)
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    state["config"]["fusion"]["_target_"] = "os.system"
    torch.save(state, tmp_path / "crafted.pt")
    with pytest.raises(UserError, match=r"fusion\._target_ is 'os.system'.*allow_foreign_targets=true"):
        load_recipe(tmp_path / "crafted.pt", "cpu", None, tmp_path / "eval")
    # The project's own checkpoint passes the check and rebuilds.
    recipe = load_recipe(tmp_path / "checkpoints" / "last.pt", "cpu", None, tmp_path / "eval")
    assert recipe.model is not None


def test_check_targets_walks_nested_configs() -> None:
    ok = {"model": {"encoders": {"a": {"_target_": "mtmm_train.encoders.mlp.MLPEncoder"}}},
          "optimizer": {"_target_": "torch.optim.AdamW"}}
    checkpoint.check_targets(ok, "x")
    bad = {"model": {"heads": [{"_target_": "subprocess.run"}]}}
    with pytest.raises(UserError, match=r"model\.heads\[0\]\._target_ is 'subprocess.run'"):
        checkpoint.check_targets(bad, "x")
    checkpoint.check_targets(bad, "x", allow_foreign=True)
