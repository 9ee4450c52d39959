"""Read a manifest (CSV, Parquet or JSONL, one row per sample) into columns of Python values."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from mtmm_train.data.optional import require
from mtmm_train.errors import UserError, check

__all__ = ["FORMATS", "Table", "is_empty", "manifest_format", "read_manifest"]

FORMATS = ("csv", "parquet", "jsonl")
SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}

Table = dict[str, list[Any]]
"""Column name -> one value per row (strings from CSV; numbers, lists or None from Parquet/JSONL)."""


def is_empty(value: Any) -> bool:
    """True for an empty cell: ``None``, an empty or blank string, or a float NaN."""
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, float):
        return math.isnan(value)
    return False


def manifest_format(path: Path, format: str = "auto") -> str:
    """The manifest's format: ``format`` itself, or (``auto``) guessed from the file name's suffix.

    Raises:
        UserError: an unknown format, or a suffix that says none.
    """
    if format != "auto":
        check(format in FORMATS, f"dataset.format must be auto or one of {', '.join(FORMATS)}, found '{format}'")
        return format
    found = SUFFIXES.get(path.suffix.lower())
    check(found is not None, f"dataset.manifest '{path}' has suffix '{path.suffix}', which names no format; use "
          f"one of {', '.join(SUFFIXES)} or set dataset.format to {', '.join(FORMATS)}")
    return found


def read_manifest(path: Path, format: str = "auto") -> Table:
    """Read every row of the manifest at ``path``.

    Args:
        path: the manifest file.
        format: ``auto`` (from the suffix), ``csv``, ``parquet`` or ``jsonl``.

    Returns:
        The columns, each a list with one value per row.

    Raises:
        UserError: the file is missing, malformed, or has no rows.
    """
    check(path.is_file(), f"dataset.manifest '{path}' does not exist; point it to a CSV, Parquet or JSONL file")
    fmt = manifest_format(path, format)
    table = {"csv": _read_csv, "parquet": _read_parquet, "jsonl": _read_jsonl}[fmt](path)
    rows = len(next(iter(table.values()))) if table else 0
    check(rows > 0, f"dataset.manifest '{path}' has no rows; it needs a header and one row per sample")
    return table


def _read_csv(path: Path) -> Table:
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        check(bool(header), f"dataset.manifest '{path}' is empty; it needs a header row with the column names")
        _check_header(path, header)
        table: Table = {name: [] for name in header}
        for row in reader:
            if not row:  # blank line
                continue
            if len(row) != len(header):
                raise UserError(f"dataset.manifest '{path}' line {reader.line_num} has {len(row)} fields, the header "
                                f"has {len(header)}; quote cells that contain commas")
            for name, value in zip(header, row, strict=True):
                table[name].append(value)
    return table


def _read_jsonl(path: Path) -> Table:
    rows: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as f:
        for line_num, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"dataset.manifest '{path}' line {line_num} is not valid JSON ({e.msg}); write one "
                                "JSON object per line") from None
            check(isinstance(row, dict), f"dataset.manifest '{path}' line {line_num} is a {type(row).__name__}, "
                  "not a JSON object; write one object per line")
            rows.append(row)
    names = list(dict.fromkeys(k for row in rows for k in row))  # every key, in first-seen order
    return {name: [row.get(name) for row in rows] for name in names}


def _read_parquet(path: Path) -> Table:
    pq = require("pyarrow.parquet", "data", "reading a Parquet manifest", package="pyarrow")
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises its own error types for corrupt files
        raise UserError(f"dataset.manifest '{path}' could not be read as Parquet: {' '.join(str(e).split())[:200]}") \
            from None
    _check_header(path, table.column_names)
    return table.to_pydict()


def _check_header(path: Path, names: list[str]) -> None:
    empty = [i for i, n in enumerate(names) if not str(n).strip()]
    position = empty[0] + 1 if empty else 0
    check(not empty, f"dataset.manifest '{path}' has a column without a name (position {position}); name every "
          "column in the header")
    dup = sorted({n for n in names if names.count(n) > 1})
    check(not dup, f"dataset.manifest '{path}' has the column name '{dup[0] if dup else ''}' twice; rename one")
