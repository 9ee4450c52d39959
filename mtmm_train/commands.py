"""The ``key=value`` command lines of ``mtmm-predict`` and ``mtmm-export``: settings onto a dataclass,
and the one-line errors and exit statuses every mtmm-train command shares (2: bad input, 1: a write failed)."""

from __future__ import annotations

import logging
import sys
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
            raise UserError(f"unknown setting '{key}'; the settings are {', '.join(settings)}") from None
        raise UserError(f"{key}: {first}") from None


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
