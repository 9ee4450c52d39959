"""Read a manifest (CSV, Parquet or JSONL, one row per sample) into columns of Python values."""

from __future__ import annotations

import codecs
import csv
import itertools
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mtmm_train.data.optional import require
from mtmm_train.errors import UserError, check

__all__ = ["DELIMITERS", "FORMATS", "Table", "check_manifest_path", "delimiter_hint", "is_empty", "manifest_format",
           "read_manifest"]

FORMATS = ("csv", "parquet", "jsonl")
SUFFIXES = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl",
            ".ndjson": "jsonl"}
DELIMITERS = (",", ";", "\t", "|")  # what dataset.delimiter=auto chooses from
DELIMITER_NAMES = {"tab": "\t", "\\t": "\t"}  # dataset.delimiter=tab (or '\t' as typed on a command line)
SNIFF_LINES = 50  # lines csv.Sniffer looks at

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


def check_manifest_path(path: Path, given: Any = None) -> None:
    """``dataset.manifest`` must name an existing file (a folder gets its own message, with a file in it).

    Args:
        path: the resolved path.
        given: the setting as written, for the message (default: ``path``).
    """
    given = path if given is None else given
    if path.is_dir():
        found = sorted(p.name for p in path.iterdir() if p.suffix.lower() in SUFFIXES and p.is_file())
        raise UserError(f"dataset.manifest '{given}' is a directory; give a file, e.g. dataset.manifest="
                        f"{path / (found[0] if found else 'manifest.csv')}")
    check(path.is_file(), f"dataset.manifest '{given}' does not exist; point it to a CSV, Parquet or JSONL file")


def read_manifest(path: Path, format: str = "auto", delimiter: str = "auto", encoding: str = "utf-8") -> Table:
    """Read every row of the manifest at ``path``.

    Args:
        path: the manifest file.
        format: ``auto`` (from the suffix), ``csv``, ``parquet`` or ``jsonl``.
        delimiter: of a CSV: ``auto`` (``csv.Sniffer`` among ``, ; tab |``; ``,`` when it cannot
            tell), or the character (``tab`` for a tab).
        encoding: of a CSV or JSONL file (any Python codec name); a UTF-8 byte-order mark is skipped.

    Returns:
        The columns, each a list with one value per row.

    Raises:
        UserError: the file is missing, malformed, not in ``encoding``, or has no rows.
    """
    check_manifest_path(path)
    fmt = manifest_format(path, format)
    codec = _codec(encoding)
    sep = _delimiter(delimiter)
    try:
        if fmt == "csv":
            table = _read_csv(path, sep, codec)
        elif fmt == "jsonl":
            table = _read_jsonl(path, codec)
        else:
            table = _read_parquet(path)
    except UnicodeDecodeError as e:
        raise _decode_error(path, codec, encoding, e) from None
    rows = len(next(iter(table.values()))) if table else 0
    check(rows > 0, f"dataset.manifest '{path}' has no rows; it needs a header and one row per sample")
    return table


def _codec(encoding: str) -> str:
    """The codec to read with: ``dataset.encoding`` checked; UTF-8 as ``utf-8-sig`` (a byte-order mark is skipped)."""
    try:
        name = codecs.lookup(str(encoding)).name
    except LookupError:
        raise UserError(f"dataset.encoding is '{encoding}', which is not a text encoding Python knows; e.g. "
                        "dataset.encoding=utf-8, latin-1 or cp1252") from None
    return "utf-8-sig" if name == "utf-8" else str(encoding)


def _delimiter(delimiter: str) -> str | None:
    """``dataset.delimiter`` checked: one character, or None for ``auto``."""
    text = str(delimiter)
    if text == "auto":
        return None
    text = DELIMITER_NAMES.get(text.lower(), text)
    check(len(text) == 1 and text not in "\"\r\n", f"dataset.delimiter must be auto or one character "
          f"(e.g. ',', ';', '|' or tab), found {delimiter!r}")
    return text


def _decode_error(path: Path, codec: str, encoding: str, error: UnicodeDecodeError) -> UserError:
    """Name the file, the line and the byte that ``encoding`` cannot decode (the reader decodes in chunks,
    so the line is found again in the raw bytes)."""
    raw = path.read_bytes()
    try:
        raw.decode(codec)
        where, byte = 0, error.object[error.start:error.start + 1]
    except UnicodeDecodeError as e:
        where, byte = e.start, raw[e.start:e.start + 1]
    line = raw.count(b"\n", 0, where) + 1
    return UserError(f"dataset.manifest '{path}' line {line} is not {encoding} text (byte 0x{byte.hex()}); set the "
                     "file's encoding, e.g. dataset.encoding=latin-1 (or cp1252), or save it as UTF-8")


def sniff_delimiter(path: Path, codec: str) -> str:
    """The delimiter of a CSV file: what ``csv.Sniffer`` finds among :data:`DELIMITERS` in the first lines,
    unless another one splits the header into more columns; ``,`` when nothing splits it."""
    with path.open(newline="", encoding=codec) as f:
        sample = "".join(itertools.islice(f, SNIFF_LINES))
    if not sample.strip():
        return ","
    header = sample.splitlines()[0]
    fields = {d: len(next(csv.reader([header], delimiter=d), [])) for d in DELIMITERS}
    try:
        sniffed = csv.Sniffer().sniff(sample, delimiters="".join(DELIMITERS)).delimiter
    except csv.Error:
        sniffed = None
    most = max(DELIMITERS, key=lambda d: fields[d])  # ties: the first, "," before the others
    if sniffed in fields and fields[sniffed] >= fields[most]:
        return sniffed
    return most if fields[most] > 1 else ","


def delimiter_hint(columns: list[str], wanted: list[str]) -> str:
    """``; the header looks separated by ';' ...`` when a column name, split at another delimiter, holds
    a column that was looked for (``a;b;photo``); else ``""``."""
    for name in columns:
        for d in DELIMITERS:
            if set(wanted) & {p.strip() for p in str(name).split(d)}:
                # the override quoted for the shell (; would end the command)
                shown = "tab" if d == "\t" else f"'{d}'"
                setting = "dataset.delimiter=tab" if d == "\t" else f"\"dataset.delimiter='{d}'\""
                return f"; the header looks separated by {shown} (column '{name}'): set {setting}"
    return ""


def csv_rows(path: Path, sep: str, codec: str = "utf-8-sig") -> Iterator[list[str]]:
    """The header of a CSV manifest (checked), then each non-blank row, one at a time.

    Raises:
        UserError: an empty file, a bad header, a row with another number of fields than the header, or
            a line the csv module cannot read; each names the file and the line.
    """
    shown = "tab" if sep == "\t" else repr(sep)
    with path.open(newline="", encoding=codec) as f:
        reader = csv.reader(f, delimiter=sep)
        try:
            header = next(reader, None)
            check(bool(header), f"dataset.manifest '{path}' is empty; it needs a header row with the column names")
            _check_header(path, header)
            yield header
            for row in reader:
                if not row:  # blank line
                    continue
                if len(row) != len(header):
                    raise UserError(f"dataset.manifest '{path}' line {reader.line_num} has {len(row)} fields, the "
                                    f"header has {len(header)} (delimiter {shown}); quote cells that contain the "
                                    "delimiter, or set dataset.delimiter")
                yield row
        except csv.Error as e:
            raise UserError(f"dataset.manifest '{path}' line {reader.line_num + 1} cannot be read as CSV ({e}); fix "
                            "the line, or check dataset.encoding and dataset.delimiter") from None


def _read_csv(path: Path, delimiter: str | None, codec: str = "utf-8-sig") -> Table:
    rows = csv_rows(path, delimiter or sniff_delimiter(path, codec), codec)
    header = next(rows)
    table: Table = {name: [] for name in header}
    for row in rows:
        for name, value in zip(header, row, strict=True):
            table[name].append(value)
    return table


def jsonl_rows(path: Path, codec: str = "utf-8-sig") -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` of each non-blank line of a JSONL manifest, one at a time.

    Raises:
        UserError: a line that is not a JSON object, naming the file and the line.
    """
    with path.open(encoding=codec) as f:
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
            yield line_num, row


def _read_jsonl(path: Path, codec: str = "utf-8-sig") -> Table:
    rows = [row for _, row in jsonl_rows(path, codec)]
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
