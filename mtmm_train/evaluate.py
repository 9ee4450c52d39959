"""``mtmm-eval``: a checkpoint's metrics on every subset of modalities and under corruption.

    mtmm-eval checkpoint=logs/runs/<time>/checkpoints/best.pt [split=test] [noise=[0.5,1]]

The model is rebuilt by :class:`~mtmm_train.recipe.TrainRecipe` from the config stored in the
checkpoint (so the data and its splits are regenerated exactly), and evaluated with the
recipe's own :meth:`~mtmm_train.recipe.TrainRecipe.evaluate`. Results go to
``<run dir>/eval/<checkpoint name>/``: ``robustness.json``, ``robustness.md`` (the tables)
and ``robustness.png`` (metric against corruption level, per task and corruption).
"""

from __future__ import annotations

import importlib.resources
import itertools
import json
import logging
import math
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import MISSING, DictConfig, OmegaConf

from mtmm_train import checkpoint as ckpt
from mtmm_train.data import TensorSplit
from mtmm_train.errors import UserError, check
from mtmm_train.recipe import TrainRecipe

log = logging.getLogger("mtmm_train")

# The metric each task is scored and plotted by (higher is better for all four).
PRIMARY_METRIC = {"multiclass": "accuracy", "binary": "auroc", "multilabel": "auroc", "regression": "r2"}
CORRUPTIONS = ("noise", "zero", "drop")


@dataclass
class EvalConfig:
    """Settings of ``mtmm-eval``; override any on the command line (``split=val plot=false``).

    Attributes:
        checkpoint: the ``.pt`` file written by ``mtmm-train``.
        split: the split to evaluate (the synthetic data has ``train``, ``val``, ``test``).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        batch_size: evaluation batch size; ``None``: the checkpoint's ``trainer.eval_batch_size``.
        subsets: evaluate every non-empty subset of the modalities.
        noise: Gaussian noise levels, in units of the modality's standard deviation (token ids:
            each token is replaced by a random one with probability ``1 - exp(-level)``).
        zero: fractions of samples whose modality input is zeroed but still marked present
            (a sensor that fails silently).
        drop: fractions of samples whose modality is marked missing (and zeroed).
        seed: seed of the corruption draws.
        plot: write ``robustness.png`` (needs matplotlib: ``pip install 'mtmm-train[plot]'``).
        allow_foreign_targets: rebuild the model even if the config stored in the checkpoint
            names ``_target_`` callables outside mtmm_train and torch.optim (trusted files only).
    """

    checkpoint: str = MISSING
    split: str = "test"
    device: str = "auto"
    batch_size: int | None = None
    subsets: bool = True
    noise: list[float] = field(default_factory=lambda: [0.25, 0.5, 1.0, 2.0])
    zero: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75, 1.0])
    drop: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75, 1.0])
    seed: int = 0
    plot: bool = True
    allow_foreign_targets: bool = False


def eval_dir(checkpoint: str | None) -> str:
    """``<run dir>/eval/<checkpoint stem>`` for ``<run dir>/checkpoints/<name>.pt`` (Hydra's run dir)."""
    if checkpoint is None:  # the app reports the missing value itself
        return str(Path(tempfile.gettempdir()) / "mtmm-eval")
    path = Path(checkpoint)
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return str(run_dir / "eval" / path.stem)


def load_recipe(path: str | Path, device: str, batch_size: int | None, output_dir: Path,
                allow_foreign_targets: bool = False) -> TrainRecipe:
    """Rebuild the run of a checkpoint (data, model) with its stored config, and load the weights.

    Raises:
        UserError: the file is missing or not a checkpoint, or its weights do not fit its config.
    """
    check(Path(path).is_file(), f"checkpoint='{path}' is not a file; pass one that mtmm-train wrote, e.g. "
                                "checkpoint=logs/runs/<time>/checkpoints/best.pt")
    state = ckpt.load(path)  # weights_only=True
    ckpt.check_targets(state["config"], f"checkpoint '{path}'", allow_foreign_targets)
    cfg = OmegaConf.create(state["config"])
    # Trainer and logger settings added since the checkpoint was written take today's defaults.
    configs = importlib.resources.files("mtmm_train.configs")
    for key, group, name in (("trainer", "trainer", "default.yaml"), ("logger", "logger", "none.yaml")):
        cfg[key] = OmegaConf.merge(OmegaConf.create((configs / group / name).read_text()), cfg.get(key) or {})
    # Evaluation only: no resume, no TensorBoard files, no compile, the device asked for now.
    cfg.trainer.merge_with({"device": device, "resume": None, "compile": False})
    cfg.logger.merge_with({"tensorboard": False, "progress_bar": False})
    if batch_size is not None:
        cfg.trainer.eval_batch_size = batch_size
    recipe = TrainRecipe(cfg, output_dir)
    recipe.setup()
    try:
        recipe.model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise UserError(f"checkpoint '{path}' does not fit the config stored in it "
                        f"({str(e).splitlines()[0]}); was it written by this version of mtmm-train?") from None
    return recipe


def corrupt(split: TensorSplit, modality: str, kind: str, level: float, draws: dict[str, torch.Tensor]) -> TensorSplit:
    """A copy of ``split`` with one modality corrupted (other modalities untouched).

    The same ``draws`` are used at every level, so a higher level corrupts a superset of the
    samples (or the same noise, scaled): the curves are monotone in the corruption, not in luck.

    Args:
        split: the clean data.
        modality: the modality to corrupt.
        kind: ``noise``, ``zero`` or ``drop`` (see :class:`EvalConfig`).
        level: the corruption level.
        draws: from :func:`random_draws`: ``u`` ``(N,)`` uniform per sample, ``eps`` noise
            shaped like the input (standard normal for floats, uniform for token ids), ``ids``
            random token ids.

    Returns:
        The corrupted split.
    """
    x, present = split.inputs[modality], split.present[modality]
    hit = (draws["u"] < level).view(-1, *([1] * (x.dim() - 1)))  # (N, 1, ...)
    if kind == "noise" and x.is_floating_point():
        std = x[present].std() if present.any() else x.new_tensor(1.0)
        x = torch.where(present.view_as(hit), x + level * std * draws["eps"], x)
    elif kind == "noise":
        x = torch.where(draws["eps"] < 1 - math.exp(-level), draws["ids"], x)
    else:
        check(kind in CORRUPTIONS, f"corruption must be one of {', '.join(CORRUPTIONS)}, found '{kind}'")
        x = torch.where(hit, torch.zeros((), dtype=x.dtype, device=x.device), x)
        if kind == "drop":
            present = present & ~hit.view(-1)
    return TensorSplit({**split.inputs, modality: x}, {**split.present, modality: present}, split.targets,
                       split.labeled)


def keep_only(split: TensorSplit, modalities: tuple[str, ...]) -> TensorSplit:
    """A copy of ``split`` in which every modality outside ``modalities`` is missing (and zeroed)."""
    inputs = {m: x if m in modalities else torch.zeros_like(x) for m, x in split.inputs.items()}
    present = {m: p if m in modalities else torch.zeros_like(p) for m, p in split.present.items()}
    return TensorSplit(inputs, present, split.targets, split.labeled)


def robustness_score(levels: list[float], values: list[float], clean: float) -> float:
    """Area under the metric-vs-level curve from level 0 (clean), over ``clean x max level``.

    1 means no degradation at any level; 0.5 means the metric fell linearly to zero. NaN when
    the clean metric is not positive (e.g. R^2 <= 0), where the ratio means nothing.
    """
    xs, ys = [0.0, *levels], [clean, *values]
    area = sum((xs[i + 1] - xs[i]) * (ys[i + 1] + ys[i]) / 2 for i in range(len(xs) - 1))
    return area / (clean * xs[-1]) if clean > 0 and xs[-1] > 0 else float("nan")


def evaluate_checkpoint(cfg: EvalConfig, output_dir: Path) -> dict[str, Any]:
    """Clean, per-subset and per-corruption metrics of a checkpoint; writes the outputs.

    Returns:
        What ``robustness.json`` holds: ``clean``, ``subsets``, ``corruptions`` (with a
        ``robustness`` score per task) and ``robustness`` (per task, averaged).

    Raises:
        UserError: a bad level, split or checkpoint.
    """
    for kind in CORRUPTIONS:
        bad = [v for v in getattr(cfg, kind) if not (v > 0 and (kind == "noise" or v <= 1))]
        check(not bad, f"{kind} levels must be {'> 0' if kind == 'noise' else 'in (0, 1]'}, found {bad[:1]}")
    output_dir.mkdir(parents=True, exist_ok=True)
    recipe = load_recipe(cfg.checkpoint, cfg.device, cfg.batch_size, output_dir, cfg.allow_foreign_targets)
    check(cfg.split in recipe.splits, f"split is '{cfg.split}', which the data lacks; use one of {list(recipe.splits)}")
    data, modalities = recipe.splits[cfg.split], list(recipe.data.modalities)
    primary = {t: f"{t}/{PRIMARY_METRIC[task.spec.kind]}" for t, task in recipe.tasks.items()}

    def metrics(split: TensorSplit) -> dict[str, float]:
        recipe.splits["mtmm-eval"] = split  # the recipe's own evaluation, on a modified split
        return {k.split("/", 1)[1]: v for k, v in recipe.evaluate("mtmm-eval").items()}

    clean = metrics(data)
    subsets = [{"modalities": list(s), "metrics": metrics(keep_only(data, s))}
               for r in range(len(modalities), 0, -1) for s in itertools.combinations(modalities, r)
               if cfg.subsets]
    corruptions = []
    gen = torch.Generator().manual_seed(cfg.seed)
    for m in modalities:
        draws = random_draws(data.inputs[m], recipe.data.modalities[m].vocab_size, gen)
        for kind in (k for k in CORRUPTIONS if getattr(cfg, k)):
            levels = sorted(getattr(cfg, kind))
            runs = [metrics(corrupt(data, m, kind, level, draws)) for level in levels]
            values = {t: [r[key] for r in runs] for t, key in primary.items()}
            scores = {t: robustness_score(levels, values[t], clean[key]) for t, key in primary.items()}
            corruptions.append({"modality": m, "kind": kind, "levels": levels, "values": values,
                                "robustness": scores, "metrics": runs})
    result = {"checkpoint": str(cfg.checkpoint), "split": cfg.split, "modalities": modalities, "primary": primary,
              "clean": clean, "subsets": subsets, "corruptions": corruptions,
              "robustness": {t: _nanmean([c["robustness"][t] for c in corruptions]) for t in primary}}
    write_outputs(result, output_dir, cfg.plot)
    return result


def random_draws(x: torch.Tensor, vocab_size: int | None, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """The draws :func:`corrupt` uses for one modality's input ``x`` (made on the CPU: reproducible)."""
    eps = torch.randn(x.shape, generator=gen) if x.is_floating_point() else torch.rand(x.shape, generator=gen)
    draws = {"u": torch.rand(x.shape[0], generator=gen), "eps": eps,
             "ids": torch.randint(vocab_size or 1, x.shape, generator=gen)}
    return {k: v.to(x.device) for k, v in draws.items()}


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def format_tables(result: dict[str, Any]) -> str:
    """Markdown tables of the primary metrics: per modality subset, and per corruption with its score."""
    primary = result["primary"]
    head = " | ".join(primary.values())
    lines = [f"# Robustness of {result['checkpoint']} ({result['split']} split)", "",
             f"| modalities | {head} |", "|---" * (len(primary) + 1) + "|",
             "| all (clean) | " + " | ".join(f"{result['clean'][k]:.4f}" for k in primary.values()) + " |"]
    for s in result["subsets"][1:]:  # the first subset is all of them: the clean row
        cells = " | ".join(f"{s['metrics'][k]:.4f}" for k in primary.values())
        lines.append(f"| {'+'.join(s['modalities'])} | {cells} |")
    lines += ["", "Robustness score (metric at the highest level in brackets): area under the metric against the",
              "corruption level, from the clean value at 0, divided by clean x highest level; 1 = unaffected.", "",
              f"| modality | corruption | {head} |", "|---" * (len(primary) + 2) + "|"]
    for c in result["corruptions"]:
        cells = [f"{c['robustness'][t]:.3f} ({c['values'][t][-1]:.3f} at {c['levels'][-1]:g})" for t in primary]
        lines.append(f"| {c['modality']} | {c['kind']} | " + " | ".join(cells) + " |")
    lines.append("| mean | | " + " | ".join(f"{result['robustness'][t]:.3f}" for t in primary) + " |")
    return "\n".join(lines) + "\n"


def write_outputs(result: dict[str, Any], output_dir: Path, plot: bool) -> None:
    """``robustness.json``, ``robustness.md`` and (if ``plot``) ``robustness.png`` in ``output_dir``."""
    (output_dir / "robustness.json").write_text(json.dumps(result, indent=2, allow_nan=True))
    table = format_tables(result)
    (output_dir / "robustness.md").write_text(table)
    log.info("robustness of %s\n%s", result["checkpoint"], table)
    if plot:
        plot_curves(result, output_dir / "robustness.png")
    log.info("wrote %s", output_dir)


def plot_curves(result: dict[str, Any], path: Path) -> None:
    """One panel per task and corruption: the primary metric against the level, a line per modality.

    Raises:
        UserError: matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("plot=true needs matplotlib: pip install 'mtmm-train[plot]', or pass plot=false") from None
    tasks, kinds = list(result["primary"]), sorted({c["kind"] for c in result["corruptions"]}, key=CORRUPTIONS.index)
    fig, axes = plt.subplots(len(tasks), max(1, len(kinds)), figsize=(4 * max(1, len(kinds)), 3 * len(tasks)),
                             squeeze=False)
    for i, t in enumerate(tasks):
        clean = result["clean"][result["primary"][t]]
        for j, kind in enumerate(kinds):
            ax = axes[i][j]
            for c in (c for c in result["corruptions"] if c["kind"] == kind):
                ax.plot([0, *c["levels"]], [clean, *c["values"][t]], marker="o", label=c["modality"])
            ax.axhline(clean, color="gray", linestyle="--", linewidth=1)
            ax.set_title(f"{result['primary'][t]} / {kind}", fontsize=9)
            ax.set_xlabel("noise std" if kind == "noise" else "fraction of samples")
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


OmegaConf.register_new_resolver("mtmm_eval_dir", eval_dir, replace=True)
ConfigStore.instance().store(name="mtmm_eval_schema", node=EvalConfig)
ConfigStore.instance().store(name="mtmm_eval", node={
    "defaults": ["mtmm_eval_schema", "_self_"],
    "hydra": {"job": {"name": "mtmm-eval"}, "run": {"dir": "${mtmm_eval_dir:${oc.select:checkpoint,null}}"}},
})


@hydra.main(version_base="1.3", config_path=None, config_name="mtmm_eval")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        if OmegaConf.is_missing(cfg, "checkpoint"):
            raise UserError("checkpoint is required: mtmm-eval checkpoint=logs/runs/<time>/checkpoints/best.pt")
        evaluate_checkpoint(OmegaConf.to_object(cfg), Path(HydraConfig.get().runtime.output_dir))
    except UserError as e:
        print(f"mtmm-eval: error: {e}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    """Console-script entry point."""
    _hydra_main()


if __name__ == "__main__":
    main()
