"""Benchmarks of the training step, side by side in one process: what ``scripts/benchmark.py`` and the
``scripts/bench_*.py`` command lines run.

Four measurements, each timed in alternating rounds (or steps) so that a drift of the machine's
speed hits every side alike, and each reported as a median:

* **recipe vs hand-written loop** (:func:`compare`): :meth:`TrainRecipe.train_step
  <mtmm_train.recipe.TrainRecipe.train_step>`, exactly the loop's work for one optimizer step,
  against :func:`hand_step`, what a user would write without the project: forward, the same masked
  losses summed, backward, the same clipping, optimizer and schedule.
* **each speed technique off and on** (:func:`ablate`, :data:`TECHNIQUES`):

  - ``host_sync``: off = a ``.item()`` read of the losses after every step (what per-step logging
    costs), on = the loop as it is (losses summed on the device, read every N steps).
  - ``fused_adamw``: ``optimizer.fused`` false vs true (the recipe's default on CUDA).
  - ``channels_last``: the image CNN's convolutions in NCHW vs channels-last memory format.
  - ``compile``: ``trainer.compile`` false vs true.
  - ``cudnn_benchmark``: ``torch.backends.cudnn.benchmark`` false vs true (``trainer.cudnn_benchmark``;
    a global flag, so each side sets it before its steps). No effect on a CPU.

* **fusion cost** (:func:`fusion_table`): parameters, step time and memory of every fusion at 2, 3
  and 4 modalities.
* **balancer cost** (:func:`balancer_table`): step time of every balancer relative to static
  weights, for 2, 4 and 8 tasks, in both Jacobian spaces.

Every model is built from the project's configs (:func:`compose_cfg`); a recipe's step is always
the loop's own (:func:`recipe_step`), a balancer bench's the loop's :func:`~mtmm_train.recipe.training_step`
plus the optimizer step. Nothing here reaches into the recipe's private state.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from mtmm_train import builders
from mtmm_train.balancers import all_balancers
from mtmm_train.batch import Batch
from mtmm_train.data import InMemoryLoader, MultiModalData
from mtmm_train.data.base import TensorSplit
from mtmm_train.errors import UserError
from mtmm_train.model import MultiModalModel
from mtmm_train.recipe import TrainRecipe, training_step

# ---------------------------------------------------------------------- configs, recipes, timing
QUIET = ["logger.progress_bar=false", "logger.tensorboard=false"]
PRESETS: dict[str, list[str]] = {
    "default": [],
    # A bigger model than the default on the same synthetic data (CPU "larger config").
    "large": ["model.encoders.image.channels=[32,64,128]", "model.encoders.image.out_dim=128",
              "model.encoders.audio.out_dim=128", "model.encoders.text.out_dim=128",
              "model.encoders.tabular.out_dim=128", "model.encoders.tabular.hidden_dims=[256]",
              "mtl.hidden_dims=[512,256]", "trainer.batch_size=256", "dataset.image_size=32"],
    "reference_small": ["experiment=reference_small"],
    "reference_large": ["experiment=reference_large"],
    # ViT-B/16 (224 px) + BERT-base (128 tokens) + MLP built from Hugging Face configs (random weights), 3 tasks;
    # the experiment turns compile on, the mode (MODES) decides here.
    "backbone_reference": ["experiment=backbone_reference", "trainer.compile=false"],
    # The same with a ResNet-50 (timm, random weights) for the image.
    "backbone_reference_resnet50": ["experiment=backbone_reference", "trainer.compile=false",
                                    "encoder@model.encoders.image=timm", "model.encoders.image.model_name=resnet50",
                                    "model.encoders.image.pretrained=false", "~model.encoders.image.config"],
}
MODES: dict[str, list[str]] = {
    "fp32": ["trainer.precision=32", "trainer.float32_matmul_precision=highest"],
    "tf32": ["trainer.precision=32", "trainer.float32_matmul_precision=high"],
    "bf16": ["trainer.precision=bf16", "trainer.float32_matmul_precision=high"],
    "bf16+compile": ["trainer.precision=bf16", "trainer.float32_matmul_precision=high", "trainer.compile=true"],
    # CUDA graphs through torch.compile(mode="reduce-overhead"): launches replayed, not dispatched.
    "bf16+cudagraphs": ["trainer.precision=bf16", "trainer.float32_matmul_precision=high", "trainer.compile=true",
                        "trainer.compile_mode=reduce-overhead"],
    # Inductor times Triton templates against cuBLAS for each matmul/convolution shape (minutes to compile).
    "bf16+autotune": ["trainer.precision=bf16", "trainer.float32_matmul_precision=high", "trainer.compile=true",
                      "trainer.compile_mode=max-autotune-no-cudagraphs"],
}


def preset(name: str) -> list[str]:
    """The overrides of a named config (:data:`PRESETS`); any other name is one override itself."""
    return list(PRESETS.get(name, [name]))


def compose_cfg(overrides: list[str]) -> DictConfig:
    """Compose ``train.yaml`` with ``overrides``, inside the caller's Hydra context if there is one."""
    if GlobalHydra.instance().is_initialized():
        return compose(config_name="train", overrides=overrides)
    with initialize_config_module(config_module="mtmm_train.configs", version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def make_recipe(overrides: list[str], out: Path | str) -> TrainRecipe:
    """A set-up recipe of ``overrides`` (no progress bar, no TensorBoard), its run folder ``out``."""
    recipe = TrainRecipe(compose_cfg(QUIET + overrides), out)
    recipe.setup()
    return recipe


def first_batches(recipe: TrainRecipe, count: int = 8) -> list[Batch]:
    """The first ``count`` training batches of epoch 0 (fewer if the epoch is shorter)."""
    return [b for _, b in zip(range(count), recipe.train_loader.epoch(0), strict=False)]


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def recipe_step(recipe: TrainRecipe, batch: Batch) -> None:
    """Exactly the training loop's work for one optimizer step (no gradient accumulation)."""
    recipe.train_step([batch])


def hand_step(recipe: TrainRecipe, batch: Batch, model: torch.nn.Module | None = None) -> None:
    """A minimal hand-written step over the recipe's model, optimizer and schedule.

    Args:
        model: what the forward pass calls (default: the recipe's, compiled or wrapped as configured).
    """
    model = recipe.forward_model if model is None else model
    opt = recipe.optimizer
    with recipe.autocast:
        preds, _ = model(batch.inputs, batch.present)
        loss = 0.0
        for t, task in recipe.tasks.items():
            p, y, m = preds[t].float(), batch.targets[t], batch.labeled[t]
            kind = task.spec.kind
            if kind == "multiclass":
                per = F.cross_entropy(p, torch.where(m, y, 0), reduction="none")
            elif kind == "binary":
                per = F.binary_cross_entropy_with_logits(p.squeeze(-1), y.float(), reduction="none")
            elif kind == "multilabel":
                per = F.binary_cross_entropy_with_logits(p, y.float(), reduction="none").mean(-1)
            else:
                per = F.mse_loss(p, y.float().view(p.shape), reduction="none").flatten(1).mean(1)
            loss = loss + torch.where(m, per, 0.0).sum() / m.sum().clamp_min(1)
    opt.zero_grad(set_to_none=True)
    recipe.scaler.scale(loss).backward()
    clip = recipe.trainer.gradient_clip_norm
    if clip is not None:
        recipe.scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(recipe.model.parameters(), clip)
    recipe.scaler.step(opt)
    recipe.scaler.update()
    recipe.scheduler.step()


def time_steps(fn: Callable[[TrainRecipe, Batch], None], recipe: TrainRecipe, batches: list[Batch],
               steps: int) -> float:
    """Samples/s of ``steps`` calls of ``fn``, cycling over ``batches``."""
    sync(recipe.device)
    t0 = time.perf_counter()
    for i in range(steps):
        fn(recipe, batches[i % len(batches)])
    sync(recipe.device)
    return steps * batches[0].size / (time.perf_counter() - t0)


def cpu_attention_flops() -> dict:
    """FLOP formulas for the CPU's fused attention kernels, which ``torch.utils.flop_counter`` does not count.

    ``F.scaled_dot_product_attention`` (Hugging Face's ``sdpa`` attention, the project's transformer) runs
    ``aten._scaled_dot_product_flash_attention_for_cpu`` on a CPU: without these formulas the attention's
    matmuls would be missing from the count. They are the counter's own formulas for the CUDA kernels
    (flash, memory-efficient, cuDNN; in its registry already): ``4 * B * H * Lq * Lk * D`` forward, and
    five matmuls backward (a fused kernel recomputes ``Q K^T``), one more than eager attention's four;
    for a ViT-B/16 at 224 px that recomputation is under 1% of the step's FLOPs.
    """
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    table = {}
    forward = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    backward = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if forward is not None and forward not in fc.flop_registry:  # keys: overload packets
        table[forward] = lambda query, key, value, *args, out_shape=None, **kwargs: fc.sdpa_flop_count(
            query, key, value)
    if backward is not None and backward not in fc.flop_registry:
        table[backward] = lambda grad_out, query, key, value, *args, out_shape=None, **kwargs: \
            fc.sdpa_backward_flop_count(grad_out, query, key, value)
    return table


def step_flops(recipe: TrainRecipe, batch: Batch) -> float:
    """FLOPs of one training step (forward + backward), counted by torch.utils.flop_counter on the
    eager model (a compiled one hides its kernels from the counter).

    Matmuls, convolutions and attention: the counter knows CUDA's fused attention kernels (flash,
    memory-efficient, cuDNN; the masked attention of a BERT runs the memory-efficient one) and
    :func:`cpu_attention_flops` adds the CPU's, so the attention of Hugging Face models (``sdpa``) and of
    the project's transformer is counted on both (a test compares it with eager attention's matmuls).
    Elementwise work (softmax, norms, activations, the optimizer) counts nothing, as MFU conventions have it.
    """
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False, custom_mapping=cpu_attention_flops()) as counter:
        hand_step(recipe, batch, model=recipe.model)
    return float(counter.get_total_flops())


#: Dense bf16 tensor-core peak (no sparsity) from the vendor's data sheet, by a part of the GPU's name; the
#: first match counts (so the PCIe and NVL cards of a family come before its SXM name).
SPEC_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("H800", 989.0),
    ("A100", 312.0), ("A800", 312.0),
)


def spec_bf16_tflops(device: torch.device | str | None = None) -> float | None:
    """The vendor's dense bf16 peak of the CUDA device (:data:`SPEC_BF16_TFLOPS`); None: a CPU or a GPU not
    in the table (no ``mfu_spec`` then)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tflops for part, tflops in SPEC_BF16_TFLOPS if part in name), None)


def bf16_peak_tflops() -> float:
    """Measured dense bf16 matmul throughput of this GPU (the MFU denominator)."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    return 2 * 8192**3 * 10 / (time.perf_counter() - t0) / 1e12


def run_jobs(jobs: Iterable[tuple[dict, Callable[[], dict]]]) -> list[dict]:
    """Run each ``(label, job)``; a failing job becomes its label with ``error``, so the others still run.

    Prints each row as JSON as it comes (without the per-round lists), so a run cut short keeps
    the rows it finished.
    """
    rows = []
    for label, job in jobs:
        try:
            row = job()
        except Exception as e:  # record and go on: one failing mode must not hide the others
            row = {**label, "error": repr(e)[:500]}
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if not k.endswith("_all")}), flush=True)
    return rows


def write_json(path: Path | None, payload: Any) -> None:
    """Save ``payload`` as JSON at ``path`` (nothing when None)."""
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=1))


# ---------------------------------------------------------------------- recipe vs hand-written loop
def compare(name: str, mode: str, overrides: list[str], rounds: int, steps: int, warmup: int, out: Path,
            peak: float | None, round_seconds: float = 0.0, spec_peak: float | None = None) -> dict:
    """Samples/s of :func:`recipe_step` and :func:`hand_step` on config ``name`` in ``mode`` (:data:`MODES`).

    Args:
        overrides: the config's overrides (:func:`preset` and any extra).
        rounds: alternating rounds; the order of the two sides swaps each round.
        steps: steps per round and side (at least; see ``round_seconds``).
        warmup: untimed steps of each side first (and compilation).
        out: the scratch folder of the runs.
        peak: the device's peak TFLOP/s for the MFU column (None: no MFU), e.g. :func:`bf16_peak_tflops`.
        round_seconds: lengthen rounds to at least this many seconds (fast configs need many steps
            to rise above noise).
        spec_peak: the vendor's peak TFLOP/s for the ``mfu_spec`` column; None: :func:`spec_bf16_tflops`
            of the recipe's device (none on a CPU or an unknown GPU).

    Returns:
        One row: medians, their ratio, FLOPs per step, ``mfu`` (against ``peak``) and ``mfu_spec``
        (against the vendor's peak) when known, and the per-round figures (``*_all``).
    """
    recipe = make_recipe(overrides + MODES[mode], out / f"{name}-{mode}")
    batches = first_batches(recipe)
    flops = step_flops(recipe, batches[0])
    for fn in (recipe_step, hand_step):  # warm-up (and compilation) of both paths
        time_steps(fn, recipe, batches, warmup)
    rate = time_steps(hand_step, recipe, batches, warmup)
    steps = max(steps, int(round_seconds * rate / batches[0].size))
    ours, hand = [], []
    for r in range(rounds):  # alternate, and swap the order each round
        pair = (recipe_step, hand_step) if r % 2 == 0 else (hand_step, recipe_step)
        for fn in pair:
            (ours if fn is recipe_step else hand).append(time_steps(fn, recipe, batches, steps))
    med_ours, med_hand = statistics.median(ours), statistics.median(hand)
    row = {"config": name, "mode": mode, "device": str(recipe.device), "batch_size": batches[0].size,
           "recipe_samples_s": med_ours, "hand_samples_s": med_hand, "ratio": med_ours / med_hand,
           "gflop_per_step": flops / 1e9, "recipe_tflops": flops / (batches[0].size / med_ours) / 1e12,
           "rounds": rounds, "steps_per_round": steps, "recipe_all": ours, "hand_all": hand}
    if peak:
        row["mfu"] = row["recipe_tflops"] / peak
    spec_peak = spec_peak or spec_bf16_tflops(recipe.device)
    if spec_peak:
        row["spec_tflops"], row["mfu_spec"] = spec_peak, row["recipe_tflops"] / spec_peak
    if recipe.device.type == "cuda":
        row["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()
    return row


def print_recipe_table(rows: list[dict]) -> None:
    """One line per (config, mode) of :func:`compare`'s rows: samples/s of both sides, their ratio, the
    recipe's TFLOP/s, MFU against the measured bf16 peak and against the vendor's (``MFU spec``)."""
    width = max([16] + [len(str(r.get("config", ""))) for r in rows])
    head = (f"{'config':<{width}} {'mode':<15} {'batch':>5} {'recipe/s':>10} {'hand/s':>10} {'ratio':>6} "
            f"{'GFLOP/step':>10} {'TFLOP/s':>8} {'MFU':>6} {'MFU spec':>8}")
    print(head)
    print("-" * len(head))
    for r in rows:
        if "error" in r:
            print(f"{r['config']:<{width}} {r['mode']:<15} error: {r['error'][:80]}")
            continue
        mfu = f"{100 * r['mfu']:5.1f}%" if "mfu" in r else "   n/a"
        spec = f"{100 * r['mfu_spec']:7.1f}%" if "mfu_spec" in r else "     n/a"
        ours, hand = (f"{x:>10,.0f}" if x >= 100 else f"{x:>10.3g}"  # a slow CPU run: its digits
                      for x in (r["recipe_samples_s"], r["hand_samples_s"]))
        print(f"{r['config']:<{width}} {r['mode']:<15} {r['batch_size']:>5} {ours} {hand} {r['ratio']:>6.3f} "
              f"{r['gflop_per_step']:>10,.1f} "
              f"{r['recipe_tflops']:>8.3f} {mfu} {spec}")


# ---------------------------------------------------------------------- each technique off and on
def synced_step(recipe: TrainRecipe, batch: Batch) -> None:
    """The recipe's step plus the per-step host read the loop avoids."""
    recipe_step(recipe, batch)
    recipe.log.sums.sum().item()


def cudnn_benchmark_step(on: bool) -> Callable[[TrainRecipe, Batch], None]:
    """The recipe's step with ``torch.backends.cudnn.benchmark`` set first (process-wide, like the recipe does)."""
    def step(recipe: TrainRecipe, batch: Batch) -> None:
        torch.backends.cudnn.benchmark = on
        recipe_step(recipe, batch)
    return step


# technique -> (overrides off, overrides on, step off, step on)
TECHNIQUES: dict[str, tuple[list[str], list[str], Callable, Callable]] = {
    "host_sync": ([], [], synced_step, recipe_step),
    "fused_adamw": (["+optimizer.fused=false"], ["+optimizer.fused=true"], recipe_step, recipe_step),
    "channels_last": (["model.encoders.image.channels_last=false"], ["model.encoders.image.channels_last=true"],
                      recipe_step, recipe_step),
    "compile": (["trainer.compile=false"], ["trainer.compile=true"], recipe_step, recipe_step),
    "cudnn_benchmark": (["trainer.cudnn_benchmark=false"], ["trainer.cudnn_benchmark=true"],
                        cudnn_benchmark_step(False), cudnn_benchmark_step(True)),
}


def ablate(technique: str, config: str, mode: str, rounds: int, steps: int, warmup: int, out: Path,
           round_seconds: float = 0.0, extra: list[str] | None = None) -> dict:
    """Samples/s of the recipe with ``technique`` (:data:`TECHNIQUES`) off and on (medians of alternating rounds).

    Args:
        extra: overrides for both sides (``--override``).
    """
    off_overrides, on_overrides, off_step, on_step = TECHNIQUES[technique]
    # The mode's settings; its trainer.compile only when compile is not the technique under test.
    mode_overrides = [o for o in MODES[mode] if technique != "compile" or not o.startswith("trainer.compile")]
    base = preset(config) + list(extra or []) + mode_overrides
    sides = {"off": (make_recipe(base + off_overrides, out / f"{config}-{mode}-{technique}-off"), off_step),
             "on": (make_recipe(base + on_overrides, out / f"{config}-{mode}-{technique}-on"), on_step)}
    batches = {k: first_batches(r) for k, (r, _) in sides.items()}
    for k, (recipe, step) in sides.items():  # warm-up (and compilation)
        time_steps(step, recipe, batches[k], warmup)
    recipe, step = sides["off"]
    rate = time_steps(step, recipe, batches["off"], warmup)
    steps = max(steps, int(round_seconds * rate / batches["off"][0].size))
    rates: dict[str, list[float]] = {"off": [], "on": []}
    for r in range(rounds):
        for k in (("off", "on") if r % 2 == 0 else ("on", "off")):
            recipe, step = sides[k]
            rates[k].append(time_steps(step, recipe, batches[k], steps))
    off, on = statistics.median(rates["off"]), statistics.median(rates["on"])
    return {"technique": technique, "config": config, "mode": mode, "device": str(sides["on"][0].device),
            "off_samples_s": off, "on_samples_s": on, "speedup": on / off, "rounds": rounds, "steps_per_round": steps,
            "off_all": rates["off"], "on_all": rates["on"]}


def print_ablation_table(rows: list[dict]) -> None:
    """One line per (technique, config, mode) of :func:`ablate`'s rows."""
    head = f"{'technique':<16} {'config':<16} {'mode':<15} {'off/s':>10} {'on/s':>10} {'speed-up':>8}"
    print(head)
    print("-" * len(head))
    for r in rows:
        if "error" in r:
            print(f"{r['technique']:<16} {r['config']:<16} {r['mode']:<15} error: {r['error'][:80]}")
            continue
        print(f"{r['technique']:<16} {r['config']:<16} {r['mode']:<15} {r['off_samples_s']:>10,.0f} "
              f"{r['on_samples_s']:>10,.0f} {r['speedup']:>8.3f}")


# ---------------------------------------------------------------------- fusion cost
MODALITIES = ("image", "audio", "text", "tabular")
FUSION_COLUMNS = ("fusion", "modalities", "fused_dim", "parameters", "fusion_parameters", "step_ms", "peak_mem_mb",
                  "activations_mb")


def config_names(group: str) -> list[str]:
    """The options of a config group (``configs/<group>/*.yaml``), sorted."""
    folder = importlib.resources.files("mtmm_train.configs").joinpath(group)
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def saved_activation_bytes(recipe: TrainRecipe, batch: Batch) -> int:
    """Bytes of the tensors one forward pass saves for backward (what training keeps alive)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        # Parameters are saved too but are not activations; storages shared by views count once.
        if not isinstance(t, torch.nn.Parameter):
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), recipe.autocast:
        preds, _ = recipe.model(batch.inputs, batch.present)
    del preds
    return sum(seen.values())


def fusion_bench(fusion: str, num_modalities: int, device: torch.device, steps: int, batch_size: int,
                 precision: str, out: Path) -> tuple[dict[str, Any], TrainRecipe | None]:
    """The row's static columns and the recipe to time (``None`` if the fusion refuses the configuration)."""
    row: dict[str, Any] = {"fusion": fusion, "modalities": num_modalities}
    mods = ",".join(MODALITIES[:num_modalities])
    cfg = compose_cfg([f"fusion={fusion}", f"modalities=[{mods}]", f"trainer.device={device}",
                       f"trainer.precision={precision}", f"trainer.batch_size={batch_size}",
                       f"dataset.num_train={batch_size * steps}", "dataset.num_val=16", "dataset.num_test=16",
                       "logger=none", "seed=0"])
    recipe = TrainRecipe(cfg, out)
    try:
        recipe.setup()
    except UserError as e:  # e.g. a tensor fusion larger than its limit
        return {**row, "error": str(e)}, None
    model = recipe.model
    row["fused_dim"] = model.fusion.out_dim
    row["parameters"] = sum(p.numel() for p in model.parameters())
    row["fusion_parameters"] = sum(p.numel() for p in model.fusion.parameters())
    row["activations_mb"] = saved_activation_bytes(recipe, next(iter(recipe.train_loader.epoch(0)))) / 2**20
    return row, recipe


def timed_step(recipe: TrainRecipe, batch: Batch) -> tuple[float, float | None]:
    """Seconds of one training step (the loop's own), and the peak CUDA memory in MiB during it."""
    cuda = recipe.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(recipe.device)
        torch.cuda.reset_peak_memory_stats(recipe.device)
    start = time.perf_counter()
    recipe_step(recipe, batch)
    if cuda:
        torch.cuda.synchronize(recipe.device)
    return time.perf_counter() - start, torch.cuda.max_memory_allocated(recipe.device) / 2**20 if cuda else None


def fusion_table(device: str | torch.device, modality_counts: tuple[int, ...] = (2, 3, 4),
                 fusions: tuple[str, ...] | None = None, steps: int = 20, warmup: int = 3, batch_size: int = 128,
                 precision: str = "32") -> list[dict[str, Any]]:
    """Parameters, step time and memory of each fusion at each number of modalities.

    Each model is the default experiment (synthetic data, all four tasks) with ``fusion=<name>``
    and its first M modalities (image, audio, text, tabular). Memory: the peak CUDA allocation
    during the steps (None on CPU, where torch keeps no such count), and, on any device, the
    activations saved for backward by one forward pass. Every configuration is built first; then
    the steps go round the configurations one at a time, so that a machine whose speed drifts
    slows all of them alike.

    Args:
        device: where to run (``cpu``, ``cuda``, ``cuda:N``).
        modality_counts: numbers of modalities M (the first M of image, audio, text, tabular).
        fusions: fusion config names (default: every ``configs/fusion/*.yaml``).
        steps: timed training steps per configuration (the median is reported).
        warmup: untimed steps before them.
        batch_size: samples per step.
        precision: ``32``, ``bf16`` or ``fp16`` (``trainer.precision``).

    Returns:
        One dict per (fusion, M) with the keys of ``FUSION_COLUMNS`` (``error`` instead, for a
        configuration the fusion refuses).
    """
    device = torch.device(device)
    with tempfile.TemporaryDirectory() as tmp:
        benches = [fusion_bench(f, m, device, steps, batch_size, precision, Path(tmp))
                   for f in fusions or config_names("fusion") for m in modality_counts]
        loaders = [list(recipe.train_loader.epoch(0)) if recipe else [] for _, recipe in benches]
        times: list[list[float]] = [[] for _ in benches]
        peaks: list[list[float]] = [[] for _ in benches]
        for i in range(warmup + steps):
            for j, (_, recipe) in enumerate(benches):
                if recipe is None:
                    continue
                seconds, peak = timed_step(recipe, loaders[j][i % len(loaders[j])])
                if i >= warmup:
                    times[j].append(seconds)
                    peaks[j].append(peak or 0.0)
    rows = []
    for (row, recipe), t, pk in zip(benches, times, peaks, strict=True):
        if recipe is not None:
            row["step_ms"] = 1000 * statistics.median(t)
            row["peak_mem_mb"] = max(pk) if device.type == "cuda" else None
        rows.append({c: row.get(c) for c in FUSION_COLUMNS} if "error" not in row else row)
    return rows


def format_fusion_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of :func:`fusion_table`'s rows."""
    lines = ["| " + " | ".join(FUSION_COLUMNS) + " |", "|---" * len(FUSION_COLUMNS) + "|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['fusion']} | {r['modalities']} | refused: {r['error'][:80]} |")
            continue
        cells = [f"{r[c]:,}" if isinstance(r[c], int) else "-" if r[c] is None else f"{r[c]:.2f}"
                 if isinstance(r[c], float) else str(r[c]) for c in FUSION_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------- balancer cost
JACOBIAN_SPACES = ("representation", "parameters")


def every_balancer() -> list[str]:
    """Every balancer of ``mtmm_train.balancers`` (found, not listed): static first, then loss weighting,
    then gradient aggregation, each by name."""
    found = all_balancers()
    return sorted(found, key=lambda name: (name != "static", found[name].family != "weighting", name))


def balancer_configs(balancers: list[str]) -> list[tuple[str, str | None]]:
    """(balancer, mode) pairs: aggregation runs in both spaces, anything else (loss weighting) has no mode."""
    found = all_balancers()
    return [(b, m) for b in balancers
            for m in (JACOBIAN_SPACES if b in found and found[b].family == "aggregation" else (None,))]


def copy_tasks(data: MultiModalData, num_tasks: int) -> tuple[MultiModalData, dict[str, str]]:
    """``data`` with ``num_tasks`` tasks, copies of its own in turn (``category0``, ``match1``, ...).

    Returns:
        The data, and new task name -> the task it copies.
    """
    base = list(data.tasks)
    names = {f"{base[i % len(base)]}{i}": base[i % len(base)] for i in range(num_tasks)}

    def split(s: TensorSplit) -> TensorSplit:
        return TensorSplit(s.inputs, s.present, {n: s.targets[b] for n, b in names.items()},
                           {n: s.labeled[b] for n, b in names.items()})

    tasks = {n: dataclasses.replace(data.tasks[b], name=n) for n, b in names.items()}
    return MultiModalData(data.modalities, tasks, {k: split(s) for k, s in data.splits.items()}), names


@dataclasses.dataclass
class BalancerBench:
    """A model with ``T`` tasks, a few batches on the device, and the precision settings."""

    overrides: list[str]
    model: MultiModalModel
    tasks: dict
    batches: list[Batch]
    autocast: torch.autocast
    scaler: torch.amp.GradScaler
    device: torch.device


def make_balancer_bench(device: torch.device, num_tasks: int, overrides: list[str], batch_size: int,
                        precision: str) -> BalancerBench:
    """The model of ``overrides`` with ``num_tasks`` heads (the dataset's tasks, cycled), built by
    :mod:`mtmm_train.builders` as a run builds it."""
    overrides = [o for o in overrides if o] + [f"dataset.num_train={4 * batch_size}", "dataset.num_val=8", "seed=0"]
    cfg = compose_cfg(overrides)
    builders.seed_everything(cfg.seed)
    data, names = copy_tasks(builders.build_data(cfg), num_tasks)
    with open_dict(cfg):  # each copy's head is its task's
        cfg.model.heads = {n: cfg.model.heads[b] for n, b in names.items()}
    tasks = builders.build_tasks(data)
    model = builders.build_model(cfg, data, tasks).to(device)
    batches = list(InMemoryLoader(data.splits["train"].to(device), batch_size, drop_last=True).epoch(0))
    return BalancerBench(overrides, model, tasks, batches, builders.autocast_for(precision, device),
                         torch.amp.GradScaler(device.type, enabled=precision == "fp16"), device)


class BalancerRunner:
    """One balancer on the bench, with its own optimizer; ``run(n)`` times ``n`` steps."""

    def __init__(self, bench: BalancerBench, name: str, mode: str | None) -> None:
        cfg = compose_cfg(bench.overrides + [f"balancer={name}"] + ([f"balancer.mode={mode}"] if mode else []))
        self.bench = bench
        self.balancer = builders.build_balancer(cfg, list(bench.tasks)).to(bench.device)
        params = list(bench.model.parameters()) + list(self.balancer.parameters())
        self.optimizer = torch.optim.AdamW(params, lr=1e-4)
        self.shared = bench.model.shared_parameters()
        self.step = 0

    def run(self, steps: int) -> list[float]:
        """Seconds of each of ``steps`` steps (synchronised per step: a median then ignores spikes)."""
        b, out = self.bench, []
        for _ in range(steps):
            batch = b.batches[self.step % len(b.batches)]
            sync(b.device)
            t0 = time.perf_counter()
            self.optimizer.zero_grad(set_to_none=True)
            training_step(b.model, b.tasks, self.balancer, batch, b.autocast, b.scaler, self.shared, self.step)
            b.scaler.step(self.optimizer)
            b.scaler.update()
            sync(b.device)
            out.append(time.perf_counter() - t0)
            self.step += 1
        return out


def balancer_table(device: torch.device | str, task_counts: tuple[int, ...] = (2, 4, 8),
                   overrides: tuple[str, ...] = ("experiment=reference_small",), batch_size: int | None = None,
                   precision: str = "32", balancers: list[str] | None = None, steps: int = 3, rounds: int = 3,
                   warmup: int = 3) -> list[dict]:
    """Time every balancer against static weights.

    The model is built from the project's configs with ``T`` heads, copies of the dataset's tasks
    in turn. A step is exactly the training loop's: ``training_step`` (forward, losses, balancer
    backward) then the optimizer step. Configurations alternate within each round.

    Args:
        device: where to run.
        task_counts: numbers of tasks to try.
        overrides: config overrides that pick the model (and dataset).
        batch_size: default 256 on CUDA, 16 on the CPU.
        precision: ``32``, ``bf16`` or ``fp16`` (autocast, and a GradScaler for fp16).
        balancers: names of ``configs/balancer`` files (default: all); static is always timed.
        steps: timed steps per configuration and round.
        rounds: rounds; configurations alternate within a round.
        warmup: untimed steps per configuration first.

    Returns:
        One row per (tasks, balancer, mode): ``step_ms`` (median over steps), ``ratio`` to static
        at the same number of tasks, or ``error`` when the configuration failed.
    """
    device = torch.device(device)
    batch_size = batch_size or (256 if device.type == "cuda" else 16)
    names = ["static"] + [b for b in (balancers or every_balancer()) if b != "static"]
    rows = []
    for num_tasks in task_counts:
        bench = make_balancer_bench(device, num_tasks, list(overrides), batch_size, precision)
        runners, times, errors = {}, {}, {}
        for key in balancer_configs(names):
            try:
                runners[key] = BalancerRunner(bench, *key)
                runners[key].run(warmup)
                times[key] = []
            except Exception as e:  # record and go on: one failing method must not hide the others
                errors[key] = f"{type(e).__name__}: {e}"[:300]
        for _ in range(rounds):
            for key in times:
                try:
                    times[key] += runners[key].run(steps)
                except Exception as e:
                    errors[key] = f"{type(e).__name__}: {e}"[:300]
        static = statistics.median(times[("static", None)])
        for name, mode in balancer_configs(names):
            row = {"tasks": num_tasks, "balancer": name, "mode": mode or "-", "device": str(device),
                   "batch_size": batch_size, "precision": precision}
            if (name, mode) in errors:
                row["error"] = errors[(name, mode)]
            else:
                ms = statistics.median(times[(name, mode)])
                row.update(step_ms=1e3 * ms, ratio=ms / static)
            rows.append(row)
        del bench, runners
    return rows


def print_balancer_table(rows: list[dict]) -> None:
    """Ratios to static: one line per (balancer, mode), one column per number of tasks."""
    counts = sorted({r["tasks"] for r in rows})
    head = f"{'balancer':<14} {'mode':<15}" + "".join(f"{f'T={t}':>9}" for t in counts) + "   static ms"
    print(head)
    print("-" * len(head))
    keys = list(dict.fromkeys((r["balancer"], r["mode"]) for r in rows))
    for b, m in keys:
        cells = []
        for t in counts:
            r = next(r for r in rows if (r["balancer"], r["mode"], r["tasks"]) == (b, m, t))
            cells.append(f"{'error':>9}" if "error" in r else f"{r['ratio']:>8.2f}x")
        static = [f"{r['step_ms']:.0f}" for r in rows if r["balancer"] == "static" and (b, m) == ("static", "-")]
        print(f"{b:<14} {m:<15}" + "".join(cells) + ("   " + "/".join(static) if static else ""))
    for r in rows:
        if "error" in r:
            print(f"error: T={r['tasks']} {r['balancer']} {r['mode']}: {r['error']}")


# ---------------------------------------------------------------------- the frozen-feature cache
#: Configs of ``--suite feature_cache``: a frozen backbone per modality on synthetic data (random weights:
#: the timing does not depend on them); the text backbone is :func:`tiny_bert` of :data:`TEXT_SIZES`.
#: ``vit_b16+bert_base`` is GPU-sized (ViT-B/16 at 224 px, a BERT-base-sized model at 128 tokens, enough
#: rows for a GPU epoch); the others are the CPU's (:data:`FEATURE_CACHE_CPU`, the suite's default).
FEATURE_CACHE_CONFIGS: dict[str, list[str]] = {
    "resnet18+text": ["encoder@model.encoders.image=timm", "model.encoders.image.model_name=resnet18",
                      "model.encoders.image.pretrained=false"],
    "vit_tiny+text": ["encoder@model.encoders.image=timm", "model.encoders.image.model_name=vit_tiny_patch16_224",
                      "model.encoders.image.pretrained=false"],
    "vit_b16+bert_base": ["encoder@model.encoders.image=timm", "model.encoders.image.model_name=vit_base_patch16_224",
                          "model.encoders.image.pretrained=false", "dataset.text_length=128",
                          "dataset.num_train=2048", "dataset.num_val=256", "dataset.num_test=256",
                          "trainer.batch_size=256", "trainer.eval_batch_size=256"],
}
FEATURE_CACHE_CPU = ("resnet18+text", "vit_tiny+text")
#: :func:`tiny_bert`'s sizes per config (of both suites); others get its defaults (hidden 128, 2 layers).
TEXT_SIZES: dict[str, dict[str, int]] = {
    "vit_b16+bert_base": {"vocab_size": 30522, "hidden": 768, "layers": 12},  # BERT-base's shape
}
FEATURE_CACHE_DATA = ["modalities=[image,text,tabular]", "tasks=[category,tags]", "dataset.image_size=224",
                      "dataset.text_length=32", "dataset.num_train=64", "dataset.num_val=16", "dataset.num_test=16",
                      "trainer.batch_size=32", "trainer.eval_batch_size=32", "trainer.max_epochs=1"]


def epoch_seconds(recipe: TrainRecipe, epoch: int) -> float:
    """Wall time of one training epoch of ``recipe`` (every batch through ``TrainRecipe.train_step``)."""
    sync(recipe.device)
    t0 = time.perf_counter()
    for batch in recipe.train_loader.epoch(epoch):
        recipe_step(recipe, batch)
    sync(recipe.device)
    return time.perf_counter() - t0


def feature_cache_config(name: str, out: Path) -> list[str]:
    """The overrides of :data:`FEATURE_CACHE_CONFIGS` ``name``, its text backbone (:func:`tiny_bert` of
    :data:`TEXT_SIZES`) written under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    bert = tiny_bert(out / f"bert-{name}", **TEXT_SIZES.get(name, {}))
    return [*FEATURE_CACHE_CONFIGS[name], "encoder@model.encoders.text=hf", f"model.encoders.text.model_name={bert}",
            "model.encoders.text.pretrained=false", "dataset.vocab_size=100"]


def encode_seconds(recipe: TrainRecipe, modalities: list[str]) -> float:
    """Wall time of the ``modalities``' encoders alone over one epoch of ``recipe``'s training batches (no
    gradients, the run's autocast): what extracting their features costs without writing them."""
    sync(recipe.device)
    t0 = time.perf_counter()
    with torch.no_grad(), recipe.autocast:
        for batch in recipe.train_loader.epoch(0):
            for m in modalities:
                recipe.model.encoders[m](batch.inputs[m])
    sync(recipe.device)
    return time.perf_counter() - t0


def feature_cache_bench(name: str, overrides: list[str], frozen: list[str], rounds: int, out: Path) -> dict:
    """Epoch time of a run whose ``frozen`` encoders are served from the feature cache against the same run
    recomputing them (``model.feature_cache=off``), in alternating rounds; plus the one-off cost of the cache.

    The run that recomputes is set up first (it warms the device and the imports), then a cold setup that
    computes and writes the cache, then a warm one that reads it: the cold setup's extra time over the warm
    one is the extraction (the frozen encoders over every split, and the writing).

    Returns:
        A row: ``epoch_s_recompute``, ``epoch_s_cache`` (medians), ``speedup``, ``build_s`` (the cold setup),
        ``hit_setup_s`` (the warm one), ``extract_s`` (their difference), ``extract_samples_s`` (rows of every
        split per second of it), ``encode_samples_s`` (the frozen encoders alone over the training split, no
        writing) and ``cache_mb``.
    """
    cache = Path(tempfile.mkdtemp(prefix="features-", dir=out if out.is_dir() else None))
    base = QUIET + FEATURE_CACHE_DATA + overrides + [f"model.feature_cache_dir={cache}"] + \
        [f"++model.encoders.{m}.freeze=true" for m in frozen]  # the user's setting (finetune.FineTuning.freeze)
    plain = make_recipe(base + ["model.feature_cache=off"], out / f"{name}-plain")
    t0 = time.perf_counter()
    built = make_recipe(base, out / f"{name}-build")
    build_s = time.perf_counter() - t0
    rows = sum(len(s) for s in built.splits.values())
    del built  # its device memory (a GPU-sized model)
    t0 = time.perf_counter()
    cached = make_recipe(base, out / f"{name}-cache")
    hit_s = time.perf_counter() - t0
    extract_s = max(build_s - hit_s, 1e-6)
    encode_seconds(plain, frozen)  # warm-up
    encode_s = statistics.median(encode_seconds(plain, frozen) for _ in range(max(1, rounds)))
    if cached.model.precomputed != set(frozen):
        raise UserError(f"{name}: the cache served {sorted(cached.model.precomputed)}, expected {frozen}")
    epoch_seconds(cached, 0), epoch_seconds(plain, 0)  # warm-up
    times: dict[str, list[float]] = {"cache": [], "recompute": []}
    for r in range(rounds):
        times["cache"].append(epoch_seconds(cached, r + 1))
        times["recompute"].append(epoch_seconds(plain, r + 1))
    size = sum(p.stat().st_size for p in cache.rglob("*.npy"))
    med = {k: statistics.median(v) for k, v in times.items()}
    train = len(cached.splits["train"])
    return {"config": name, "frozen": "+".join(frozen), "device": str(cached.device), "samples": train,
            "epoch_s_recompute": med["recompute"], "epoch_s_cache": med["cache"],
            "speedup": med["recompute"] / med["cache"], "build_s": build_s, "hit_setup_s": hit_s,
            "extract_s": extract_s, "extract_rows": rows, "extract_samples_s": rows / extract_s,
            "encode_samples_s": train / encode_s, "cache_mb": size / 1e6,
            "epoch_s_recompute_all": times["recompute"], "epoch_s_cache_all": times["cache"]}


def print_feature_cache_table(rows: list[dict]) -> None:
    """One line per config: epoch seconds recomputing and from the cache, the speedup, the cache's cost, and the
    extraction's throughput (the cold build, and the encoders alone without writing)."""
    head = (f"{'config':<18} {'samples':>7} {'epoch recompute s':>18} {'epoch cached s':>15} {'speedup':>8} "
            f"{'build s':>8} {'hit setup s':>12} {'extract/s':>10} {'encode/s':>9} {'cache MB':>9}")
    print(head)
    print("-" * len(head))
    for r in rows:
        if "error" in r:
            print(f"{r['config']:<18} error: {r['error']}")
            continue
        print(f"{r['config']:<18} {r['samples']:>7} {r['epoch_s_recompute']:>18.3f} {r['epoch_s_cache']:>15.4f} "
              f"{r['speedup']:>7.0f}x {r['build_s']:>8.1f} {r['hit_setup_s']:>12.1f} {r['extract_samples_s']:>10,.0f} "
              f"{r['encode_samples_s']:>9,.0f} {r['cache_mb']:>9.2f}")


def tiny_bert(folder: Path, vocab_size: int = 128, hidden: int = 128, layers: int = 2) -> str:
    """Write a BERT-like model (random weights, ``save_pretrained``) to ``folder``; its path, for
    ``encoder@model.encoders.text=hf model.encoders.text.model_name=<path>`` (no download). Small by default;
    ``vocab_size=30522, hidden=768, layers=12`` is BERT-base's shape (128 positions)."""
    import transformers

    saved = folder / "config.json"
    if saved.is_file():  # written before: kept if of these sizes (BERT-base takes seconds to write)
        old = json.loads(saved.read_text())
        if [old.get(k) for k in ("vocab_size", "hidden_size", "num_hidden_layers")] == [vocab_size, hidden, layers]:
            return str(folder)
    config = transformers.BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                                     num_attention_heads=max(1, hidden // 64), intermediate_size=4 * hidden,
                                     max_position_embeddings=128)
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(folder)
    return str(folder)


# ---------------------------------------------------------------------- fine-tuning choices: memory and step time
#: Image backbone (timm, random weights) and its LoRA targets, per config; the text backbone is :func:`tiny_bert`
#: of :data:`TEXT_SIZES`. ``vit_b16+bert_base`` is GPU-sized: ViT-B/16 at 224 px and a BERT-base-sized model at 128
#: tokens, batch 64 (its peak CUDA memory per choice is the table of docs/gpu.md).
FINETUNE_CONFIGS: dict[str, tuple[list[str], str]] = {
    "vit_tiny+bert": (["encoder@model.encoders.image=timm", "model.encoders.image.model_name=vit_tiny_patch16_224",
                       "model.encoders.image.pretrained=false"], "[qkv,proj,fc1,fc2]"),
    "resnet18+bert": (["encoder@model.encoders.image=timm", "model.encoders.image.model_name=resnet18",
                       "model.encoders.image.pretrained=false"], "[conv1,conv2]"),
    "vit_b16+bert_base": (["encoder@model.encoders.image=timm", "model.encoders.image.model_name=vit_base_patch16_224",
                           "model.encoders.image.pretrained=false", "dataset.text_length=128", "dataset.num_train=256",
                           "dataset.num_val=64", "dataset.num_test=64", "trainer.batch_size=64",
                           "trainer.eval_batch_size=64"], "[qkv,proj,fc1,fc2]"),
}
#: What each choice sets on both backbone encoders (image and text).
FINETUNE_CHOICES: dict[str, list[str]] = {
    "frozen+cache": ["freeze=true"],
    "frozen": ["freeze=true"],
    "lora": ["adapter=lora", "lora.r=8"],
    "full": [],
    "full+checkpointing": ["gradient_checkpointing=true"],
}
FINETUNE_DATA = ["modalities=[image,text,tabular]", "tasks=[category,tags]", "dataset.image_size=224",
                 "dataset.text_length=32", "dataset.vocab_size=100", "dataset.num_train=64", "dataset.num_val=16",
                 "dataset.num_test=16", "trainer.batch_size=16", "trainer.eval_batch_size=16", "trainer.max_epochs=1"]


def finetune_overrides(config: str, choice: str, bert: str, cache: Path, extra: list[str] = ()) -> list[str]:
    """The overrides of one fine-tuning ``choice`` (:data:`FINETUNE_CHOICES`) on a ``config``
    (:data:`FINETUNE_CONFIGS`): both backbones set alike, the feature cache on for ``frozen+cache`` only;
    then ``extra``."""
    image, lora_targets = FINETUNE_CONFIGS[config]
    text = ["encoder@model.encoders.text=hf", f"model.encoders.text.model_name={bert}",
            "model.encoders.text.pretrained=false"]
    settings = list(FINETUNE_CHOICES[choice])
    out = [*FINETUNE_DATA, *image, *text, f"model.feature_cache_dir={cache}",
           f"model.feature_cache={'auto' if choice == 'frozen+cache' else 'off'}"]
    out += [f"model.encoders.image.{s}" for s in settings] + [f"model.encoders.text.{s}" for s in settings]
    if choice == "lora":
        out += [f"model.encoders.image.lora.target_modules={lora_targets}",
                "model.encoders.text.lora.target_modules=[query,key,value,dense]"]
    return out + list(extra)


def finetune_child(overrides: list[str], out: str, steps: int, warmup: int) -> dict:
    """In a fresh process (:func:`finetune_bench`): set up the run, time ``warmup + steps`` training steps
    (the loop's own), and read the process's peak resident memory (``ru_maxrss``) after setup and after the
    steps; also the activations one forward saves for backward, the trainable parameters and the optimizer
    state."""
    import resource

    def peak_mb() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    t0 = time.perf_counter()
    recipe = make_recipe(overrides, out)
    setup_s = time.perf_counter() - t0
    setup_peak = peak_mb()
    if steps == 0:  # a setup only (e.g. writing the feature cache)
        return {"setup_s": setup_s, "cached": sorted(recipe.model.precomputed)}
    batches = first_batches(recipe, warmup + steps)
    times, cuda_peaks = [], []
    for i in range(warmup + steps):
        seconds, cuda_peak = timed_step(recipe, batches[i % len(batches)])
        if i >= warmup:
            times.append(seconds)
            cuda_peaks.append(cuda_peak or 0.0)
    state = sum(t.numel() * t.element_size() for s in recipe.optimizer.state.values() for t in s.values()
                if isinstance(t, torch.Tensor))
    return {"step_s_all": times, "setup_s": setup_s, "setup_peak_rss_mb": setup_peak, "peak_rss_mb": peak_mb(),
            "peak_cuda_mb": max(cuda_peaks) if recipe.device.type == "cuda" else None,
            "activations_mb": saved_activation_bytes(recipe, batches[0]) / 2**20,
            "trainable_params": sum(p.numel() for p in recipe.model.parameters() if p.requires_grad),
            "optimizer_state_mb": state / 2**20, "cached": sorted(recipe.model.precomputed)}


def finetune_bench(config: str, rounds: int, steps: int, warmup: int, out: Path,
                   choices: list[str] | None = None, extra: list[str] = ()) -> list[dict]:
    """Step time and memory of each fine-tuning choice of ``config``, side by side in one run.

    Each (round, choice) runs in a fresh process (``spawn``), so that its peak resident memory is its own;
    the choices take turns within each round (in reversed order every other round), so that a drift of the
    machine's speed hits all of them alike. The feature cache of ``frozen+cache`` is written before the
    first round (its cost is ``cache_build_s``), so every timed process reads it.

    Returns:
        One row per choice: ``step_ms`` (median over every timed step of every round), ``peak_rss_mb``
        (the process's peak resident memory, the highest round), ``step_rss_mb`` (how much the steps raised
        that peak above the setup's), ``activations_mb`` (saved for backward by one forward),
        ``trainable_params``, ``optimizer_state_mb``, and ``setup_s``.
    """
    import concurrent.futures
    import multiprocessing

    choices = choices or list(FINETUNE_CHOICES)
    out.mkdir(parents=True, exist_ok=True)
    bert = tiny_bert(out / f"bert-{config}", **TEXT_SIZES.get(config, {}))
    cache = Path(tempfile.mkdtemp(prefix="features-", dir=out))
    context = multiprocessing.get_context("spawn")

    def child(choice: str, name: str, n_steps: int, n_warmup: int) -> dict:
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
            return pool.submit(finetune_child, finetune_overrides(config, choice, bert, cache, extra), str(out / name),
                               n_steps, n_warmup).result()

    build_s = None
    if "frozen+cache" in choices:
        build_s = child("frozen+cache", f"{config}-cache-build", 0, 0)["setup_s"]
    results: dict[str, list[dict]] = {c: [] for c in choices}
    for r in range(rounds):
        for choice in (choices if r % 2 == 0 else choices[::-1]):
            results[choice].append(child(choice, f"{config}-{choice}-{r}", steps, warmup))
    rows = []
    for choice, runs in results.items():
        times = [t for run in runs for t in run["step_s_all"]]
        last = runs[-1]
        if choice == "frozen+cache" and last["cached"] != ["image", "text"]:
            raise UserError(f"{config}: the cache served {last['cached']}, expected both backbones")
        rows.append({"config": config, "choice": choice, "step_ms": 1000 * statistics.median(times),
                     "peak_rss_mb": max(run["peak_rss_mb"] for run in runs),
                     "step_rss_mb": max(run["peak_rss_mb"] - run["setup_peak_rss_mb"] for run in runs),
                     "peak_cuda_mb": max((run["peak_cuda_mb"] for run in runs if run["peak_cuda_mb"] is not None),
                                         default=None), "activations_mb": last["activations_mb"],
                     "trainable_params": last["trainable_params"], "optimizer_state_mb": last["optimizer_state_mb"],
                     "setup_s": statistics.median(run["setup_s"] for run in runs),
                     "cache_build_s": build_s if choice == "frozen+cache" else None, "step_s_all": times})
    return rows


def print_finetune_table(rows: list[dict]) -> None:
    """One line per (config, choice): step time, memory, trainable parameters, relative to full fine-tuning;
    on CUDA also the peak CUDA memory of the steps (``torch.cuda.max_memory_allocated``, per process)."""
    full = {r["config"]: r for r in rows if r.get("choice") == "full" and "error" not in r}
    cuda = any(r.get("peak_cuda_mb") is not None for r in rows)
    head = (f"{'config':<17} {'choice':<19} {'step ms':>8} {'vs full':>7} {'peak RSS MB':>11} {'step RSS MB':>11} "
            f"{'activations MB':>14} {'trainable':>11} {'optim MB':>8}" + (f" {'peak CUDA MB':>12}" if cuda else ""))
    print(head)
    print("-" * len(head))
    for r in rows:
        if "error" in r:
            print(f"{r['config']:<17} error: {r['error']}")
            continue
        ref = full.get(r["config"])
        ratio = f"{r['step_ms'] / ref['step_ms']:.2f}x" if ref else "-"
        peak = "" if not cuda else f" {r['peak_cuda_mb']:>12,.0f}" if r.get("peak_cuda_mb") is not None else \
            f" {'-':>12}"
        print(f"{r['config']:<17} {r['choice']:<19} {r['step_ms']:>8.1f} {ratio:>7} {r['peak_rss_mb']:>11.0f} "
              f"{r['step_rss_mb']:>11.0f} {r['activations_mb']:>14.1f} {r['trainable_params']:>11,} "
              f"{r['optimizer_state_mb']:>8.1f}{peak}")
