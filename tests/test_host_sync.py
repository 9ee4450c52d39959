"""No host synchronisation inside the training step (the GPU fast path), checked on the CPU.

On a GPU every read of a device tensor by the host (``.item()``, ``.tolist()``, ``if t:``,
``.cpu()``, a boolean-mask index) stalls the launch queue until the GPU catches up. A CPU run
cannot feel that, so :class:`HostReads` tracks which tensors are host-side by design (created
without a device, or copied with ``.cpu()``/``.to("cpu")``, and everything computed from those
alone) and counts every read of any other tensor, with the line of ``mtmm_train`` that made it.
``tests/test_gpu.py`` checks the same on CUDA with ``torch.cuda.set_sync_debug_mode``.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import compose_cfg
from families import config_names, default_option
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from mtmm_train.balancers import all_balancers
from mtmm_train.balancers.aggregation import GradientAggregation
from mtmm_train.recipe import TrainRecipe

READS = {"item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy", "__array__"}
DATA_DEPENDENT = {"nonzero", "argwhere", "masked_select", "unique", "unique_consecutive", "repeat_interleave",
                  "equal"}  # output shape or value known only after the device has computed
FACTORIES = {"zeros", "ones", "empty", "full", "eye", "arange", "linspace", "tensor", "as_tensor", "rand", "randn",
             "randint", "randperm", "scalar_tensor"}


def is_host(t: torch.Tensor) -> bool:
    return getattr(t, "_host", False)


def names_host(device: Any) -> bool:
    """No device (the default, the CPU) or the string 'cpu'; a ``torch.device`` is the training device."""
    return device is None or (isinstance(device, str) and device == "cpu")


def _names_device(args: tuple, kwargs: dict) -> bool:
    """``Tensor.to`` arguments that move to the training device (a device object or a device tensor)."""
    target = kwargs.get("device", next((a for a in args if isinstance(a, (str, torch.device, torch.Tensor))), None))
    if isinstance(target, torch.Tensor):
        return not is_host(target)
    return target is not None and not names_host(target)


class HostReads(TorchFunctionMode):
    """Counts host reads of device tensors under it: ``reads[(what, 'file.py:line code')]``.

    ``host_region()`` marks code that works on host tensors by design (a solver on a copied
    Gramian): its results are host tensors and its reads are not counted.
    """

    def __init__(self) -> None:
        super().__init__()
        self.reads: collections.Counter = collections.Counter()
        self.in_host_region = 0

    @contextlib.contextmanager
    def host_region(self) -> Iterator[None]:
        self.in_host_region += 1
        try:
            yield
        finally:
            self.in_host_region -= 1

    def read(self, what: str) -> None:
        frames = [f for f in traceback.extract_stack()[:-2] if "/mtmm_train/" in f.filename]
        f = frames[-1] if frames else None
        where = f"{f.filename.split('/mtmm_train/')[-1]}:{f.lineno} {f.line}" if f else "?"
        self.reads[(what, where)] += 1

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        tensors = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
        on_device = [t for t in tensors if not is_host(t)]
        to_host = name == "cpu" or (name == "to" and any(
            isinstance(a, str) and a == "cpu" for a in (*args[1:], kwargs.get("device"))))
        if not self.in_host_region and on_device:
            if name in READS or name in DATA_DEPENDENT or (to_host and not is_host(args[0])):
                self.read("copy to host" if to_host else name)
            elif name in ("__getitem__", "__setitem__") and any(
                    isinstance(i, torch.Tensor) and i.dtype == torch.bool and not is_host(i)
                    for i in tree_flatten(args[1])[0]):
                self.read(f"boolean mask {name}")
        to_device = (name == "to" and is_host(args[0]) and not to_host and not kwargs.get("non_blocking")
                     and _names_device(args[1:], kwargs)) or (
            name in ("tensor", "as_tensor") and not names_host(kwargs.get("device")))
        if not self.in_host_region and to_device:
            self.read("copy to device")  # from pageable host memory: waits for the device's queue
        out = func(*args, **kwargs)
        if self.in_host_region or to_host:
            host = True
            if args and out is args[0]:  # .cpu() of a CPU tensor is the tensor itself; on a GPU it is a copy
                out = out.clone()
        elif name == "to":
            host = is_host(args[0]) and not _names_device(args[1:], kwargs)
        elif name in FACTORIES and not (args and isinstance(args[0], torch.Tensor)):
            host = names_host(kwargs.get("device"))
        elif name.endswith("_like"):
            host = is_host(args[0]) if "device" not in kwargs else names_host(kwargs["device"])
        else:
            host = bool(tensors) and not on_device
        if host:
            for o in tree_flatten(out)[0]:
                if isinstance(o, torch.Tensor):
                    o._host = True
        return out


def reads_per_step(tmp_path: Path, overrides: list[str], monkeypatch: pytest.MonkeyPatch,
                   steps: int = 2) -> tuple[dict[tuple[str, str], float], TrainRecipe]:
    """Host reads of device tensors per optimizer step of the loop's step functions (``train_step``), and the recipe."""
    cfg = compose_cfg(["trainer.batch_size=16", "dataset.num_train=128", "dataset.num_val=32", "dataset.num_test=16",
                       "logger.progress_bar=false", "logger.log_every_n_steps=1000"] + overrides)
    recipe = TrainRecipe(cfg, tmp_path)
    recipe.setup()
    acc = recipe.trainer.accumulate_grad_batches

    def step() -> None:
        recipe.train_step([next(batches) for _ in range(acc)])

    batches = recipe.train_loader.epoch(0)
    step()  # the first step creates the optimizer's state and the scaler's scale
    for state in recipe.optimizer.state.values():  # non-fused AdamW counts its steps on the host by design
        if "step" in state and not recipe.optimizer.defaults.get("fused"):
            state["step"]._host = True
    probe = HostReads()
    solve = GradientAggregation.solve

    def host_solve(self: GradientAggregation, gramian: torch.Tensor) -> torch.Tensor:
        if not is_host(gramian):
            probe.read("copy to host")  # solve copies the Gramian itself
        with probe.host_region():
            return solve(self, gramian)

    monkeypatch.setattr(GradientAggregation, "solve", host_solve)
    with probe:
        batches = recipe.train_loader.epoch(1)  # its shuffled order is made on the host under the probe
        first = [next(batches) for _ in range(acc)]
        probe.reads.clear()  # the epoch's order goes to the device once per epoch, not per step
        batches = itertools.chain(first, batches)
        for _ in range(steps):
            step()
    return {k: v / steps for k, v in probe.reads.items()}, recipe


def by_kind(reads: dict[tuple[str, str], float]) -> dict[str, float]:
    kinds: collections.Counter = collections.Counter()
    for (what, _), n in reads.items():
        kinds[what] += n
    return dict(kinds)


# Every built-in fusion, MTL architecture and loss-weighting balancer, with the model options
# that touch the step (missing-modality handling, modality dropout, clipping, accumulation).
NO_READS = [
    [],  # the default balancer, static
    ["balancer=uncertainty", "fusion=attention", "mtl=mmoe"],
    ["balancer=gradnorm", "fusion=transformer", "mtl=ple", "model.missing=learned"],
    ["balancer=dwa", "fusion=gated", "mtl=cgc", "model.modality_dropout=0.3"],
    ["balancer=famo", "fusion=late", "mtl=cross_stitch", "trainer.gradient_clip_norm=1.0"],
    ["balancer=rlw", "fusion=low_rank", "trainer.accumulate_grad_batches=2"],
    ["fusion=tensor", "trainer.precision=bf16"],
    ["fusion=product"], ["fusion=max"], ["fusion=sum"], ["fusion=mean"],
    ["loader=dataloader"],
]
# A fusion, MTL architecture or loss-weighting balancer not combined above runs on its own (a new
# one needs no entry): the members come from their configs (tests/families.py).
for _group, _names in (("fusion", config_names("fusion")), ("mtl", config_names("mtl")),
                       ("balancer", [n for n, c in all_balancers().items() if c.family == "weighting"])):
    _combined = {default_option(_group)} | {o.split("=", 1)[1] for case in NO_READS for o in case
                                       if o.startswith(f"{_group}=")}
    NO_READS += [[f"{_group}={name}"] for name in _names if name not in _combined]
AGGREGATORS = [name for name, cls in all_balancers().items() if cls.family == "aggregation"]


@pytest.mark.parametrize("overrides", NO_READS, ids=lambda o: " ".join(o) or "default")
def test_training_step_reads_nothing_from_the_device(overrides: list[str], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch, one_thread: None) -> None:
    reads, _ = reads_per_step(tmp_path, overrides, monkeypatch)
    assert reads == {}, f"host reads per step: {reads}"


@pytest.mark.parametrize("balancer", AGGREGATORS)
def test_gradient_aggregation_reads_once_per_step(balancer: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  one_thread: None) -> None:
    # Representation space: the Gramian and the labelled counts come to the host in one copy,
    # where the solver runs in float64; the T weights go back in one copy.
    reads, _ = reads_per_step(tmp_path, [f"balancer={balancer}"], monkeypatch)
    assert by_kind(reads) == {"copy to host": 1.0, "copy to device": 1.0}, f"host reads per step: {reads}"
    assert any("the step's one read of the device" in where for _, where in reads)


@pytest.mark.parametrize(("overrides", "expected"), [
    # Parameter space: which tasks are labelled decides what is differentiated, then the Gramian;
    # the weights of the labelled tasks go back for the update, all of them for the log.
    (["balancer=upgrad", "balancer.mode=parameters"], {"copy to host": 2.0, "copy to device": 2.0}),
    # fp16: the loss scale after the update (a fused optimizer has no read of its own).
    (["trainer.precision=fp16", "+optimizer.fused=true"], {"item": 1.0}),
    # trainer.nonfinite=skip|stop: whether this step's losses are finite.
    (["trainer.nonfinite=skip"], {"tolist": 1.0}),
])
def test_documented_reads_per_step(overrides: list[str], expected: dict[str, float], tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch, one_thread: None) -> None:
    reads, _ = reads_per_step(tmp_path, overrides, monkeypatch)
    assert by_kind(reads) == expected, f"host reads per step: {reads}"


def test_a_read_in_the_step_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread: None) -> None:
    # The probe itself: a task loss that reads its value on the host is found, with its line.
    from mtmm_train.tasks.base import Task
    loss = Task.loss

    def reading_loss(self: Task, *args: Any) -> torch.Tensor:
        out = loss(self, *args)
        if out > 1e9:
            raise AssertionError
        return out

    monkeypatch.setattr(Task, "loss", reading_loss)
    reads, recipe = reads_per_step(tmp_path, [], monkeypatch)
    assert sum(reads.values()) == len(recipe.tasks)  # one per task
    assert {what for what, _ in reads} == {"__bool__"}
