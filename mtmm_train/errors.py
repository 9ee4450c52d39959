"""The one exception type for user mistakes (config, data, checkpoints).

The CLI prints it as a single line and exits with status 2, without a traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's config, data or files: the message says key, value found and fix."""


def check(condition: bool, message: str) -> None:
    """Raise :class:`UserError` with ``message`` when ``condition`` is false."""
    if not condition:
        raise UserError(message)
