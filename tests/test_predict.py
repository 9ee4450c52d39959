"""``mtmm-predict``: predictions for new rows, chunked like whole, with the training run's readers."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import compose_cfg, run_cli
from PIL import Image

from mtmm_train.commands import parse
from mtmm_train.data.readers.numeric import NumericReader
from mtmm_train.data.readers.text import TextReader
from mtmm_train.errors import UserError
from mtmm_train.evaluate import load_run
from mtmm_train.predict import NewManifest, PredictConfig, iter_manifest, predict
from mtmm_train.recipe import TrainRecipe

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = ("red", "green", "blue")
FOLDS = ("train", "train", "train", "train", "val", "test")


def rows(root: Path, n: int, seed: int = 0, targets: bool = True) -> list[dict[str, Any]]:
    """``n`` samples (class = row % 3) with an image, a caption and two numbers; row 7k lacks its image."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        c = i % 3
        image = ""
        if i % 7:
            img = rng.integers(0, 40, (6, 6, 3)).astype(np.uint8)
            img[:, :, c] = 220
            image = f"img/{seed}_{i}.png"
            Image.fromarray(img).save(root / image)
        row = {"key": f"s{seed}-{i}", "image": image, "caption": f"a {CLASSES[c]} thing",
               "a": round(float(c + 0.3 * rng.standard_normal()), 4), "b": round(float(rng.standard_normal()), 4)}
        if targets:
            row.update(colour=CLASSES[c], odd="yes" if i % 2 else "no",
                       tags="|".join(["warm"] if c == 0 else ["cold", "deep"] if c == 2 else []) or "[]",
                       y=round(float(10 * c + 100 + rng.standard_normal()), 4), fold=FOLDS[i % 6])
        out.append(row)
    return out


def write(path: Path, table: list[dict[str, Any]]) -> Path:
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({k: [None if r[k] == "" else r[k] for r in table] for k in table[0]}), path)
        return path
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(table[0]))
        w.writeheader()
        w.writerows(table)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained on a manifest with image, text and numeric inputs and all four task kinds."""
    root = tmp_path_factory.mktemp("predict")
    manifest = write(root / "train.csv", rows(root, 60))
    conf = root / "conf" / "dataset"
    conf.mkdir(parents=True)
    (conf / "mine.yaml").write_text(f"""
defaults:
  - files
  - /reader@modalities.image: image
  - /reader@modalities.caption: text
  - /reader@modalities.tabular: numeric
  - /target@tasks.colour: label
  - /target@tasks.odd: binary
  - /target@tasks.tags: multilabel
  - /target@tasks.y: regression
  - /encoder@_global_.model.encoders.image: cnn
  - /encoder@_global_.model.encoders.caption: embedding_bag
  - /encoder@_global_.model.encoders.tabular: mlp
  - /head@_global_.model.heads.colour: linear
  - /head@_global_.model.heads.odd: linear
  - /head@_global_.model.heads.tags: linear
  - /head@_global_.model.heads.y: linear
  - _self_
manifest: {manifest}
split_column: fold
cache: false
num_workers: 0
modalities:
  image: {{size: [6, 6]}}
  tabular: {{columns: [a, b]}}
""")
    cfg = compose_cfg([f"hydra.searchpath=[file://{root / 'conf'}]", "dataset=mine", "trainer.max_epochs=2",
                       "trainer.batch_size=8", "logger=none"])
    recipe = TrainRecipe(cfg, root / "run")
    recipe.setup()
    recipe.train()
    return root / "run" / "checkpoints" / "best.pt"


def _config(ckpt: Path, manifest: Path, out: Path, **kw: Any) -> PredictConfig:
    return PredictConfig(checkpoint=str(ckpt), dataset=NewManifest(manifest=str(manifest)), output=str(out), **kw)


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_predictions_name_classes_in_original_units_and_chunks_equal_whole(trained: Path, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    new = rows(tmp_path, 23, seed=5, targets=False)
    new[3].update(image="", caption="", a="", b="")  # no modality at all: empty predictions
    new[4].update(caption="", a="", b="")  # the image only
    manifest = write(tmp_path / "new.csv", new)
    seen: list[int] = []
    for cls in (NumericReader, TextReader):  # the readers that learned from training rows
        original = cls.read

        def spy(self: Any, table: Any, ctx: Any, _original: Any = original) -> Any:
            if ctx.root == tmp_path:  # mtmm-predict's calls (load_run also reads the training manifest)
                seen.append(int((ctx.split == 2).sum()))  # the new rows of this call
            return _original(self, table, ctx)

        monkeypatch.setattr(cls, "read", spy)
    whole = _read(predict(_config(trained, manifest, tmp_path / "whole.csv", chunk_rows=1000, id_column="key")))
    seen.clear()
    chunked = _read(predict(_config(trained, manifest, tmp_path / "chunked.csv", chunk_rows=5, id_column="key")))
    assert seen and max(seen) <= 5 and sum(seen) == 2 * 23  # two learning readers, 5 new rows at most per call
    assert len(whole) == len(chunked) == 23 and [r["key"] for r in chunked] == [r["key"] for r in new]
    assert list(whole[0]) == ["key", "colour", "colour/p_blue", "colour/p_green", "colour/p_red", "odd", "odd/p_no",
                              "odd/p_yes", "tags", "tags/p_cold", "tags/p_deep", "tags/p_warm", "y"]
    for w, c in zip(whole, chunked, strict=True):
        assert w.keys() == c.keys()
        for k in w:
            if k in ("key", "colour", "odd", "tags") or w[k] == "":
                assert w[k] == c[k], k
            else:
                assert float(w[k]) == pytest.approx(float(c[k]), abs=1e-5), k
    assert all(v == "" for k, v in whole[3].items() if k != "key")
    r = whole[0]
    assert r["colour"] in CLASSES and r["odd"] in ("yes", "no")
    assert sum(float(r[f"colour/p_{c}"]) for c in CLASSES) == pytest.approx(1.0, abs=1e-5)
    assert float(r["odd/p_yes"]) + float(r["odd/p_no"]) == pytest.approx(1.0, abs=1e-6)
    assert all(t in ("cold", "deep", "warm") for t in r["tags"].split("|")) or r["tags"] == "[]"
    assert 90 < float(r["y"]) < 140  # original units (targets 100..122), not standard deviations
    assert whole[4]["colour"] in CLASSES  # one modality is enough


def test_predictions_match_the_model_on_its_own_test_split(trained: Path, tmp_path: Path) -> None:
    """The training manifest's test rows, predicted from the file, equal the model on the split it evaluated."""
    run = load_run(trained, "cpu")
    table = [r for r in _read(trained.parents[2] / "train.csv") if r["fold"] == "test"]
    inputs = [{k: v for k, v in r.items() if k in ("image", "caption", "a", "b")} for r in table]
    manifest = write(trained.parents[2] / "test_rows.csv", inputs)
    out = _read(predict(_config(trained, manifest, tmp_path / "p.csv", chunk_rows=4)))
    split = run.splits["test"]
    preds, _ = run.model(split.inputs, split.present)
    probs = preds["colour"].softmax(1)
    got = torch.tensor([[float(r[f"colour/p_{c}"]) for c in ("blue", "green", "red")] for r in out])
    assert torch.allclose(got, probs, atol=1e-5)
    assert [r["row"] for r in out] == [str(i) for i in range(1, len(table) + 1)]


def test_parquet_output_and_manifest_chunks(trained: Path, tmp_path: Path) -> None:
    new = rows(tmp_path, 11, seed=3, targets=False)
    manifest = write(tmp_path / "new.parquet", new)
    chunks = list(iter_manifest(manifest, 4))
    assert [len(c["key"]) for c in chunks] == [4, 4, 3]
    assert sum((c["key"] for c in chunks), []) == [r["key"] for r in new]
    out = predict(_config(trained, manifest, tmp_path / "p.parquet", chunk_rows=4))
    import pyarrow.parquet as pq

    table = pq.read_table(out).to_pydict()
    assert table["row"] == list(range(1, 12)) and len(table["colour"]) == 11 and "y" in table


@pytest.mark.parametrize(("change", "message"), [
    ({"drop": "caption"}, "lacks the column(s) caption that the model was trained on"),
    ({"id_column": "name"}, "id_column is 'name', which the manifest lacks"),
    ({"output": "p.txt"}, "output is"),
    ({"chunk_rows": 0}, "chunk_rows must be an integer >= 1"),
])
def test_bad_inputs_are_one_line(trained: Path, tmp_path: Path, change: dict, message: str) -> None:
    new = rows(tmp_path, 4, seed=1, targets=False)
    change = dict(change)
    drop = change.pop("drop", None)
    new = [{k: v for k, v in r.items() if k != drop} for r in new]
    manifest = write(tmp_path / "new.csv", new)
    cfg = _config(trained, manifest, tmp_path / change.pop("output", "p.csv"), **change)
    with pytest.raises(UserError) as e:
        predict(cfg)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_parse_settings() -> None:
    cfg = parse(["checkpoint=a.pt", "dataset.manifest=m.csv", "chunk_rows=7"], PredictConfig, "mtmm-predict",
                ("checkpoint", "dataset.manifest"), "...")
    assert cfg.chunk_rows == 7 and cfg.dataset.manifest == "m.csv"
    with pytest.raises(UserError, match="unknown setting 'chunk'"):
        parse(["checkpoint=a.pt", "chunk=3"], PredictConfig, "mtmm-predict", (), "...")
    with pytest.raises(UserError, match="dataset.manifest is required"):
        parse(["checkpoint=a.pt"], PredictConfig, "mtmm-predict", ("checkpoint", "dataset.manifest"), "...")


def test_cli(trained: Path, tmp_path: Path) -> None:
    manifest = write(tmp_path / "new.csv", rows(tmp_path, 5, seed=2, targets=False))
    done = run_cli([f"checkpoint={trained}", f"dataset.manifest={manifest}", "id_column=key"], tmp_path,
                   module="mtmm_train.predict", env={"OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    out = _read(tmp_path / "new.predictions.csv")
    assert [r["key"] for r in out] == [f"s2-{i}" for i in range(5)]
    bad = run_cli([f"checkpoint={trained}"], tmp_path, module="mtmm_train.predict")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "mtmm-predict: error: dataset.manifest is required, e.g. mtmm-predict checkpoint=logs/runs/<time>/checkpoints/"
        "best.pt dataset.manifest=new.csv output=pred.csv"]
    assert json.loads((trained.parents[1] / "metrics.json").read_text())["test"]  # trainer.test: the test split
