"""Import an optional dependency, or fail with one line that says what to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from mtmm_train.errors import UserError

__all__ = ["require"]


def require(module: str, extra: str, purpose: str, package: str | None = None) -> ModuleType:
    """Import ``module``; if it is missing, say which extra of mtmm-train brings it.

    Args:
        module: the module to import (e.g. ``"pyarrow.parquet"``).
        extra: the optional-dependency group of mtmm-train that installs it (e.g. ``"data"``).
        purpose: what needs it, for the message (e.g. ``"reading a Parquet manifest"``).
        package: the name to ``pip install`` when it differs from the module's top level.

    Returns:
        The imported module.

    Raises:
        UserError: the module is not installed.
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        name = package or module.split(".")[0]
        raise UserError(f"{purpose} needs the Python package '{name}', which is not installed; install it with "
                        f"pip install 'mtmm-train[{extra}]' (or pip install {name})") from None
