"""Checkpoints never run code: weights_only loads, and stored configs with foreign _target_ are refused."""

from __future__ import annotations

import pickle
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from conftest import CONFIGS, TINY, compose_cfg, run_cli, train
from omegaconf import OmegaConf

from mtmm_train import checkpoint
from mtmm_train.errors import UserError
from mtmm_train.evaluate import load_run
from mtmm_train.fusion.concat import ConcatFusion
from mtmm_train.recipe import TrainRecipe


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
        load_run(tmp_path / "crafted.pt", "cpu", None)
    # The project's own checkpoint passes the check and rebuilds.
    run = load_run(tmp_path / "checkpoints" / "last.pt", "cpu", None)
    assert run.model is not None


def test_check_targets_walks_nested_configs() -> None:
    ok = {"model": {"encoders": {"a": {"_target_": "mtmm_train.encoders.mlp.MLPEncoder"}}},
          "optimizer": {"_target_": "torch.optim.AdamW", "_partial_": True}}
    checkpoint.check_targets(ok, "x")
    bad = {"model": {"heads": [{"_target_": "subprocess.run"}]}}
    with pytest.raises(UserError, match=r"model\.heads\[0\]\._target_ is 'subprocess.run', in a place where "
                       r"mtmm-train builds no component"):
        checkpoint.check_targets(bad, "x")
    checkpoint.check_targets(bad, "x", allow_foreign=True)


# ---------------------------------------------------------------------- crafted stored configs
# Each bypass of a check on the _target_ string: the file a payload would write must stay as it was.
# {victim} is an existing file the payload would overwrite, {created} one it would create.
SAVE = "mtmm_train.checkpoint.torch.save"
CONCAT = "mtmm_train.fusion.concat.ConcatFusion"
CRAFTED = {
    # the reproduction of issue 12: an attribute chain to torch.save, its arguments by position
    "args_and_chain": ("dataset", {"_target_": SAVE, "_args_": [{"x": 1}, "{victim}"]}),
    "chain_checkpoint_torch_save": ("dataset", {"_target_": SAVE, "obj": {"x": 1}, "f": "{victim}"}),
    "chain_recipe_os_system": ("fusion", {"_target_": "mtmm_train.recipe.os.system", "command": "touch {created}"}),
    "chain_torch_optim_torch_save": ("optimizer", {"_target_": "torch.optim.torch.save", "_partial_": True,
                                                   "f": "{victim}"}),
    "args_on_a_component": ("fusion", {"_target_": CONCAT, "_args_": [{"_target_": SAVE, "obj": 1, "f": "{victim}"}]}),
    "nested_in_a_list": ("fusion", {"_target_": CONCAT, "extra": [{"_target_": SAVE, "obj": 1, "f": "{victim}"}]}),
    "nested_deep_in_a_dict": ("model.encoders.image", {"block": {"inner": {"_target_": SAVE, "obj": 1,
                                                                           "f": "{victim}"}}}),
    "partial_outside_optimizer": ("dataset", {"_target_": "mtmm_train.data.synthetic.synthetic", "_partial_": True}),
    "project_class_not_a_component": ("fusion", {"_target_": "mtmm_train.errors.UserError"}),
    "reexported_pathlib_path": ("fusion", {"_target_": "mtmm_train.checkpoint.Path"}),
    "interpolation_building_a_node": ("fusion", {
        "_target_": CONCAT, "extra": "${oc.create:{_target_: " + SAVE + ", obj: 1, f: '{victim}'}}"}),
}
EXPECTED = {
    "args_and_chain": r"dataset\._args_ is \[\{'x': 1\}, '.*victim\.txt'\]; mtmm-train passes arguments by name only",
    "chain_checkpoint_torch_save": r"dataset\._target_ is 'mtmm_train\.checkpoint\.torch\.save', which is not a "
                                   r"dataset builder of mtmm-train \('mtmm_train\.checkpoint\.torch' is not a module\)",
    "chain_recipe_os_system": r"fusion\._target_ is 'mtmm_train\.recipe\.os\.system', which is not a fusion",
    "chain_torch_optim_torch_save": r"optimizer\._target_ is 'torch\.optim\.torch\.save', which is not an optimizer",
    "args_on_a_component": r"fusion\._args_ is \[\{'_target_': 'mtmm_train\.checkpoint\.torch\.save'",
    "nested_in_a_list": r"fusion\.extra\[0\]\._target_ is 'mtmm_train\.checkpoint\.torch\.save', in a place where "
                        r"mtmm-train builds no component",
    "nested_deep_in_a_dict": r"model\.encoders\.image\.block\.inner\._target_ is 'mtmm_train\.checkpoint\.torch\.save'"
                             r", in a place where mtmm-train builds no component",
    "partial_outside_optimizer": r"dataset\._partial_ is true: not allowed here \(only on optimizer and scheduler\)",
    "project_class_not_a_component": r"fusion\._target_ is 'mtmm_train\.errors\.UserError', which is not a fusion of "
                                     r"mtmm-train \(not a subclass of Fusion\)",
    "reexported_pathlib_path": r"fusion\._target_ is 'mtmm_train\.checkpoint\.Path', which is not a fusion of "
                               r"mtmm-train \(not a subclass of Fusion\)",
    "interpolation_building_a_node": r"fusion\.extra is \"\$\{oc\.create:\{_target_: "
                                     r"mtmm_train\.checkpoint\.torch\.save.*an interpolation",
}


# Through the real CLIs (a subprocess each, seconds apiece): the reproduction of issue 12 and the two other
# ways a payload would run (an attribute chain to os.system, an interpolation that builds a node). Every
# shape in CRAFTED is also refused by the check itself, in process (test_every_crafted_shape_...).
CLI_CASES = ["args_and_chain", "chain_recipe_os_system", "interpolation_building_a_node"]


def fill(node: object, victim: Path, created: Path) -> object:
    """``node`` with ``{victim}`` and ``{created}`` in its strings replaced by the paths."""
    if isinstance(node, dict):
        return {k: fill(v, victim, created) for k, v in node.items()}
    if isinstance(node, list):
        return [fill(v, victim, created) for v in node]
    return node.replace("{victim}", str(victim)).replace("{created}", str(created)) if isinstance(node, str) else node


def put(config: dict, where: str, node: object, merge: bool = False) -> dict:
    """``config`` with the node at ``where`` (dotted) replaced by ``node`` (``merge``: a dict merged into it)."""
    *parents, last = where.split(".")
    parent = config
    for k in parents:
        parent = parent[k]
    parent[last] = {**parent[last], **node} if merge else node
    return config


def craft(config: dict, where: str, node: dict, victim: Path, created: Path) -> dict:
    """``config`` with a crafted node: at a component's key it replaces it, deeper it is merged in."""
    return put(config, where, fill(node, victim, created), merge="." in where)


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("good") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(run)
    finally:
        torch.set_num_threads(threads)
    return run / "checkpoints" / "last.pt"


@pytest.fixture(scope="module")
def crafted_runs(good_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Every crafted checkpoint through ``mtmm-eval`` and ``mtmm-train trainer.resume=``, two at a time.

    Returns:
        (case, tool) -> (victim, created, finished process).
    """
    jobs = {}
    for case in CLI_CASES:
        where, node = CRAFTED[case]
        for tool in ("eval", "resume"):
            tmp = tmp_path_factory.mktemp(f"{case}-{tool}")
            victim, created = tmp / "victim.txt", tmp / "created.txt"
            victim.write_text("precious\n")
            state = torch.load(good_checkpoint, weights_only=True)
            state["config"] = craft(state["config"], where, node, victim, created)
            path = tmp / "crafted" / "checkpoints" / "best.pt"
            path.parent.mkdir(parents=True)
            torch.save(state, path)
            if tool == "eval":
                args, module = [f"checkpoint={path}", "device=cpu", "plot=false"], "mtmm_train.evaluate"
            else:
                args, module = [f"hydra.run.dir={tmp / 'run'}", *TINY, f"trainer.resume={path}"], "mtmm_train"
            jobs[case, tool] = (victim, created, module, args, tmp)
    with ThreadPoolExecutor(max_workers=2) as pool:  # two at a time: CI has two cores
        procs = {k: pool.submit(run_cli, args, tmp, module, env={"OMP_NUM_THREADS": "1"})
                 for k, (_, _, module, args, tmp) in jobs.items()}
        return {k: (victim, created, procs[k].result()) for k, (victim, created, *_) in jobs.items()}


@pytest.mark.slow
@pytest.mark.parametrize("tool", ["eval", "resume"])
@pytest.mark.parametrize("case", CLI_CASES)
def test_a_crafted_stored_config_is_refused_before_anything_is_built(case: str, tool: str,
                                                                     crafted_runs: dict) -> None:
    victim, created, proc = crafted_runs[case, tool]
    name = "mtmm-eval" if tool == "eval" else "mtmm-train"
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith(f"{name}: error: checkpoint '"), proc.stderr[-2000:]
    assert re.search(r"the stored config's " + EXPECTED[case], lines[0]), lines[0]
    fix = "if you trust this file, pass allow_foreign_targets=true" if tool == "eval" else \
        "resume only a checkpoint that mtmm-train wrote for this config, or start a new run"
    assert lines[0].endswith(fix), lines[0]
    assert victim.read_text() == "precious\n"
    assert not created.exists()


@pytest.mark.parametrize("case", list(CRAFTED))
def test_every_crafted_shape_is_refused_by_the_check_itself(case: str, good_checkpoint: Path,
                                                            tmp_path: Path) -> None:
    state = torch.load(good_checkpoint, weights_only=True)
    config = craft(state["config"], *CRAFTED[case], tmp_path / "victim.txt", tmp_path / "created.txt")
    with pytest.raises(UserError, match=EXPECTED[case]):
        checkpoint.check_targets(config, "checkpoint 'x.pt'")
    checkpoint.check_targets(config, "checkpoint 'x.pt'", allow_foreign=True)  # the opt-in for trusted files


@pytest.mark.parametrize("where, node, expected", [
    ("optimizer", {"_target_": "torch.optim.AdamW", "_partial_": "yes"},
     r"optimizer\._partial_ is 'yes': true or false"),
    ("fusion", {"_target_": CONCAT, "_recursive_": "no"}, r"fusion\._recursive_ is 'no', not true or false"),
    ("fusion", {"_target_": CONCAT, "_convert_": {"x": 1}}, r"fusion\._convert_ is \{'x': 1\}, not one of none"),
    ("fusion", {"_partial_": True}, r"fusion\._partial_ is set without a _target_"),
    ("fusion", {"_target_": "mtmm_train.data.synthetic.synthetic"}, r"a function, where a class is expected"),
    ("dataset", {"_target_": "mtmm_train.data.base.MultiModalData"}, r"a class, where a dataset builder is one of"),
    ("dataset", {"_target_": "mtmm_train.data.files.build_readers"}, r"a function other than synthetic, files"),
    ("fusion", {"_target_": "mtmm_train.__main__.main"}, r"a special \(dunder\) name"),
    ("fusion", {"_target_": "os.system"}, r"fusion\._target_ is 'os\.system', which is not a fusion of mtmm-train "
                                          r"\(outside mtmm_train\. and torch\.optim\.\)"),
    ("fusion", {"_target_": "mtmm_train.recipe.log"}, r"a Logger, neither a component class"),
    ("fusion", {"_target_": "mtmm_train.recipe.DistributedDataParallel"}, r"not a subclass of Fusion"),
    ("model.heads.category", {"_target_": "mtmm_train.recipe.DistributedDataParallel"},
     r"defined in 'torch\.nn\.parallel\.distributed', outside mtmm_train\."),
    ("optimizer", {"_target_": "mtmm_train.optim.cosine", "_partial_": True}, r"a function, where a class is expected"),
    ("scheduler", {"_target_": "torch.optim.AdamW", "_partial_": True}, r"not a subclass of LRScheduler"),
    ("trainer", {"_target_": CONCAT}, r"trainer\._target_ is '.*', in a place where mtmm-train builds no component"),
    ("fusion", {1: "a"}, r"fusion has the key 1, which is not text"),
])
def test_more_shapes_are_refused_with_one_line(where: str, node: dict, expected: str | None,
                                               good_checkpoint: Path) -> None:
    config = put(torch.load(good_checkpoint, weights_only=True)["config"], where, node)
    with pytest.raises(UserError) as e:
        checkpoint.check_targets(config, "checkpoint 'x.pt'")
    assert "\n" not in str(e.value) and re.search(expected, str(e.value)), str(e.value)


def test_a_stored_config_holds_plain_data_only(good_checkpoint: Path) -> None:
    config = put(torch.load(good_checkpoint, weights_only=True)["config"], "seed", torch.zeros(1))  # weights_only
    with pytest.raises(UserError, match=r"the stored config's seed holds a Tensor, where a config holds text"):
        checkpoint.check_targets(config, "checkpoint 'x.pt'")


def test_every_shipped_component_passes(good_checkpoint: Path) -> None:
    """Each option of each config group, and every reader, target and loader, as a checkpoint stores it."""
    options = {g: sorted(p.stem for p in (CONFIGS / g).glob("*.yaml"))
               for g in ("fusion", "mtl", "balancer", "optimizer", "scheduler", "dataset")}
    runs = [[f"{g}={o}"] for g, names in options.items() for o in names]
    runs.append(["loader=dataloader", "dataset=files", *[f"+reader@dataset.modalities.{r}={r}" for r in READERS],
                 *[f"+target@dataset.tasks.{t}={t}" for t in TARGETS],
                 *[f"+encoder@model.encoders.e_{e}={e}" for e in ENCODERS], "+head@model.heads.h=mlp"])
    for overrides in runs:
        config = OmegaConf.to_container(compose_cfg(overrides), resolve=True)
        checkpoint.check_targets(config, "x")
        checkpoint.check_targets(config, "x", trusted=config)
    assert len(runs) > 30


READERS = sorted(p.stem for p in (CONFIGS / "reader").glob("*.yaml"))
TARGETS = sorted(p.stem for p in (CONFIGS / "target").glob("*.yaml"))
ENCODERS = sorted(p.stem for p in (CONFIGS / "encoder").glob("*.yaml"))


class OwnFusion(ConcatFusion):
    """A user's own component, outside mtmm_train."""


def test_a_users_own_component_resumes_and_evaluates_with_the_opt_in(tmp_path: Path, one_thread: None) -> None:
    own = [f"fusion._target_={__name__}.OwnFusion"]
    train(tmp_path / "run", own)
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    # Resume: the current config names the same component, so nothing comes from the file alone.
    recipe = TrainRecipe(compose_cfg([*TINY, *own, f"trainer.resume={last}", "trainer.max_epochs=2"]),
                         tmp_path / "run")
    recipe.setup()
    assert recipe.resumed_from == last
    # Resumed with another component of its own name: the file's choice, refused.
    other = TrainRecipe(compose_cfg([*TINY, f"trainer.resume={last}"]), tmp_path / "other")
    with pytest.raises(UserError, match=rf"fusion\._target_ is '{__name__}\.OwnFusion', which is not a fusion of "
                       r"mtmm-train \(outside mtmm_train\. and torch\.optim\.\); resume only a checkpoint"):
        other.setup()
    with pytest.raises(UserError, match=rf"fusion\._target_ is '{__name__}\.OwnFusion'.*allow_foreign_targets=true"):
        load_run(last, "cpu", None)
    assert isinstance(load_run(last, "cpu", None, allow_foreign_targets=True).model.fusion,
                      OwnFusion)
