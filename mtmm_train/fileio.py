"""Every file the project writes, written atomically; and the checks of output folders before a run.

:func:`atomic_write` is the one way files are written (checkpoints, ``metrics.json``, the
``robustness.*`` of ``mtmm-eval``, the ``report.*`` of ``mtmm-report``, dataset caches): a
temporary file in the target's folder (``.<name>.<random>.tmp``), flushed and fsynced, renamed
over the target with ``os.replace``, then the folder fsynced. A crash, a full disk or a
read-only mount at any moment leaves the old file or the new one, never a torn file; on an
error the temporary file is removed (only ``kill -9`` mid-write leaves one, which the next
``trainer.resume`` deletes). A failed write raises :class:`WriteError`, an ``OSError`` that
names the target (not the temporary file), whatever library the bytes went through.

Not atomic by nature, and not written here: TensorBoard's event files and the ``.log`` files
(streams that grow), and Hydra's ``.hydra/*.yaml``.

The ``check_*`` functions look at output folders before any work starts, so that a run does
not train for an hour and then fail to save; they raise :class:`~mtmm_train.errors.UserError`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from mtmm_train.errors import UserError

__all__ = ["FAULT_ERRNOS", "WriteError", "atomic_write", "check_file_slot", "check_folder", "check_run_outputs",
           "check_subfolder", "explain", "fault_in", "os_error_in", "reason", "save_figure", "save_torch",
           "write_bytes", "write_json", "write_text"]

# Errors of the filesystem, not of the program: a one-line message, not a traceback.
FAULT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EACCES, errno.EPERM,
                          errno.ENAMETOOLONG, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ELOOP,
                          errno.EMLINK, errno.EFBIG})


class WriteError(OSError):
    """Writing a file failed (disk full, read-only, no permission, ...); ``filename`` is the target."""


@contextlib.contextmanager
def atomic_write(path: str | Path, text: bool = False) -> Iterator[IO[Any]]:
    """Yield a file to write ``path``'s new content into; it replaces ``path`` when the block ends.

    Args:
        path: the target; its folder is created if missing.
        text: a text file (UTF-8, ``\\n`` line ends) instead of a binary one.

    Raises:
        WriteError: any ``OSError`` on the way, also one a library wrapped in its own exception
            (``torch.save`` turns a full disk into a ``RuntimeError``); the old file is untouched
            and the temporary file removed.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # The name is cut so that a long target name still leaves room for the prefix and suffix.
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:200]}.", suffix=".tmp", dir=path.parent)
        _set_mode(fd, path)
        with os.fdopen(fd, "w" if text else "wb", **({"encoding": "utf-8", "newline": "\n"} if text else {})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        cause = os_error_in(e)
        if cause is None or isinstance(e, WriteError):
            raise
        raise WriteError(cause.errno, cause.strerror or os.strerror(cause.errno or 0), str(path)) from None
    _fsync_folder(path.parent)


def _set_mode(fd: int, path: Path) -> None:
    """The permissions a plain ``open(path, "w")`` gives (``mkstemp`` makes files 0600): the existing
    file's, or 0666 less the umask, so that results stay readable to whom they were before."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        mode = 0o666 & ~_umask()
    with contextlib.suppress(OSError, AttributeError):
        os.fchmod(fd, mode)


def _umask() -> int:
    """The process's umask, read without changing it where Linux tells it (``os.umask`` sets it)."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/self/status") as f:
            return int(next(line for line in f if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable (a folder fsync); filesystems that cannot (EINVAL) are skipped."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise WriteError(e.errno, e.strerror, str(folder)) from None
    finally:
        os.close(fd)


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_write(path) as f:
        f.write(data)


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_write(path, text=True) as f:
        f.write(text)


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    """Write ``obj`` as JSON (NaN and Infinity allowed, as ``json.dumps`` writes them) atomically."""
    write_text(path, json.dumps(obj, indent=indent, allow_nan=True))


def save_torch(obj: Any, path: str | Path) -> None:
    """``torch.save(obj)`` to ``path`` atomically."""
    import torch

    with atomic_write(path) as f:
        torch.save(obj, f)


def save_figure(fig: Any, path: str | Path, **kwargs: Any) -> None:
    """A matplotlib figure's ``savefig`` to ``path`` atomically (the format from the suffix)."""
    path = Path(path)
    with atomic_write(path) as f:
        fig.savefig(f, format=path.suffix.lstrip(".") or "png", **kwargs)


def os_error_in(e: BaseException | None) -> OSError | None:
    """The ``OSError`` that ``e`` is or was raised from (its ``__cause__``/``__context__`` chain)."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError) and e.errno is not None:
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


DISK_FAULTS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})  # never a mistake in the program


def fault_in(e: BaseException) -> OSError | None:
    """The filesystem fault behind ``e``: a :class:`WriteError`, or any ``OSError`` of a full,
    read-only or failing disk (e.g. from TensorBoard's writer), in ``e``'s chain; else None."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, WriteError) or (isinstance(e, OSError) and e.errno in DISK_FAULTS):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the filesystem is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "the operation is not permitted there",
    errno.EIO: "an input/output error of the disk",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EEXIST: "it exists as a file, not a folder",
    errno.EISDIR: "it is a folder",
}


def reason(e: OSError, path: str | Path | None = None) -> str:
    """What went wrong, in words (``the disk is full``), for an ``OSError`` about ``path`` (or its own)."""
    if e.errno == errno.ENAMETOOLONG:
        longest = max(str(path or e.filename or "").split(os.sep), key=len)
        return f"a name in the path has {len(longest)} characters, more than the filesystem allows (usually 255)"
    return REASONS.get(e.errno, (e.strerror or type(e).__name__).lower())


def explain(e: OSError, where: str | Path | None = None) -> str:
    """``'<path>': <why>`` for an ``OSError``, naming its path; without one, ``in '<where>': <why>``."""
    if e.filename is None and where is not None:
        return f"in '{where}': {reason(e)}"
    return f"'{e.filename if e.filename is not None else '?'}': {reason(e)}"


# ---------------------------------------------------------------------- checks before a run
def check_folder(folder: str | Path, key: str, fix: str) -> Path:
    """Create ``folder`` if missing and make sure a file can be written in it.

    Args:
        folder: the output folder.
        key: the setting that names it (``hydra.run.dir``), for the message.
        fix: what to do instead, e.g. ``pass hydra.run.dir=<a writable folder>``.

    Returns:
        The folder.

    Raises:
        UserError: it is a file, a part of its path is a file, its name is too long, or it
            cannot be created or written (read-only, no permission, disk full).
    """
    folder = Path(folder)
    if _kind(folder) == "file":
        raise UserError(f"{key} '{folder}' is a file, not a folder; {fix}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        if e.errno in (errno.EEXIST, errno.ENOTDIR):
            blocker = _file_in(folder)
            if blocker is not None:
                raise UserError(f"{key} '{folder}' cannot be created: '{blocker}' is a file, not a folder; "
                                f"{fix}") from None
        raise UserError(f"{key} '{folder}' cannot be created: {reason(e, folder)}; "
                        f"{fix}") from None
    _probe(folder, key, fix)
    return folder


def check_subfolder(folder: str | Path, what: str, fix: str) -> None:
    """A folder a run will write into later (``checkpoints/``): if it exists, it must be a writable folder.

    Args:
        what: how to name it, e.g. ``the checkpoints folder``.
    """
    folder = Path(folder)
    kind = _kind(folder)
    if kind == "file":
        raise UserError(f"{what} '{folder}' is a file, not a folder; {fix}")
    if kind == "dir":
        _probe(folder, what, fix)


def check_file_slot(path: str | Path, what: str, fix: str) -> None:
    """A file a run will write later (``metrics.json``) must not be a folder."""
    path = Path(path)
    if _kind(path) == "dir":
        raise UserError(f"{what} '{path}' is a folder, so the file cannot be written; {fix}")


def _kind(path: Path) -> str | None:
    """``dir``, ``file`` (anything else that exists), or None: missing or not even statable (a name too long)."""
    try:
        return "dir" if stat.S_ISDIR(os.stat(path).st_mode) else "file"
    except (OSError, ValueError):
        return None


def _file_in(path: Path) -> Path | None:
    """``path`` or the first of its parents that exists as something other than a folder."""
    return next((p for p in [path, *path.parents] if _kind(p) == "file"), None)


def _probe(folder: Path, what: str, fix: str) -> None:
    """Create and delete a temporary file in ``folder`` (the one test that no mount option or ACL fools)."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".mtmm-probe.", suffix=".tmp", dir=folder)
    except OSError as e:
        raise UserError(f"{what} '{folder}' is not writable ({reason(e, folder)}); "
                        f"{fix}") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(tmp)


def check_run_outputs(run_dir: str | Path, tensorboard: bool = True, cache_dir: str | None = None) -> None:
    """Everything a training run writes, checked before it builds anything (rank 0 of torchrun only).

    The run folder itself is checked when it is locked (:mod:`mtmm_train.runlock`); here its
    ``checkpoints/`` and ``tensorboard/`` (each a writable folder if it exists), ``metrics.json``
    and the checkpoint files (not folders), and ``dataset.cache_dir`` (not a file).

    Raises:
        UserError: naming the path and what to do.
    """
    run_dir = Path(run_dir)
    fix = "move it away, or pass another hydra.run.dir"
    check_subfolder(run_dir / "checkpoints", "the checkpoints folder", fix)
    for name in ("best.pt", "last.pt"):
        check_file_slot(run_dir / "checkpoints" / name, "the checkpoint", fix)
    check_file_slot(run_dir / "metrics.json", "the results file", fix)
    if tensorboard:
        check_subfolder(run_dir / "tensorboard", "the TensorBoard folder", f"{fix} (or logger=none)")
    if cache_dir is not None:
        cache = Path(cache_dir).expanduser()
        blocker = _file_in(cache)
        if blocker is not None:
            where = "is a file" if blocker == cache else f"is inside '{blocker}', which is a file"
            raise UserError(f"dataset.cache_dir '{cache_dir}' {where}, not a folder; point dataset.cache_dir "
                            "(or MTMM_CACHE_DIR) at a folder, or pass dataset.cache=false")
