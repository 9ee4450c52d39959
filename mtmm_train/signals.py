"""Preemption: SIGTERM, SIGINT and SIGUSR2 end the current step instead of killing the run.

The recipe installs :class:`StopOnSignals` around its loop and asks :meth:`StopOnSignals.requested`
after each optimizer step; when a signal came, it writes ``last.pt`` and raises :class:`Preempted`.
"""

from __future__ import annotations

import signal
import threading
from types import TracebackType
from typing import Any


class Preempted(Exception):
    """Training stopped on a signal after writing ``last.pt``; ``trainer.resume=auto`` continues."""


def _signals() -> list[int]:
    return [signal.SIGTERM, signal.SIGINT] + ([signal.SIGUSR2] if hasattr(signal, "SIGUSR2") else [])


class StopOnSignals:
    """A context manager that turns the first SIGTERM/SIGINT/SIGUSR2 into a request to stop.

    The first signal only records itself (:attr:`signum`) and puts the previous handler back,
    so a second signal acts as it would without us (a forced stop). A handler that was installed
    before (submitit's, which requeues the job on SIGUSR2) is handed back by :meth:`previous`,
    for the recipe to call once ``last.pt`` is written. Outside the main thread (where Python
    cannot install handlers) it does nothing.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.handlers: dict[int, Any] = {}

    def __enter__(self) -> StopOnSignals:
        self.signum = None
        if threading.current_thread() is not threading.main_thread():
            return self
        self.handlers = {sig: signal.getsignal(sig) for sig in _signals()}
        for sig in self.handlers:
            signal.signal(sig, self._request_stop)
        return self

    def _request_stop(self, signum: int, frame: object) -> None:
        self.signum = signum
        signal.signal(signum, self.handlers[signum])

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for sig, handler in self.handlers.items():
            signal.signal(sig, handler)
        self.handlers = {}

    @property
    def requested(self) -> bool:
        """A signal arrived since :meth:`__enter__`."""
        return self.signum is not None

    def previous(self) -> Any:
        """The handler that was installed for the received signal before ours (or None)."""
        handler = self.handlers.get(self.signum or signal.SIGTERM)
        return handler if callable(handler) and handler is not signal.default_int_handler else None

    def name(self) -> str:
        """The received signal's name, e.g. ``SIGTERM``."""
        return signal.Signals(self.signum or signal.SIGTERM).name
