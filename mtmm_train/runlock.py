"""One run per folder: a run (or an evaluation, or a sweep) holds its folder's lock while it uses it.

The lock is ``fcntl.flock`` on ``<folder>/.mtmm.lock``, a file holding the holder's PID, host,
start time and command (for the message a second run prints). The kernel drops a flock when
its process dies, however it dies: a run killed with ``kill -9`` (or by the OOM killer, or a
requeued SLURM job) leaves no lock behind, and the next run in the folder, e.g. with
``trainer.resume=auto``, takes it without any stale-lock guessing. The lock file is deleted
when a run ends; one left by a killed run is reused.

Where it is taken:

* :class:`RunFolderCallback`, a Hydra callback (``hydra.callbacks`` in ``configs/train.yaml``
  and ``mtmm-eval``'s config): at the start of a run, before Hydra creates the folder or writes
  ``.hydra/`` and its log into it, so that a refused second run changes nothing in the first
  run's folder; at the start of a sweep, for the sweep folder.
* :func:`claim`, from ``cli.run`` (re-entrant: the same process holds it already), which also
  covers a job of a sweep in its own folder, and a primary config without the callback.

Under torchrun the ranks share one run folder: rank 0 takes the lock, and all ranks agree on
the outcome (one all-reduce), so every rank stops when it is refused. Locks are not inherited:
a process forked by a run (DataLoader workers) closes its copy, and ``exec`` closes it too
(``O_CLOEXEC``). On NFS, ``flock`` works across machines (Linux maps it to NFS locks); a
crashed machine's lock is released when the server's lease runs out.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import logging
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from mtmm_train import fileio
from mtmm_train.errors import UserError

try:
    import fcntl
except ImportError:  # not a POSIX system: no locks
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_NAME", "FolderRefused", "RunFolderCallback", "RunLock", "acquire", "claim", "claim_folder",
           "last_folder", "release_all"]

log = logging.getLogger("mtmm_train")

LOCK_NAME = ".mtmm.lock"
UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)  # a filesystem without flock


class FolderRefused(BaseException):
    """A folder a run cannot use (held by another run, or not writable), raised by :class:`RunFolderCallback`.

    A ``BaseException``: Hydra turns a callback's ``Exception`` into a warning and goes on. The
    CLIs print it as one line, like a :class:`~mtmm_train.errors.UserError`, and exit with 2.
    """


class RunLock:
    """The lock of one folder, held by this process (re-entrant: :func:`acquire` counts).

    Args:
        folder: the folder.
        fd: the open lock file (-1: the filesystem has no locks; nothing is held).
    """

    def __init__(self, folder: Path, fd: int) -> None:
        self.folder, self.fd, self.count = folder, fd, 1

    @property
    def path(self) -> Path:
        """The lock file."""
        return self.folder / LOCK_NAME

    def release(self) -> None:
        """Give the lock up once; the last release deletes the lock file and unlocks."""
        self.count -= 1
        if self.count > 0:
            return
        _held.pop(_key(self.folder), None)
        if self.fd < 0:
            return
        with contextlib.suppress(OSError):
            if _same_file(self.fd, self.path):  # still ours (deleted while locked: no one else can take it)
                self.path.unlink()
        os.close(self.fd)  # unlocks
        self.fd = -1


_held: dict[str, RunLock] = {}  # realpath of the folder -> its lock, in this process
_last: list[Path] = []  # the folder locked last, for messages about a write without a file name


def last_folder() -> Path | None:
    """The folder this process locked last (a run folder), or None."""
    return _last[-1] if _last else None


def _key(folder: Path) -> str:
    return os.path.realpath(folder)


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _forget_in_child() -> None:
    """After ``fork``: the child (a DataLoader worker) does not keep the parent's locks alive.

    Closing the inherited descriptor does not unlock (the parent's still refers to the lock).
    """
    for lock in _held.values():
        if lock.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(lock.fd)
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


def acquire(folder: str | Path, key: str = "hydra.run.dir", fix: str = "") -> RunLock:
    """Create ``folder`` if needed, check that it is writable, and lock it for this process.

    Args:
        folder: the run (or evaluation, or sweep) folder.
        key: the setting that names it, for messages.
        fix: what to do about an unusable folder (default: ``pass <key>=<a writable folder>``).

    Returns:
        The lock (release it with :meth:`RunLock.release`; the process's end releases it too).

    Raises:
        UserError: another process holds the folder (naming its PID, host and command), or the
            folder cannot be created or written.
    """
    folder = Path(os.path.abspath(folder))
    held = _held.get(_key(folder))
    if held is not None:
        held.count += 1
        return held
    fix = fix or f"pass {key}=<a writable folder>"
    fileio.check_folder(folder, key, fix)
    _last[:] = [folder]
    if fcntl is None:
        lock = RunLock(folder, -1)
        _held[_key(folder)] = lock
        return lock
    path = folder / LOCK_NAME
    for _ in range(100):  # retried only when another run deleted the file between our open and flock
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as e:
            raise UserError(f"{key} '{folder}' is not writable ({fileio.reason(e, path)}); {fix}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in UNSUPPORTED:
                os.close(fd)
                log.warning("%s: this filesystem cannot lock files (%s); nothing stops another run from using "
                            "the folder at the same time", folder, e.strerror)
                lock = RunLock(folder, -1)
                _held[_key(folder)] = lock
                return lock
            holder = _holder(fd)
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise UserError(f"{key} '{folder}' is in use by another run ({holder}); wait for it to end, or pass "
                            f"another {key} (a killed run's lock goes with it)") from None
        if not _same_file(fd, path):  # locked a file that a finishing run deleted meanwhile: try again
            os.close(fd)
            continue
        _write_holder(fd)
        lock = RunLock(folder, fd)
        _held[_key(folder)] = lock
        return lock
    raise UserError(f"{key} '{folder}': could not lock {path} (it keeps being replaced); {fix}")


def _write_holder(fd: int) -> None:
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join([Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python", *sys.argv[1:]])}
    data = (json.dumps(info) + "\n").encode()
    with contextlib.suppress(OSError):  # the lock is what counts; the note is for the message
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)


def _holder(fd: int) -> str:
    """``pid 123 on host h, since <time>: <command>`` from a held lock file (what its holder wrote)."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode(errors="replace") or "{}")
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or "pid" not in info:
        return "its PID is not recorded yet"
    command = str(info.get("command", ""))
    command = command if len(command) <= 100 else command[:97] + "..."
    return f"pid {info['pid']} on host {info.get('host', '?')}, since {info.get('started', '?')}: {command}"


def claim_folder(folder: str | Path, key: str = "hydra.run.dir", fix: str = "",
                 check: Any = None) -> RunLock | None:
    """:func:`acquire` on rank 0 (torchrun) or in the only process, then ``check()`` there; every rank agrees.

    Args:
        check: called on rank 0 with the lock held, e.g. the checks of the run's subfolders.

    Returns:
        The lock on rank 0 (None on the other ranks).

    Raises:
        UserError: on every rank when rank 0 is refused (its message on rank 0).
    """
    from mtmm_train import distributed

    main = distributed.info().is_main
    lock, error = None, None
    if main:
        try:
            lock = acquire(folder, key, fix)
            if check is not None:
                check()
        except UserError as e:
            error = e
            if lock is not None:
                lock.release()
                lock = None
    if distributed.any_true(error is not None):
        raise error or UserError(f"{key} '{folder}' cannot be used; rank 0 says why, and what to do")
    return lock


@contextlib.contextmanager
def claim(folder: str | Path, key: str = "hydra.run.dir", fix: str = "", check: Any = None) -> Iterator[None]:
    """Hold ``folder`` for the block (:func:`claim_folder`); released when the block ends."""
    lock = claim_folder(folder, key, fix, check)
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def release_all() -> None:
    """Release every lock this process holds (the end of a CLI; a process's exit does it anyway)."""
    for lock in list(_held.values()):
        lock.count = 1
        lock.release()


class RunFolderCallback(Callback):
    """Hydra callback: lock (and check) the run folder before Hydra writes into it; the sweep folder for ``-m``.

    Args:
        hint: appended to the fix of an unusable folder (``mtmm-eval``: where its output goes by default).
    """

    def __init__(self, hint: str = "") -> None:
        self.hint = hint
        self.locks: list[RunLock] = []

    def _claim(self, config: DictConfig, key: str) -> None:
        try:
            folder = OmegaConf.select(config, key)
        except Exception as e:  # an interpolation that needs Hydra's runtime: cli.run locks the folder later
            log.debug("cannot resolve %s before the run (%s); the run locks its folder itself", key, e)
            return
        if folder is None:
            return
        fix = f"pass {key}=<a writable folder>{self.hint}"
        try:
            lock = claim_folder(str(folder), key, fix)
        except UserError as e:
            raise FolderRefused(str(e)) from None
        if lock is not None:
            self.locks.append(lock)

    def _release(self) -> None:
        while self.locks:
            self.locks.pop().release()

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._claim(config, "hydra.run.dir")

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._release()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._claim(config, "hydra.sweep.dir")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._release()
