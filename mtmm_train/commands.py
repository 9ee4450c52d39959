"""The ``key=value`` command lines of ``mtmm-predict``, ``mtmm-export`` and ``mtmm-cache``: settings onto a
dataclass, and the one-line errors and exit statuses every mtmm-train command shares (2: bad input, 1: a
write failed); and, for the Hydra commands (``mtmm-train``, ``mtmm-eval``), how a failure of Hydra's own
writes is told from an error of the command itself (:func:`mark_task_error`, :func:`hydra_write_fault`)."""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import logging
import sys
import typing
from collections.abc import Callable
from dataclasses import fields
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mtmm_train import fileio
from mtmm_train.errors import UserError, check


def parse(args: list[str], schema: type, name: str, required: tuple[str, ...], example: str) -> Any:
    """``key=value`` arguments onto a dataclass schema; one-line errors for unknown keys and bad values.

    Args:
        args: the command line's arguments.
        schema: the settings' dataclass.
        name: the command, for messages.
        required: the settings without a default (``dataset.manifest``).
        example: a command line to show when one is missing.

    Raises:
        UserError: a malformed argument, an unknown setting, a value of the wrong type or a missing one.
    """
    bad = next((a for a in args if "=" not in a or a.startswith("-")), None)
    settings = [f.name for f in fields(schema)]
    check(bad is None, f"'{bad}' is not a setting; write key=value, e.g. {name} checkpoint=best.pt; settings: "
          f"{', '.join(settings)}")
    base = OmegaConf.structured(schema)
    try:
        merged = OmegaConf.merge(base, OmegaConf.from_dotlist(args))
        for key in required:
            parent, _, leaf = key.rpartition(".")
            check(not OmegaConf.is_missing(OmegaConf.select(merged, parent) if parent else merged, leaf),
                  f"{key} is required, e.g. {name} {example}")
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = str(getattr(e, "full_key", None) or getattr(e, "key", None) or "?")
        first = str(e).splitlines()[0]
        if "Key '" in first and "not in" in first:
            raise UserError(unknown_setting(key, schema)) from None
        raise UserError(f"{key}: {first}") from None


def unknown_setting(key: str, schema: type) -> str:
    """The message for a setting ``schema`` does not have: ``unknown setting 'splt'; did you mean 'split'? the
    settings are ...``; for a nested one (``dataset.manifst``), the closest and the settings of its group.

    Args:
        key: the unknown setting, dotted (``dataset.manifst``).
        schema: the settings' dataclass.
    """
    parts, group = key.split("."), schema
    for depth, part in enumerate(parts):
        names = [f.name for f in fields(group)]
        prefix = ".".join(parts[:depth])
        if part not in names:
            close = difflib.get_close_matches(part, names, n=1)
            dotted = [f"{prefix}.{n}" if prefix else n for n in names]
            hint = f"did you mean '{dotted[names.index(close[0])]}'? " if close else ""
            where = f" of {prefix}" if prefix else ""
            return f"unknown setting '{key}'; {hint}the settings{where} are {', '.join(dotted)}"
        inner = typing.get_type_hints(group).get(part)
        if not dataclasses.is_dataclass(inner):
            break
        group = inner
    return f"unknown setting '{key}'; the settings are {', '.join(f.name for f in fields(schema))}"


TASK_ERROR = "_mtmm_task_error"  # the attribute that marks an exception as the command's own, not Hydra's


def mark_task_error(e: BaseException) -> None:
    """Mark ``e`` as raised by the command itself (inside Hydra's task function), so that the entry point
    passes it on as it is rather than reading it as a failure of Hydra's own writes.

    The mark is on the exception, not in a module-level variable: nothing carries over from one call
    (or one job of a sweep, where Hydra raises the first failed job's error after running them all) to
    the next, and the mark survives the pickling of a launcher that runs jobs in other processes.
    """
    with contextlib.suppress(AttributeError, TypeError):  # an exception type without a __dict__: left unmarked
        setattr(e, TASK_ERROR, True)


def hydra_write_fault(e: BaseException) -> OSError | None:
    """The filesystem fault behind ``e`` when Hydra's own writes failed (the run folder, ``.hydra/*.yaml``,
    the job's ``.log``: a full disk, a read-only folder, ...), before or around the command's code; else None
    (``e`` is the command's own error, see :func:`mark_task_error`, or not a filesystem fault)."""
    if getattr(e, TASK_ERROR, False):
        return None
    fault = fileio.os_error_in(e)
    return fault if fault is not None and fault.errno in fileio.FAULT_ERRNOS else None


def hydra_write_failure(e: BaseException) -> str | None:
    """``cannot write <what>: <why>`` when Hydra's own writes failed (:func:`hydra_write_fault`), after
    removing the run folder if this command created it and it holds only Hydra's files; else None.
    The commands' ``main`` end the line with their own remedy."""
    fault = hydra_write_fault(e)
    if fault is None:
        return None
    from mtmm_train import runlock
    from mtmm_train.config import remove_created_run_folder

    folder = runlock.last_folder()
    if folder is not None:
        remove_created_run_folder(folder)  # a folder this command created, with Hydra's files only
    return f"cannot write {fileio.explain(fault, folder)}"


def run_command(name: str, command: Callable[[Any], Any], schema: type, required: tuple[str, ...], example: str,
                argv: list[str] | None = None) -> None:
    """Parse ``argv`` (default: ``sys.argv[1:]``) onto ``schema`` and run ``command`` on it; a
    :class:`UserError` exits with status 2 and a failed write with 1, each as one line ``<name>: error: ...``."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        command(parse(list(sys.argv[1:] if argv is None else argv), schema, name, required, example))
    except UserError as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except fileio.WriteError as e:
        print(f"{name}: error: cannot write {fileio.explain(e)}; make room, or pass output=<another file>",
              file=sys.stderr)
        sys.exit(1)
