"""``mtmm-cache``: see what the data and feature caches hold, and prune them.

    mtmm-cache list [dir=~/.cache/mtmm-train] [kind=all|data|features]
    mtmm-cache prune older_than=30d max_size=50GB [dry_run=true] [kind=all|data|features] [dir=...]

The cache folder (``dir``; default ``$MTMM_CACHE_DIR``, else ``~/.cache/mtmm-train``) holds two caches,
and nothing in it is ever deleted by a run:

- **data** (:mod:`mtmm_train.data.cache`): ``files/<manifest name>-<key>.pt``, one decoded manifest
  dataset each, and ``av_digits/{clips,data}-<key>.pt`` (the built-in spoken digits);
- **features** (:mod:`mtmm_train.feature_cache`): ``features/<modality>-<key>/<split>.npy``, a frozen
  encoder's outputs, described by ``feature-info/<modality>-<key>.json`` (deleted with the entry).

An entry is recognised by that layout alone (the key: 20 hex digits; a feature entry holds nothing but
``.npy`` files); anything else in the folder is left alone and named in one log line. "Last used" is the
entry's modification time: a hit sets it to now (entries written before that was done keep their
creation time). ``prune`` deletes whole entries, least recently used first: every entry last used more
than ``older_than`` ago, then more until the entries of ``kind`` take at most ``max_size``. It never
deletes an entry that a process is using: one with a temporary file of the cache's atomic writes
(``.<name>.<random>.tmp``: being written) or, where ``/proc`` exists (Linux), one that a running process
has open or memory-mapped (a run reading it). The caches take no lock files, so these are the signs of
use; an entry whose modification time moved after the scan (a run just hit it) is kept too.

The command line: ``run_command`` (:mod:`mtmm_train.commands`) parses ``key=value`` settings onto one
dataclass and has no subcommands, so :func:`main` takes the first word (``list`` or ``prune``) and hands
the rest to ``run_command`` with that subcommand's dataclass: the settings, errors and exit statuses
(2: a bad value) are those of every other mtmm-train command.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtmm_train.commands import run_command
from mtmm_train.errors import check

__all__ = ["Entry", "ListConfig", "PruneConfig", "list_entries", "main", "open_paths", "parse_age", "parse_size",
           "prune", "scan"]

log = logging.getLogger("mtmm_train")

NAME = "mtmm-cache"
KINDS = ("all", "data", "features")
KEY = r"[0-9a-f]{20}"
# folder under the cache folder -> the file names of its data entries
DATA_FOLDERS = {"files": re.compile(rf"[^.].*-{KEY}\.pt"), "av_digits": re.compile(rf"(clips|data)-{KEY}\.pt")}
FEATURES = "features"
FEATURE_ENTRY = re.compile(rf"[^.].*-{KEY}")
INFO = "feature-info"  # feature_cache.INFO_FOLDER
FEATURE_INFO = re.compile(rf"([^.].*-{KEY})\.json")
SPLIT_FILE = re.compile(r"[^.][^/]*\.npy")
TEMP = re.compile(r"\.(.+)\.[^.]+\.tmp")  # fileio.atomic_write's and write_features' temporary files
AGE_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
SIZE_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
              "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
SHOWN_STRANGERS = 10


# ---------------------------------------------------------------------- settings
@dataclass
class ListConfig:
    """``mtmm-cache list`` settings.

    Attributes:
        dir: the cache folder; null: ``$MTMM_CACHE_DIR``, else ``~/.cache/mtmm-train``.
        kind: ``all``, ``data`` or ``features``.
    """

    dir: str | None = None
    kind: str = "all"


@dataclass
class PruneConfig:
    """``mtmm-cache prune`` settings (at least one of ``older_than`` and ``max_size``).

    Attributes:
        dir: the cache folder; null: ``$MTMM_CACHE_DIR``, else ``~/.cache/mtmm-train``.
        older_than: delete the entries last used longer ago than this: a number and a unit, ``s``, ``m``,
            ``h``, ``d`` or ``w`` (``30d``).
        max_size: then delete the least recently used until the rest takes at most this (``50GB``, ``500MB``,
            ``1.5TiB``; units of 1000 or, with ``i``, 1024).
        dry_run: only print what would be deleted.
        kind: ``all``, ``data`` or ``features``: the entries considered (and counted for ``max_size``).
    """

    dir: str | None = None
    older_than: str | None = None
    max_size: str | None = None
    dry_run: bool = False
    kind: str = "all"


def parse_age(text: str, key: str = "older_than") -> float:
    """Seconds of a duration such as ``30d``, ``12h``, ``90m``, ``2w``, ``45s``.

    Raises:
        UserError: not a non-negative number followed by one of those units.
    """
    found = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([a-z]+)\s*", str(text).lower())
    check(found is not None and found.group(2) in AGE_UNITS,
          f"{key} must be a duration: a number and a unit (s, m, h, d or w), found '{text}'; e.g. {key}=30d")
    return float(found.group(1)) * AGE_UNITS[found.group(2)]


def parse_size(text: str, key: str = "max_size") -> int:
    """Bytes of a size such as ``50GB``, ``500MB``, ``1.5TiB``, ``1000`` (bytes).

    Raises:
        UserError: not a non-negative number with an optional unit (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB).
    """
    found = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([a-z]*)\s*", str(text).lower())
    check(found is not None and found.group(2) in SIZE_UNITS,
          f"{key} must be a size: a number and a unit (B, KB, MB, GB, TB, or KiB, MiB, GiB, TiB), found '{text}'; "
          f"e.g. {key}=50GB")
    return int(float(found.group(1)) * SIZE_UNITS[found.group(2)])


def cache_root(folder: str | None) -> Path:
    """``folder``, else ``$MTMM_CACHE_DIR``, else ``~/.cache/mtmm-train``; checked not to be a file.

    Raises:
        UserError: the path is a file.
    """
    root = Path(str(folder or os.environ.get("MTMM_CACHE_DIR") or "~/.cache/mtmm-train")).expanduser()
    check(not root.exists() or root.is_dir(), f"dir '{root}' is a file, not a folder; pass dir=<the cache folder> "
          "(dataset.cache_dir, model.feature_cache_dir or MTMM_CACHE_DIR of your runs)")
    return root


def check_kind(kind: str) -> None:
    """Raises UserError unless ``kind`` is one of :data:`KINDS`."""
    check(kind in KINDS, f"kind must be one of {', '.join(KINDS)}, found '{kind}'; e.g. kind=features")


# ---------------------------------------------------------------------- finding the entries
@dataclass
class Entry:
    """One cache entry: what it is, what it takes, when it was last used, whether it is in use.

    Attributes:
        kind: ``data`` or ``features``.
        path: the entry: a ``.pt`` file (data) or a folder of ``.npy`` files (features).
        size: bytes on disk (its description included).
        last_used: modification time (seconds since the epoch).
        what: a description from its metadata (``unknown`` where it has none).
        busy: why it may not be deleted now (being written, open in a process); None: free.
        extra: files deleted with it (a feature entry's description).
    """

    kind: str
    path: Path
    size: int
    last_used: float
    what: str = "unknown"
    busy: str | None = None
    extra: list[Path] = field(default_factory=list)


def disk_size(path: Path) -> int:
    """Bytes a file takes on disk (its blocks; its length where blocks are not reported)."""
    st = path.stat()
    return st.st_blocks * 512 if hasattr(st, "st_blocks") else st.st_size


def last_used(path: Path) -> float:
    """An entry's modification time: the file's, or for a folder the latest of it and its files'."""
    times = [path.stat().st_mtime]
    if path.is_dir():
        times += [p.stat().st_mtime for p in path.iterdir()]
    return max(times)


def scan(root: Path) -> tuple[list[Entry], list[str]]:
    """The entries under the cache folder ``root``, and what else is there (paths relative to ``root``).

    Temporary files of a write in progress are not entries: they mark the entry they belong to busy, and are
    named with the strangers. Entries are not yet checked for open files (:func:`mark_open`), nor described.
    """
    entries: list[Entry] = []
    strangers: list[str] = []
    if not root.is_dir():
        return entries, strangers
    infos: dict[str, Path] = {}
    info_folder = root / INFO
    if info_folder.is_dir() and not info_folder.is_symlink():
        for p in sorted(info_folder.iterdir()):
            found = FEATURE_INFO.fullmatch(p.name)
            if found and p.is_file() and not p.is_symlink():
                infos[found.group(1)] = p
            else:
                strangers.append(str(p.relative_to(root)))
    for child in sorted(root.iterdir()):
        if child.name in DATA_FOLDERS and child.is_dir() and not child.is_symlink():
            entries += scan_data(child, DATA_FOLDERS[child.name], root, strangers)
        elif child.name == FEATURES and child.is_dir() and not child.is_symlink():
            entries += scan_features(child, root, strangers, infos)
        elif child != info_folder or child.is_symlink():
            strangers.append(child.name)
    strangers += [str(p.relative_to(root)) for p in infos.values()]  # descriptions of no entry
    return entries, strangers


def scan_data(folder: Path, pattern: re.Pattern[str], root: Path, strangers: list[str]) -> list[Entry]:
    """The data entries of ``files/`` or ``av_digits/`` (a temporary file marks its entry busy)."""
    found: dict[str, Entry] = {}
    temps: list[str] = []
    for p in sorted(folder.iterdir()):
        if pattern.fullmatch(p.name) and p.is_file() and not p.is_symlink():
            found[p.name] = Entry("data", p, disk_size(p), last_used(p))
        else:
            strangers.append(str(p.relative_to(root)))
            if TEMP.fullmatch(p.name):
                temps.append(p.name)
    for name in temps:
        for entry_name, entry in found.items():
            if name.startswith(f".{entry_name[:200]}."):
                entry.busy = "being written"
    return list(found.values())


def scan_features(folder: Path, root: Path, strangers: list[str], infos: dict[str, Path]) -> list[Entry]:
    """The feature entries of ``features/``: folders of ``.npy`` files (temporary ones mark them busy); each
    takes its description out of ``infos`` (entry name -> ``feature-info/<name>.json``)."""
    entries: dict[str, Entry] = {}
    for p in sorted(folder.iterdir()):
        if not (FEATURE_ENTRY.fullmatch(p.name) and p.is_dir() and not p.is_symlink()):
            strangers.append(str(p.relative_to(root)))
            continue
        files = list(p.iterdir())
        foreign = [f for f in files if f.is_symlink() or not f.is_file()
                   or not (SPLIT_FILE.fullmatch(f.name) or TEMP.fullmatch(f.name))]
        if foreign:  # not only what write_features writes: not ours to delete
            strangers.append(str(p.relative_to(root)))
            continue
        size = disk_size(p) + sum(disk_size(f) for f in files)
        busy = "being written" if any(TEMP.fullmatch(f.name) for f in files) else None
        entries[p.name] = Entry("features", p, size, last_used(p), busy=busy)
    for name, entry in entries.items():
        if name in infos:
            info = infos.pop(name)
            entry.extra.append(info)
            entry.size += disk_size(info)
    return list(entries.values())


def open_paths(root: Path) -> set[str]:
    """The files under ``root`` that a running process (this one included) has open or memory-mapped.

    Read from ``/proc/<pid>/maps`` and ``/proc/<pid>/fd`` (Linux); processes that cannot be read (another
    user's) are skipped; empty where there is no ``/proc``.
    """
    prefix = str(root.resolve()) + os.sep
    found: set[str] = set()
    proc = Path("/proc")
    if not (proc / "self" / "maps").is_file():
        return found
    for pid in os.listdir(proc):
        if not pid.isdigit():
            continue
        try:
            with open(proc / pid / "maps") as f:
                for line in f:
                    parts = line.rstrip("\n").split(maxsplit=5)
                    if len(parts) == 6 and parts[5].startswith(prefix):
                        found.add(parts[5].removesuffix(" (deleted)"))
        except OSError:
            pass
        try:
            fds = os.listdir(proc / pid / "fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(proc / pid / "fd" / fd)
            except OSError:
                continue
            if target.startswith(prefix):
                found.add(target)
    return found


def mark_open(entries: Iterable[Entry], opened: set[str]) -> None:
    """Mark busy every entry that one of ``opened`` (absolute paths) is, or lies in."""
    for entry in entries:
        if entry.busy:
            continue
        path = str(entry.path.resolve())
        if path in opened or any(p.startswith(path + os.sep) for p in opened):
            entry.busy = "in use by a running process"


# ---------------------------------------------------------------------- describing the entries
def shape_text(shape: Iterable[Any]) -> str:
    """``3x224x224``."""
    return "x".join(str(int(s)) for s in shape) or "scalar"


def describe_data(path: Path) -> str:
    """What a data entry holds, from its own contents (memory-mapped: only its small header is read)."""
    import torch

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # cut short, foreign, or a format this version cannot read
        return "unknown"
    source = f"av_digits {path.name.split('-')[0]}" if path.parent.name == "av_digits" else \
        f"manifest '{path.name[:-24]}'"  # <manifest name>-<20 hex>.pt
    try:
        if "waves" in payload:  # av_digits' synthesised clips
            return f"{source}: {len(payload['waves'])} spoken clips"
        modalities = ", ".join(f"{d['name']} {shape_text(d['shape'])}" for d in payload["modalities"])
        tasks = ", ".join(d["name"] for d in payload["tasks"])
        rows = ", ".join(f"{k} {len(next(iter(s['present'].values())))}" for k, s in payload["splits"].items()
                         if s.get("present"))
        return f"{source}: {modalities}; tasks {tasks}; rows {rows}"
    except (KeyError, TypeError, AttributeError, StopIteration):
        return f"{source}: unknown"


def describe_features(entry: Entry) -> str:
    """What a feature entry holds: from its description (``feature-info/<name>.json``), else its name and files."""
    import json

    modality = entry.path.name[:-21]
    info: dict[str, Any] = {}
    for path in entry.extra:
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError):
            info = {}
    if not isinstance(info, dict) or not isinstance(info.get("encoder"), dict):
        shapes = {p.stem: npy_shape(p) for p in sorted(entry.path.glob("*.npy"))}
        known = ", ".join(f"{k} {shape_text(s)}" for k, s in shapes.items() if s is not None)
        return f"{modality}: encoder unknown" + (f"; {known}" if known else "")
    encoder = info["encoder"]
    target = str(encoder.get("_target_", "?")).rsplit(".", 1)[-1]
    name = encoder.get("model_name") or encoder.get("name")
    parts = [f"{target} {name}" if name else target]
    reader = info.get("reader")
    if isinstance(reader, dict) and isinstance(reader.get("size"), list):
        parts.append(f"size {shape_text(reader['size'])}")
    shapes = info.get("shapes") or {}
    train = shapes.get("train")
    if train:
        parts.append(f"{'tokens' if info.get('tokens') else 'pooled'} {shape_text(train[1:])}")
    parts.append(f"precision {info.get('precision', '?')}")
    order = {"train": 0, "val": 1, "test": 2}
    rows = ", ".join(f"{k} {shapes[k][0]}" for k in sorted(shapes, key=lambda k: (order.get(k, 3), k)) if shapes[k])
    return f"{info.get('modality', modality)}: {', '.join(parts)}" + (f"; rows {rows}" if rows else "")


def npy_shape(path: Path) -> tuple[int, ...] | None:
    """The shape in a ``.npy`` file's header (None if unreadable), without mapping its data."""
    import numpy as np

    try:
        with path.open("rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            return tuple(read(f)[0])
    except (OSError, ValueError):
        return None


def find(root: Path, kind: str = "all") -> list[Entry]:
    """The entries of ``kind`` under ``root``, least recently used first, checked for use and described;
    what else is there is named in one log line."""
    entries, strangers = scan(root)
    if strangers:
        shown = ", ".join(strangers[:SHOWN_STRANGERS])
        more = f" and {len(strangers) - SHOWN_STRANGERS} more" if len(strangers) > SHOWN_STRANGERS else ""
        log.info("%s: left alone in %s (not cache entries): %s%s", NAME, root, shown, more)
    entries = [e for e in entries if kind in ("all", e.kind)]
    mark_open(entries, open_paths(root))  # before describing them: that maps the data entries for a moment
    for entry in entries:
        entry.what = describe_data(entry.path) if entry.kind == "data" else describe_features(entry)
    return sorted(entries, key=lambda e: e.last_used)


# ---------------------------------------------------------------------- the commands
def human(size: float) -> str:
    """``12.3 MB`` (units of 1000, as the runs' log lines)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(size) < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def when(t: float) -> str:
    """A time as ``2026-11-30 14:02`` (local)."""
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def row(entry: Entry, root: Path) -> str:
    """One line of ``list``: kind, size, last used, the entry's path under the cache folder, what it is."""
    busy = f" [{entry.busy}]" if entry.busy else ""
    return (f"{entry.kind:<9} {human(entry.size):>9}  {when(entry.last_used)}  {entry.path.relative_to(root)}  "
            f"{entry.what}{busy}")


def totals(entries: list[Entry]) -> str:
    """``3 entries, 5.6 MB (data: 2, 1.2 MB; features: 1, 4.4 MB)``."""
    parts = [f"{k}: {sum(e.kind == k for e in entries)}, {human(sum(e.size for e in entries if e.kind == k))}"
             for k in KINDS[1:] if any(e.kind == k for e in entries)]
    count = f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}"
    return f"{count}, {human(sum(e.size for e in entries))}" + (f" ({'; '.join(parts)})" if parts else "")


def list_entries(cfg: ListConfig) -> list[Entry]:
    """``mtmm-cache list``: print one row per entry (least recently used first) and the total.

    Returns:
        The entries.

    Raises:
        UserError: a bad ``kind`` or ``dir``.
    """
    check_kind(cfg.kind)
    root = cache_root(cfg.dir)
    if not root.is_dir():
        print(f"no cache folder at {root} (nothing cached yet)")
        return []
    entries = find(root, cfg.kind)
    if entries:
        print(f"{'kind':<9} {'size':>9}  {'last used':<16}  entry  what")
    for entry in entries:
        print(row(entry, root))
    print(f"total in {root}: {totals(entries)}")
    return entries


def prune(cfg: PruneConfig) -> list[Entry]:
    """``mtmm-cache prune``: delete whole entries, least recently used first, until the conditions hold.

    Returns:
        The entries deleted (with ``dry_run``: those that would be).

    Raises:
        UserError: a bad setting, or neither ``older_than`` nor ``max_size`` given.
    """
    check_kind(cfg.kind)
    check(cfg.older_than is not None or cfg.max_size is not None,
          f"{NAME} prune needs older_than and/or max_size, e.g. {NAME} prune older_than=30d max_size=50GB "
          "(add dry_run=true to see what would go)")
    age = parse_age(cfg.older_than) if cfg.older_than is not None else None
    limit = parse_size(cfg.max_size) if cfg.max_size is not None else None
    root = cache_root(cfg.dir)
    if not root.is_dir():
        print(f"no cache folder at {root} (nothing cached yet)")
        return []
    entries = find(root, cfg.kind)
    now, total = time.time(), sum(e.size for e in entries)
    gone: list[Entry] = []
    failed: list[str] = []
    for entry in entries:  # least recently used first
        old = age is not None and now - entry.last_used > age
        big = limit is not None and total > limit
        if not (old or big):
            continue
        if entry.busy:
            log.info("%s: keeping %s (%s)", NAME, entry.path.relative_to(root), entry.busy)
            continue
        if not cfg.dry_run:
            try:
                if last_used(entry.path) > entry.last_used:
                    log.info("%s: keeping %s (used since the scan)", NAME, entry.path.relative_to(root))
                    continue
                remove(entry)
            except OSError as e:
                failed.append(f"{entry.path}: {e.strerror or e}")
                continue
        total -= entry.size
        gone.append(entry)
        print(f"{'would delete' if cfg.dry_run else 'deleted'} {row(entry, root)}")
    verb = "would free" if cfg.dry_run else "freed"
    print(f"{verb} {human(sum(e.size for e in gone))} in {len(gone)} entr{'y' if len(gone) == 1 else 'ies'}; "
          f"{'would keep' if cfg.dry_run else 'kept'} {totals([e for e in entries if e not in gone])}")
    if limit is not None and total > limit:
        log.info("%s: the entries still take %s, above max_size=%s: the rest are in use", NAME, human(total),
                 cfg.max_size)
    if failed:
        print(f"{NAME}: error: could not delete {len(failed)} entr{'y' if len(failed) == 1 else 'ies'} "
              f"(first: {failed[0]}); check the folder's permissions", file=sys.stderr)
        sys.exit(1)
    return gone


def remove(entry: Entry) -> None:
    """Delete an entry: its file, or its folder and description."""
    if entry.kind == "features":
        shutil.rmtree(entry.path)
    else:
        entry.path.unlink()
    for extra in entry.extra:
        extra.unlink(missing_ok=True)


COMMANDS = {
    "list": (list_entries, ListConfig, "list dir=~/.cache/mtmm-train"),
    "prune": (prune, PruneConfig, "prune older_than=30d max_size=50GB dry_run=true"),
}
USAGE = (f"usage: {NAME} list [dir=<cache folder>] [kind=all|data|features]\n"
         f"       {NAME} prune [older_than=30d] [max_size=50GB] [dry_run=true|false] [kind=all|data|features] "
         "[dir=<cache folder>]")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: ``mtmm-cache list|prune key=value ...``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    if not args or args[0] not in COMMANDS:
        found = f"'{args[0]}'" if args else "nothing"
        print(f"{NAME}: error: the first word must be list or prune, found {found}; e.g. {NAME} list\n{USAGE}",
              file=sys.stderr)
        sys.exit(2)
    command, schema, example = COMMANDS[args[0]]
    bad = next((a for a in args[1:] if "=" not in a or a.startswith("-")), None)
    if bad is not None:
        print(f"{NAME}: error: '{bad}' is not a setting; write key=value, e.g. {NAME} {example}", file=sys.stderr)
        sys.exit(2)
    run_command(NAME, command, schema, (), example, args[1:])


if __name__ == "__main__":
    main()
