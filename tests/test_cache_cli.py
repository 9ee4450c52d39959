"""``mtmm-cache`` (mtmm_train/cache_cli.py): list and prune real data and feature cache entries.

The entries are made once per module by the cache code itself (a 12-row manifest through the dataset cache,
a tiny run with a frozen image encoder through the feature cache) and copied into each test's folder.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
import time
from pathlib import Path

import pytest
from conftest import TINY, compose_cfg, run_cli

from mtmm_train.cache_cli import ListConfig, PruneConfig, list_entries, parse_age, parse_size, prune
from mtmm_train.data.files import files
from mtmm_train.errors import UserError
from mtmm_train.recipe import TrainRecipe

pytestmark = pytest.mark.usefixtures("one_thread")

DAY = 86400.0


def write_manifest(root: Path) -> Path:
    """A 12-row manifest of one numeric column and a label (no media files: decoding is instant)."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / "manifest.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["a", "label", "fold"])
        for i in range(12):
            w.writerow([i * 0.5, "xyz"[i % 3], ("train", "train", "val", "test")[i % 4]])
    return path


def load_data(manifest: Path, cache: Path) -> None:
    """Read the manifest through the dataset cache (an entry under ``cache/files/``)."""
    files(str(manifest), {"tabular": {"_target_": "mtmm_train.data.readers.numeric.NumericReader", "columns": ["a"]}},
          {"label": {"_target_": "mtmm_train.data.readers.label.ClassLabel"}}, split_column="fold", cache=True,
          cache_dir=str(cache), num_workers=0)


def cache_features(cache: Path, run_dir: Path) -> TrainRecipe:
    """Set up a tiny run whose image encoder is frozen: its features go to ``cache/features/``."""
    cfg = compose_cfg(TINY + ["++model.encoders.image.freeze=true", "model.encoders.image.batch_norm=false",
                              f"model.feature_cache_dir={cache}", "logger.tensorboard=false"])
    recipe = TrainRecipe(cfg, run_dir)
    recipe.setup()
    assert recipe.model.precomputed == {"image"}
    return recipe


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A cache folder with one data entry and one feature entry, and the manifest of the data entry."""
    root = tmp_path_factory.mktemp("template")
    manifest = write_manifest(root / "data")
    load_data(manifest, root / "cache")
    cache_features(root / "cache", root / "run")
    return root / "cache", manifest


@pytest.fixture
def cache(tmp_path: Path, template: tuple[Path, Path]) -> Path:
    """A fresh copy of the template cache."""
    shutil.copytree(template[0], tmp_path / "cache")
    return tmp_path / "cache"


def data_entry(cache: Path) -> Path:
    (entry,) = (cache / "files").glob("manifest-*.pt")
    return entry


def feature_entry(cache: Path) -> Path:
    (entry,) = [p for p in (cache / "features").iterdir() if p.is_dir()]
    return entry


def age(path: Path, days: float) -> None:
    """Set the modification time of ``path`` (and of a folder's files) to ``days`` ago."""
    t = time.time() - days * DAY
    for p in [path, *(path.iterdir() if path.is_dir() else [])]:
        os.utime(p, (t, t))


def test_list_shows_each_entry_its_size_and_the_total(cache: Path, capsys: pytest.CaptureFixture) -> None:
    entries = list_entries(ListConfig(dir=str(cache)))
    out = capsys.readouterr().out
    assert sorted(e.kind for e in entries) == ["data", "features"]
    data = next(e for e in entries if e.kind == "data")
    features = next(e for e in entries if e.kind == "features")
    assert data.path == data_entry(cache) and data.size >= data.path.stat().st_size > 0
    npy = sum(p.stat().st_size for p in feature_entry(cache).glob("*.npy"))
    assert features.path == feature_entry(cache) and features.size >= npy > 0
    assert data.what.startswith("manifest 'manifest': tabular 1; tasks label; rows train 6, val 3, test 3"), data.what
    # The feature entry's description (feature-info/<name>.json): modality, encoder, pooled width, precision.
    assert features.what == "image: CNNEncoder, pooled 64, precision 32; rows train 256, val 128, test 64", \
        features.what
    assert (cache / "feature-info" / f"{features.path.name}.json").is_file()
    assert "total in" in out and "2 entries" in out and "data: 1" in out and "features: 1" in out
    assert str(data.path.relative_to(cache)) in out and data.what in out


def test_list_says_unknown_without_metadata(cache: Path) -> None:
    (cache / "feature-info" / f"{feature_entry(cache).name}.json").unlink()
    data_entry(cache).write_bytes(b"not a torch file")
    entries = {e.kind: e for e in list_entries(ListConfig(dir=str(cache)))}
    assert entries["data"].what == "unknown"
    assert entries["features"].what.startswith("image: encoder unknown; test 64x64"), entries["features"].what


def test_prune_by_age_deletes_only_old_entries_and_a_later_run_rebuilds(cache: Path, template: tuple[Path, Path]
                                                                        ) -> None:
    entry = data_entry(cache)
    age(entry, 40)
    gone = prune(PruneConfig(dir=str(cache), older_than="30d"))
    assert [e.path for e in gone] == [entry] and not entry.exists()
    assert feature_entry(cache).is_dir()  # used just now
    load_data(template[1], cache)  # a later run decodes again and writes the same entry
    assert entry.is_file()


def test_a_hit_counts_as_use(cache: Path, template: tuple[Path, Path]) -> None:
    entry = data_entry(cache)
    age(entry, 40)
    load_data(template[1], cache)  # a hit: the entry's "last used" is now
    assert time.time() - entry.stat().st_mtime < DAY
    assert prune(PruneConfig(dir=str(cache), older_than="30d")) == [] and entry.is_file()


def test_prune_by_size_deletes_the_least_recently_used(cache: Path) -> None:
    data, features = data_entry(cache), feature_entry(cache)
    age(features, 2)
    age(data, 1)
    info = cache / "feature-info" / f"{features.name}.json"
    everything = {e.kind: e.size for e in list_entries(ListConfig(dir=str(cache)))}
    gone = prune(PruneConfig(dir=str(cache), max_size=str(everything["data"]), kind="all"))
    assert [e.kind for e in gone] == ["features"]
    assert not features.exists() and not info.exists() and data.is_file()
    # Within the limit now: nothing more goes.
    assert prune(PruneConfig(dir=str(cache), max_size=str(everything["data"]))) == []
    # kind limits what is considered (and counted).
    assert prune(PruneConfig(dir=str(cache), max_size="0", kind="features")) == [] and data.is_file()


def test_dry_run_deletes_nothing(cache: Path, capsys: pytest.CaptureFixture) -> None:
    before = sorted(str(p) for p in cache.rglob("*"))
    gone = prune(PruneConfig(dir=str(cache), older_than="0s", dry_run=True))
    assert len(gone) == 2
    assert sorted(str(p) for p in cache.rglob("*")) == before
    out = capsys.readouterr().out
    assert out.count("would delete") == 2 and "would free" in out


def test_strangers_survive_and_are_named(cache: Path, caplog: pytest.LogCaptureFixture) -> None:
    (cache / "notes.txt").write_text("mine")
    (cache / "files" / "weights.pt").write_bytes(b"mine")  # no key in its name
    lookalike = cache / "features" / "image-0123456789abcdef0123"
    lookalike.mkdir()
    (lookalike / "train.npy").write_bytes(b"x")
    (lookalike / "README").write_text("mine")  # not only .npy files: not an entry
    (cache / "feature-info" / "notes.txt").write_text("mine")
    with caplog.at_level(logging.INFO, logger="mtmm_train"):
        gone = prune(PruneConfig(dir=str(cache), older_than="0s"))
    assert sorted(e.kind for e in gone) == ["data", "features"]
    assert (cache / "notes.txt").read_text() == "mine" and (cache / "files" / "weights.pt").is_file()
    assert (lookalike / "README").is_file() and (lookalike / "train.npy").is_file()
    assert (cache / "feature-info" / "notes.txt").is_file() and not any((cache / "feature-info").glob("*.json"))
    line = next(r.getMessage() for r in caplog.records if "left alone" in r.getMessage())
    for name in ("notes.txt", "files/weights.pt", "features/image-0123456789abcdef0123", "feature-info/notes.txt"):
        assert name in line, line


def test_an_entry_being_written_or_read_is_kept(cache: Path) -> None:
    features = feature_entry(cache)
    temp = features / ".val.npy.k2j4h5x_.tmp"  # write_features' temporary file: a write in progress
    temp.write_bytes(b"partial")
    data = data_entry(cache)
    age(features, 40)
    age(data, 40)
    entries = {e.kind: e for e in list_entries(ListConfig(dir=str(cache)))}
    assert entries["features"].busy == "being written"
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("no /proc: open files cannot be seen")
    with data.open("rb"):  # a run reading it
        assert {e.kind: e for e in list_entries(ListConfig(dir=str(cache)))}["data"].busy == \
            "in use by a running process"
        assert prune(PruneConfig(dir=str(cache), older_than="30d")) == []
    assert features.is_dir() and temp.is_file() and data.is_file()
    temp.unlink()  # the write ended (a change in the folder: "used" now)
    age(features, 40)
    assert sorted(e.kind for e in prune(PruneConfig(dir=str(cache), older_than="30d"))) == ["data", "features"]


def test_a_pruned_feature_entry_is_computed_again(cache: Path, tmp_path: Path) -> None:
    name = feature_entry(cache).name
    assert [e.kind for e in prune(PruneConfig(dir=str(cache), older_than="0s", kind="features"))] == ["features"]
    assert not (cache / "features" / name).exists()
    cache_features(cache, tmp_path / "again")
    assert feature_entry(cache).name == name  # the same key: the same entry, with its description
    assert (cache / "feature-info" / f"{name}.json").is_file()


def test_sizes_and_ages_parse_and_bad_values_fail() -> None:
    assert parse_size("50GB") == 50 * 10**9 and parse_size("1.5GiB") == 3 * 2**29 and parse_size("100") == 100
    assert parse_age("30d") == 30 * DAY and parse_age("12h") == 12 * 3600 and parse_age("2w") == 14 * DAY
    with pytest.raises(UserError, match="older_than must be a duration:.* found 'soon'; e.g. older_than=30d"):
        parse_age("soon")
    with pytest.raises(UserError, match="max_size must be a size:.* found 'lots'"):
        parse_size("lots")
    with pytest.raises(UserError, match="needs older_than and/or max_size"):
        prune(PruneConfig())
    with pytest.raises(UserError, match="kind must be one of all, data, features, found 'models'"):
        prune(PruneConfig(kind="models", older_than="1d"))


def test_the_command_line(cache: Path, tmp_path: Path) -> None:
    proc = run_cli(["list", f"dir={cache}"], tmp_path, module="mtmm_train.cache_cli")
    assert proc.returncode == 0, proc.stderr
    assert "manifest 'manifest'" in proc.stdout and "2 entries" in proc.stdout
    proc = run_cli(["prune", f"dir={cache}", "older_than=soon"], tmp_path, module="mtmm_train.cache_cli")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("mtmm-cache: error: older_than must be a duration"), \
        proc.stderr
    proc = run_cli(["tidy"], tmp_path, module="mtmm_train.cache_cli")
    assert proc.returncode == 2 and "the first word must be list or prune, found 'tidy'" in proc.stderr
    assert data_entry(cache).is_file() and feature_entry(cache).is_dir()
