"""``mtmm-eval``: a checkpoint's metrics on every subset of modalities and under corruption.

    mtmm-eval checkpoint=logs/runs/<time>/checkpoints/best.pt [split=test] [noise=[0.5,1]]

The data and the model are rebuilt by :mod:`mtmm_train.builders` from the config stored in the
checkpoint (so the data and its splits are regenerated exactly; :func:`load_run`), and evaluated
with :func:`mtmm_train.evaluation.evaluate`, the function training evaluates with. Results go to
``<run dir>/eval/<checkpoint name>/``: ``metrics.json`` and ``metrics.md`` (every clean metric),
``robustness.json``, ``robustness.md`` (the tables) and ``robustness.png`` (metric against corruption
level, per task and corruption). Plain metrics only: ``mtmm-eval checkpoint=... subsets=false noise=[]
zero=[] drop=[]``.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException, OverrideParseException
from omegaconf import MISSING, DictConfig, OmegaConf
from tqdm import tqdm

from mtmm_train import builders, evaluation, fileio, runlock
from mtmm_train import checkpoint as ckpt
from mtmm_train.commands import hydra_write_failure, mark_task_error
from mtmm_train.config import (
    TrainerConfig,
    check_seed,
    fill_settings,
    override_error_line,
    remove_created_run_folder,
    typed,
)
from mtmm_train.data import FileSplit, MultiModalData, TensorSplit
from mtmm_train.data.augment import apply_augment
from mtmm_train.errors import UserError, check
from mtmm_train.preprocessing import apply_preprocessing
from mtmm_train.tasks import Task

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
            names ``_target_`` callables other than mtmm-train's own components, in their places
            (:mod:`mtmm_train.registry`), or holds ``_args_`` or interpolations (trusted files only).
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


@dataclass
class CheckpointRun:
    """A trained model rebuilt from its checkpoint, with the data and tasks it was trained on.

    Attributes:
        config: the checkpoint's stored config (today's trainer defaults filled in).
        data: the data, rebuilt from the stored config (fingerprint checked); with
            ``load_run(from_schema=True)`` its stored schema alone, without splits.
        splits: its splits on the device (empty with ``move_splits=False`` or ``from_schema=True``).
        tasks: task name -> task (loss and metrics).
        model: the model with the checkpoint's weights, in eval mode, on the device.
        autocast: the precision the run trained in.
        batch_size: the evaluation batch size.
    """

    config: DictConfig
    data: MultiModalData
    splits: dict[str, TensorSplit]
    tasks: dict[str, Task]
    model: torch.nn.Module
    autocast: torch.autocast
    batch_size: int

    def evaluate(self, split: TensorSplit) -> dict[str, float]:
        """Losses and metrics over ``split``, keyed ``loss/total``, ``<task>/<metric>``, ...
        (:func:`mtmm_train.evaluation.evaluate`, the function training evaluates with)."""
        out = evaluation.evaluate(self.model, self.tasks, split, self.batch_size, prefix="eval", autocast=self.autocast)
        return {k.split("/", 1)[1]: v for k, v in out.items()}


def load_run(path: str | Path, device: str = "auto", batch_size: int | None = None,
             allow_foreign_targets: bool = False, move_splits: bool = True, from_schema: bool = False) -> CheckpointRun:
    """Rebuild the data and the model of a checkpoint from its stored config, and load the weights.

    Args:
        path: the checkpoint (``best.pt`` or ``last.pt``).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        batch_size: the evaluation batch size; None: the stored ``trainer.eval_batch_size``.
        allow_foreign_targets: build ``_target_`` callables outside mtmm-train's own components.
        move_splits: put the splits on the device (False: ``splits`` is empty; ``mtmm-predict`` reads
            its own rows).
        from_schema: build the model from the data schema stored in the checkpoint
            (:func:`mtmm_train.checkpoint.schema_data`: specs, what the readers learned and their state),
            reading no data at all: ``data.splits`` and ``splits`` are empty (``mtmm-predict``). A checkpoint
            written before schemas were stored has none: its data is rebuilt as without ``from_schema``
            (logged; that needs the training data).

    Raises:
        UserError: the file is missing or not a checkpoint, its config names foreign components,
            its data changed since training (its schema does not match its fingerprint), or its weights
            do not fit its config or schema.
    """
    if Path(path).is_dir():
        found = next((p for p in (Path(path) / "checkpoints" / "best.pt", Path(path) / "best.pt") if p.is_file()),
                     Path(path) / "checkpoints" / "best.pt")
        raise UserError(f"checkpoint='{path}' is a directory; give a file, e.g. checkpoint={found}")
    check(Path(path).is_file(), f"checkpoint='{path}' is not a file; pass one that mtmm-train wrote, e.g. "
                                "checkpoint=logs/runs/<time>/checkpoints/best.pt")
    # weights_only=True, and the stored config checked before anything is built from it: only
    # mtmm-train's own components (mtmm_train.registry), unless allow_foreign_targets=true.
    state = ckpt.load(path, allow_foreign_targets)
    # Trainer settings added since the checkpoint was written take today's defaults.
    cfg = fill_settings(OmegaConf.create(state["config"]))
    trainer: TrainerConfig = typed(cfg, "trainer")
    builders.seed_everything(check_seed(cfg.get("seed")))  # as in training: the data is drawn the same
    dev = builders.pick_device(device)
    schema = state.get("data_schema") if from_schema else None
    if from_schema and schema is None:
        log.info("checkpoint '%s' holds no data schema (written by an older mtmm-train): rebuilding its training "
                 "data from the stored config to rebuild the model, which needs the training manifest and its files "
                 "where they were, and takes longer; a checkpoint of a run trained now needs neither", path)
    if schema is not None:
        data = ckpt.schema_data(schema, f"checkpoint '{path}'")
        unbuilt = [f"modality '{m}'" for m in data.modalities if m not in cfg.model.encoders] + \
            [f"task '{t}'" for t in data.tasks if t not in cfg.model.heads]
        check(not unbuilt, f"checkpoint '{path}': its data_schema names {', '.join(unbuilt)}, which its stored "
              "config has no encoder or head for; was the file edited?")
        # The readers' settings as building the data would leave them (the encoders' preprocessing, the
        # augmentation preset): mtmm-predict builds its readers from this config.
        apply_preprocessing(cfg)
        apply_augment(cfg)
        fix = "its data_schema does not describe the data it was trained on; was the file edited?"
    else:
        data = builders.build_data(cfg)
        # The data is rebuilt from the stored config: refuse when it is no longer what the model
        # was trained on (e.g. the manifest was edited: classes renamed, targets rescaled).
        fix = "the data its stored config names has changed since training; evaluate it on that data as it was, " \
              "or train a new model"
    ckpt.check_fingerprint(state.get("data_fingerprint"), ckpt.data_fingerprint(data), f"checkpoint '{path}'", fix)
    tasks = builders.build_tasks(data)
    model = builders.build_model(cfg, data, tasks, init=False)  # init_from: the checkpoint holds the weights
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        against = "the data_schema and config stored in it" if schema is not None else "the config stored in it"
        raise UserError(f"checkpoint '{path}' does not fit {against} ({str(e).splitlines()[0]}); was it written by "
                        "this version of mtmm-train?") from None
    splits = {k: s.to(dev) for k, s in data.splits.items()} if move_splits else {}
    return CheckpointRun(cfg, data, splits, tasks, model.to(dev).eval(),
                         builders.autocast_for(trainer.precision, dev), batch_size or trainer.eval_batch_size)


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
    if x.dtype == torch.uint8:  # pixels (files dataset): corrupted as the [0, 1] floats the encoders see
        x = x.float() / 255
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
    kinds = [k for k in CORRUPTIONS if getattr(cfg, k)]
    log.info("mtmm-eval: %s on the '%s' split: %s; rebuilding its data and model", cfg.checkpoint, cfg.split,
             ", ".join(["clean metrics"] + (["every subset of the modalities"] if cfg.subsets else [])
                       + ([f"corrupted by {'/'.join(kinds)}"] if kinds else [])))
    run = load_run(cfg.checkpoint, cfg.device, cfg.batch_size, cfg.allow_foreign_targets)
    check(cfg.split in run.splits, f"split is '{cfg.split}', which the data lacks; use one of {list(run.splits)}")
    data, modalities = run.splits[cfg.split], list(run.data.modalities)
    if isinstance(data, FileSplit) and (kinds or cfg.subsets):  # dataset.storage=stream: decoded per batch
        log.info("mtmm-eval: decoding the %d samples of the '%s' split into memory for the subsets and "
                 "corruptions", len(data), cfg.split)
        data = data.materialize()
    primary = {t: f"{t}/{PRIMARY_METRIC[task.spec.kind]}" for t, task in run.tasks.items()}
    subsets_of = [s for r in range(len(modalities), 0, -1) for s in itertools.combinations(modalities, r)
                  if cfg.subsets]
    total = 1 + len(subsets_of) + len(modalities) * sum(len(getattr(cfg, k)) for k in kinds)
    bar = tqdm(total=total, desc="mtmm-eval", unit="eval", dynamic_ncols=True, file=sys.stderr,
               disable=None)  # None: shown on a terminal, not in a pipe or a log

    def metrics(split: TensorSplit) -> dict[str, float]:  # the function training evaluates with
        out = run.evaluate(split)
        bar.update(1)
        return out

    with bar:
        clean = metrics(data)
        subsets = [{"modalities": list(s), "metrics": metrics(keep_only(data, s))} for s in subsets_of]
        corruptions = []
        gen = torch.Generator().manual_seed(cfg.seed)
        for m in modalities:
            draws = random_draws(data.inputs[m], run.data.modalities[m].vocab_size, gen)
            for kind in kinds:
                levels = sorted(getattr(cfg, kind))
                runs = [metrics(corrupt(data, m, kind, level, draws)) for level in levels]
                values = {t: [r[key] for r in runs] for t, key in primary.items()}
                scores = {t: robustness_score(levels, values[t], clean[key]) for t, key in primary.items()}
                corruptions.append({"modality": m, "kind": kind, "levels": levels, "values": values,
                                    "robustness": scores, "metrics": runs})
    # Without corruptions there is no robustness to score: {} rather than NaN per task.
    result = {"checkpoint": str(cfg.checkpoint), "split": cfg.split, "modalities": modalities, "primary": primary,
              "clean": clean, "subsets": subsets, "corruptions": corruptions,
              "robustness": {t: _nanmean([c["robustness"][t] for c in corruptions]) for t in primary}
              if corruptions else {}}
    write_outputs(result, output_dir, cfg.plot, list(run.tasks))
    return result


def random_draws(x: torch.Tensor, vocab_size: int | None, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """The draws :func:`corrupt` uses for one modality's input ``x`` (made on the CPU: reproducible)."""
    pixels = x.is_floating_point() or x.dtype == torch.uint8  # uint8 images get Gaussian noise too
    eps = torch.randn(x.shape, generator=gen) if pixels else torch.rand(x.shape, generator=gen)
    draws = {"u": torch.rand(x.shape[0], generator=gen), "eps": eps,
             "ids": torch.randint(vocab_size or 1, x.shape, generator=gen)}
    return {k: v.to(x.device) for k, v in draws.items()}


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def format_metrics(result: dict[str, Any], tasks: list[str] | None = None) -> str:
    """A markdown table of every clean metric: one row per task, its loss and each metric."""
    clean, tasks = result["clean"], tasks or list(result["primary"])
    rows = []
    for t in tasks:
        cells = [f"loss {clean.get(f'loss/{t}', float('nan')):.4f}"]
        cells += [f"{k.split('/', 1)[1]} {v:.4f}" for k, v in clean.items() if k.startswith(f"{t}/")]
        rows.append(f"| {t} | {', '.join(cells)} |")
    return "\n".join([f"# Metrics of {result['checkpoint']} ({result['split']} split)", "", "| task | metrics |",
                      "|---|---|", *rows]) + "\n"


def format_tables(result: dict[str, Any]) -> str:
    """Markdown tables of the primary metrics: per modality subset, and per corruption with its score
    (the corruption table only when some corruption was evaluated)."""
    primary = result["primary"]
    head = " | ".join(primary.values())
    lines = [f"# Robustness of {result['checkpoint']} ({result['split']} split)", "",
             f"| modalities | {head} |", "|---" * (len(primary) + 1) + "|",
             "| all (clean) | " + " | ".join(f"{result['clean'][k]:.4f}" for k in primary.values()) + " |"]
    for s in result["subsets"][1:]:  # the first subset is all of them: the clean row
        cells = " | ".join(f"{s['metrics'][k]:.4f}" for k in primary.values())
        lines.append(f"| {'+'.join(s['modalities'])} | {cells} |")
    if not result["corruptions"]:
        return "\n".join(lines) + "\n"
    lines += ["", "Robustness score (metric at the highest level in brackets): area under the metric against the",
              "corruption level, from the clean value at 0, divided by clean x highest level; 1 = unaffected.", "",
              f"| modality | corruption | {head} |", "|---" * (len(primary) + 2) + "|"]
    for c in result["corruptions"]:
        cells = [f"{c['robustness'][t]:.3f} ({c['values'][t][-1]:.3f} at {c['levels'][-1]:g})" for t in primary]
        lines.append(f"| {c['modality']} | {c['kind']} | " + " | ".join(cells) + " |")
    lines.append("| mean | | " + " | ".join(f"{result['robustness'][t]:.3f}" for t in primary) + " |")
    return "\n".join(lines) + "\n"


def write_outputs(result: dict[str, Any], output_dir: Path, plot: bool, tasks: list[str] | None = None) -> None:
    """``metrics.json`` and ``metrics.md`` (every clean metric), ``robustness.json``, ``robustness.md`` and
    (if ``plot`` and some corruption was evaluated) ``robustness.png`` in ``output_dir``."""
    fileio.write_json(output_dir / "robustness.json", result)  # atomic: a full disk keeps the earlier file
    fileio.write_json(output_dir / "metrics.json", {"checkpoint": result["checkpoint"], "split": result["split"],
                                                    "metrics": result["clean"]})
    plain = format_metrics(result, tasks)
    fileio.write_text(output_dir / "metrics.md", plain)
    table = format_tables(result)
    fileio.write_text(output_dir / "robustness.md", table)
    log.info("%s\n%s", plain, table)
    if plot and result["corruptions"]:
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
    try:
        fileio.save_figure(fig, path, dpi=100)
    finally:
        plt.close(fig)


OmegaConf.register_new_resolver("mtmm_eval_dir", eval_dir, replace=True)
ConfigStore.instance().store(name="mtmm_eval_schema", node=EvalConfig)
ConfigStore.instance().store(name="mtmm_eval", node={
    "defaults": ["mtmm_eval_schema", "_self_"],
    "hydra": {"job": {"name": "mtmm-eval"}, "run": {"dir": "${mtmm_eval_dir:${oc.select:checkpoint,null}}"},
              # The output folder is checked and locked before Hydra writes into it (not the run's folder:
              # a checkpoint can be evaluated while its run trains on).
              # new_folders first: a refused evaluation removes the folders it created (mtmm_train.config).
              "callbacks": {"new_folders": {"_target_": "mtmm_train.config.NewFolders"},
                            "run_folder": {"_target_": "mtmm_train.runlock.RunFolderCallback",
                                           "hint": " for the results (by default they go next to the checkpoint, "
                                                   "into <run folder>/eval/<checkpoint name>)"}}},
})


@hydra.main(version_base="1.3", config_path=None, config_name="mtmm_eval")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        if OmegaConf.is_missing(cfg, "checkpoint"):
            raise UserError("checkpoint is required: mtmm-eval checkpoint=logs/runs/<time>/checkpoints/best.pt")
        extra = [k for k in cfg if k not in EvalConfig.__dataclass_fields__]  # added with +key=value
        if extra:
            raise UserError(f"unknown setting '{extra[0]}'; the settings are "
                            f"{', '.join(EvalConfig.__dataclass_fields__)}")
        evaluate_checkpoint(OmegaConf.to_object(cfg), Path(HydraConfig.get().runtime.output_dir))
    except UserError as e:
        remove_created_run_folder(HydraConfig.get().runtime.output_dir)  # nothing left behind when refused
        print(f"mtmm-eval: error: {e}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:
        fault = fileio.fault_in(e)  # the disk filled up (or went read-only) while writing the results
        if fault is None:
            mark_task_error(e)  # not Hydra's: main() passes it on as it is
            raise
        print(f"mtmm-eval: error: cannot write {fileio.explain(fault)}; the files there from before are intact: "
              "make room, or pass hydra.run.dir=<another folder> for the results", file=sys.stderr)
        sys.exit(1)


def main() -> None:
    """Console-script entry point."""
    # Hydra re-raises its own errors (an unknown setting, a value of the wrong type) to print them on one line.
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    try:
        _hydra_main()
    except runlock.FolderRefused as e:  # the output folder is in use by another evaluation, or not writable
        print(f"mtmm-eval: error: {e}", file=sys.stderr)
        sys.exit(2)
    except (ConfigCompositionException, OverrideParseException) as e:
        from mtmm_train.cli import hydra_error_line

        print(f"mtmm-eval: error: {override_error_line(e, EvalConfig) or hydra_error_line(e)}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:
        # Hydra's own writes into the output folder (.hydra/*.yaml, the log file) failed, before the
        # evaluation started: the disk is full or read-only. The results there from before are untouched.
        failure = hydra_write_failure(e)
        if failure is None:
            raise
        print(f"mtmm-eval: error: {failure}; make room, or pass hydra.run.dir=<a writable folder> for the results",
              file=sys.stderr)
        sys.exit(2)
    finally:
        runlock.release_all()


if __name__ == "__main__":
    main()
