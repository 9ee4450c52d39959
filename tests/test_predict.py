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
from mtmm_train.data.readers.base import ReadContext, Reader
from mtmm_train.data.readers.binary import BinaryLabel
from mtmm_train.data.readers.label import ClassLabel
from mtmm_train.data.readers.multilabel import MultiLabel
from mtmm_train.data.readers.numeric import NumericReader
from mtmm_train.data.readers.regression import NumericTarget
from mtmm_train.data.readers.text import TextReader
from mtmm_train.errors import ComponentError, UserError
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
    return train_on_manifest(root, manifest, ["image", "caption", "tabular"],
                             {"colour": "label", "odd": "binary", "tags": "multilabel", "y": "regression"},
                             "  image: {size: [6, 6]}\n  tabular: {columns: [a, b]}")


# modality -> (its reader config, its encoder config)
READ_AND_ENCODE = {"image": ("image", "cnn"), "caption": ("text", "embedding_bag"), "tabular": ("numeric", "mlp")}


def train_on_manifest(root: Path, manifest: Path, modalities: list[str], tasks: dict[str, str], settings: str,
                      overrides: tuple[str, ...] = ()) -> Path:
    """Train a tiny model (2 epochs) on ``manifest`` through a dataset config ``root/conf/dataset/mine.yaml``:
    ``modalities`` (:data:`READ_AND_ENCODE`), ``tasks`` (name -> target config) with linear heads, and the
    readers' ``settings`` (YAML under ``modalities:``). Returns its ``best.pt``."""
    defaults = [f"/reader@modalities.{m}: {READ_AND_ENCODE[m][0]}" for m in modalities]
    defaults += [f"/target@tasks.{t}: {target}" for t, target in tasks.items()]
    defaults += [f"/encoder@_global_.model.encoders.{m}: {READ_AND_ENCODE[m][1]}" for m in modalities]
    defaults += [f"/head@_global_.model.heads.{t}: linear" for t in tasks]
    conf = root / "conf" / "dataset"
    conf.mkdir(parents=True)
    (conf / "mine.yaml").write_text("defaults:\n  - files\n" + "".join(f"  - {d}\n" for d in defaults)
                                    + f"  - _self_\nmanifest: {manifest}\nsplit_column: fold\ncache: false\n"
                                    f"num_workers: 0\nmodalities:\n{settings}\n")
    cfg = compose_cfg([f"hydra.searchpath=[file://{root / 'conf'}]", "dataset=mine", "trainer.max_epochs=2",
                       "trainer.batch_size=8", "logger=none", *overrides])
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
        for method in ("read", "read_with"):  # with the stored state, or (older checkpoints) learning again
            original = getattr(cls, method)

            def spy(self: Any, table: Any, ctx: Any, *state: Any, _original: Any = original) -> Any:
                if ctx.root == tmp_path:  # mtmm-predict's calls
                    seen.append(int((ctx.split == 2).sum()))  # the new rows of this call
                return _original(self, table, ctx, *state)

            monkeypatch.setattr(cls, method, spy)
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


# ---------------------------------------------------------------------- from the checkpoint alone
@pytest.fixture(scope="module")
def text_numbers(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny model trained on text and numbers, for a class label and a regression target: (checkpoint,
    the folder of its training manifest ``data/train.csv``)."""
    root = tmp_path_factory.mktemp("alone")
    data = root / "data"
    data.mkdir()
    manifest = write(data / "train.csv", [{k: v for k, v in r.items() if k != "image"} for r in rows(data, 60)])
    return train_on_manifest(root, manifest, ["caption", "tabular"], {"colour": "label", "y": "regression"},
                             '  tabular: {columns: ["a:b"]}', ("trainer.test=false",)), data


def _new_rows(folder: Path) -> Path:
    """New rows: words the training rows never had, an empty caption, an empty number, columns reordered."""
    new = [{k: v for k, v in r.items() if k != "image"} for r in rows(folder, 9, seed=4, targets=False)]
    new[1]["caption"] = "an unheard-of purple word"
    new[2]["caption"] = ""
    new[3]["a"] = ""
    return write(folder / "new.csv", [{"b": r["b"], "key": r["key"], "a": r["a"], "caption": r["caption"]}
                                      for r in new])


def _floats(table: list[dict[str, str]]) -> dict[str, list[float]]:
    return {k: [float(r[k]) for r in table] for k in table[0] if k.startswith(("colour/p_", "y"))}


def _same_predictions(got: list[dict[str, str]], want: list[dict[str, str]]) -> None:
    assert [r["key"] for r in got] == [r["key"] for r in want]
    assert [r["colour"] for r in got] == [r["colour"] for r in want]
    a, b = _floats(got), _floats(want)
    assert a.keys() == b.keys() and "y" in a and "colour/p_red" in a
    for k in a:
        assert a[k] == pytest.approx(b[k], abs=1e-6), k


def _edited(ckpt: Path, out: Path, edit: Any) -> Path:
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    edit(state)
    torch.save(state, out)
    return out


def test_checkpoint_stores_the_schema_as_plain_data(text_numbers: tuple[Path, Path]) -> None:
    state = torch.load(text_numbers[0], map_location="cpu", weights_only=True)
    schema = state["data_schema"]
    assert json.loads(json.dumps(schema)) == schema  # plain data: lists, mappings, text, numbers
    assert schema["modalities"]["tabular"] == {"shape": [2], "kind": "vector", "vocab_size": None, "info": {}}
    assert schema["state"]["modalities.tabular"]["columns"] == ["a", "b"]  # the range as expanded in training
    words = schema["state"]["modalities.caption"]["words"]
    assert set(words) == {"a", "thing", *CLASSES} and schema["modalities"]["caption"]["vocab_size"] == len(words) + 2
    assert schema["tasks"] == {"colour": {"kind": "multiclass", "dim": 3}, "y": {"kind": "regression", "dim": 1}}
    assert schema["state"]["tasks.colour"] == {"classes": sorted(CLASSES)}
    assert schema["learned"]["modalities.caption"]["vocabulary"].startswith(f"{len(words)} words, sha256 ")


def test_predicts_from_the_checkpoint_alone(text_numbers: tuple[Path, Path], tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    """The training manifest and its files moved away: the same predictions, in process and from the CLI."""
    ckpt, data = text_numbers
    manifest = _new_rows(tmp_path)
    before = _read(predict(_config(ckpt, manifest, tmp_path / "before.csv", id_column="key")))
    old = _edited(ckpt, tmp_path / "old.pt", lambda s: s.pop("data_schema"))
    data.rename(data.with_name("moved"))
    try:
        assert not (data / "train.csv").exists()
        with caplog.at_level("INFO", logger="mtmm_train"):
            alone = _read(predict(_config(ckpt, manifest, tmp_path / "alone.csv", id_column="key", chunk_rows=4)))
        assert not any(r.getMessage().startswith("dataset:") for r in caplog.records)  # no data was built
        done = run_cli([f"checkpoint={ckpt}", f"dataset.manifest={manifest}", "id_column=key",
                        f"output={tmp_path / 'cli.csv'}"], tmp_path, module="mtmm_train.predict",
                       env={"OMP_NUM_THREADS": "1"})
        assert done.returncode == 0, done.stderr[-2000:]
        with pytest.raises(UserError) as e:  # an older checkpoint needs the training data: it really is gone
            predict(_config(old, manifest, tmp_path / "old.csv"))
        assert "train.csv" in str(e.value) and "\n" not in str(e.value)
    finally:
        data.with_name("moved").rename(data)
    _same_predictions(alone, before)
    _same_predictions(_read(tmp_path / "cli.csv"), before)
    assert before[2]["colour"] in CLASSES  # an empty caption: the numbers are enough
    assert float(before[0]["y"]) > 50  # in the column's units


def test_an_older_checkpoint_rebuilds_its_data(text_numbers: tuple[Path, Path], tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """Without ``data_schema`` (an older mtmm-train) the data is rebuilt, with a line saying why; a schema
    without a reader's state (an older dataset cache entry) reads the training rows for that reader."""
    ckpt, _ = text_numbers
    manifest = _new_rows(tmp_path)
    want = _read(predict(_config(ckpt, manifest, tmp_path / "want.csv", id_column="key")))
    old = _edited(ckpt, tmp_path / "old.pt", lambda s: s.pop("data_schema"))
    with caplog.at_level("INFO", logger="mtmm_train"):
        got = _read(predict(_config(old, manifest, tmp_path / "old.csv", id_column="key")))
    _same_predictions(got, want)
    assert any("holds no data schema" in r.getMessage() and "training manifest" in r.getMessage()
               for r in caplog.records)
    caplog.clear()
    partial = _edited(ckpt, tmp_path / "partial.pt", lambda s: s["data_schema"]["state"].pop("modalities.caption"))
    with caplog.at_level("INFO", logger="mtmm_train"):
        got = _read(predict(_config(partial, manifest, tmp_path / "partial.csv", id_column="key", chunk_rows=3)))
    _same_predictions(got, want)
    assert any("no state of the reader(s) of caption" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda s: s["data_schema"]["modalities"]["caption"].update(vocab_size=99),
     "vocab_size was"),  # the schema no longer matches the fingerprint
    (lambda s: (s["data_schema"]["modalities"]["caption"].update(vocab_size=99), s.pop("data_fingerprint")),
     "does not fit the data_schema and config stored in it"),  # nor the weights
    (lambda s: s["data_schema"].update(version=99), "its data_schema has version 99"),
    (lambda s: s["data_schema"]["tasks"]["y"].pop("dim"), "its data_schema lacks the entry 'dim'"),
    (lambda s: s["data_schema"]["state"]["modalities.tabular"].update(mean=[0.0]),
     "dataset.modalities.tabular: the stored state of this numeric reader has 1 'mean' values for 2 columns"),
])
def test_a_schema_that_does_not_fit_is_one_line(text_numbers: tuple[Path, Path], tmp_path: Path, edit: Any,
                                                 message: str) -> None:
    bad = _edited(text_numbers[0], tmp_path / "bad.pt", edit)
    with pytest.raises(UserError) as e:
        predict(_config(bad, _new_rows(tmp_path), tmp_path / "p.csv"))
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


def _table() -> dict[str, list[Any]]:
    return {"text": ["The red fox", "a red, red hen!", "", "blue fox", "green ideas sleep", "red"],
            "x1": ["1.5", "2", "", "7.25", "3", "-1"], "x2": ["0.1", "0.2", "0.4", "", "1e3", "5"],
            "x3": ["9", "9", "9", "9", "9", "9"],
            "label": ["b", "a", "c", "", "a", "b"], "yes": ["no", "yes", "yes", "no", "", "no"],
            "tags": ["p|q", "[]", "q", "", "r", "p"], "y": ["1.5", "2.5", "", "10", "4", "0.5"]}


@pytest.mark.parametrize("reader", [
    TextReader("text", max_length=4, min_count=1), TextReader("text", max_vocab=2, lowercase=False),
    NumericReader("x", columns=["x1", "x2"]), ClassLabel("label"), BinaryLabel("yes", positive="no"),
    MultiLabel("tags"), NumericTarget("y", log=True),
], ids=repr)
def test_state_applied_to_the_training_rows_equals_state_learned(reader: Reader, tmp_path: Path) -> None:
    """``read_with`` the stored state (through JSON, as plain data) gives, bit for bit, what ``read`` learned,
    and learns nothing: the same rows read as new rows only (no training row in the split) still match."""
    table = _table()
    split = torch.tensor([0, 0, 0, 0, 1, 2])
    learned = reader.read(table, ReadContext(tmp_path, split, unseen_classes="ignore"))
    state = json.loads(json.dumps(learned.state))
    assert learned.state
    applied = reader.read_with(table, ReadContext(tmp_path, torch.full((6,), 2), unseen_classes="ignore"), state)
    assert torch.equal(applied.values, learned.values) and applied.values.dtype == learned.values.dtype
    assert torch.equal(applied.present, learned.present)
    assert (applied.spec, applied.learned, applied.state) == (learned.spec, learned.learned, learned.state)
    training = {k: v[:4] for k, v in table.items()}  # the training rows alone, read with the state
    alone = reader.read_with(training, ReadContext(tmp_path, torch.full((4,), 2), unseen_classes="ignore"), state)
    assert torch.equal(alone.values, learned.values[:4])


def test_stored_columns_are_not_expanded_again(tmp_path: Path) -> None:
    """A numeric reader with a glob reads the columns it was trained on, even where the new rows have more."""
    table = _table()
    reader = NumericReader("x", columns=["x*"])
    learned = reader.read({k: table[k] for k in ("x1", "x2")}, ReadContext(tmp_path, torch.zeros(6, dtype=torch.long)))
    assert learned.state["columns"] == ["x1", "x2"]
    applied = reader.read_with(table, ReadContext(tmp_path, torch.full((6,), 2)), learned.state)  # x3 matches too
    assert applied.spec.shape == (2,) and torch.equal(applied.values, learned.values)
    with pytest.raises(ComponentError, match="lack the column"):
        reader.read_with({"x1": table["x1"]}, ReadContext(tmp_path, torch.full((6,), 2)), learned.state)
    with pytest.raises(ComponentError, match="cannot read with a stored state"):  # a reader that keeps none
        Reader.read_with(reader, table, ReadContext(tmp_path, torch.full((6,), 2)), {"words": ["a"]})


def test_the_dataset_cache_keeps_the_readers_state(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A run whose data comes from the cache stores the same state as one that read the manifest; an entry
    written before readers kept their state loads without it (mtmm-predict then reads the training rows)."""
    from mtmm_train.data.files import files

    table = [{k: v for k, v in r.items() if k != "image"} for r in rows(tmp_path, 12)]
    manifest = write(tmp_path / "m.csv", table)
    kw = {"modalities": {"caption": {"_target_": "mtmm_train.data.readers.TextReader"},
                         "tabular": {"_target_": "mtmm_train.data.readers.NumericReader", "columns": ["a", "b"]}},
          "tasks": {"colour": {"_target_": "mtmm_train.data.readers.ClassLabel"}},
          "split_column": "fold", "cache_dir": str(tmp_path / "cache"), "num_workers": 0}
    decoded = files(str(manifest), **kw)
    with caplog.at_level("INFO", logger="mtmm_train"):
        cached = files(str(manifest), **kw)
    assert any("from the cache" in r.getMessage() for r in caplog.records)
    entry = next((tmp_path / "cache" / "files").glob("*.pt"))
    assert decoded.state["modalities.caption"]["words"] and cached.state == decoded.state
    assert cached.learned == decoded.learned
    payload = torch.load(entry, weights_only=True)
    payload.pop("state")  # as an entry written before readers kept their state
    torch.save(payload, entry)
    older = files(str(manifest), **kw)
    assert older.state == {} and older.learned == decoded.learned
