"""A fork server for the commands the tests run (``conftest.run_cli``): ``python -m <module> <args>``
without paying Python's and torch's start-up every time.

Started once per test process (and per thread that runs commands at once), it imports what a command
imports (torch, Hydra, mtmm-train, torchmetrics, TensorBoard, torchvision, ...), which takes 5-9 s of
CPU, then waits for requests. For each it forks a child that does what ``python -m module args`` does
from there on: the working folder and ``sys.path[0]``, the environment, ``sys.argv``, standard streams
written to files, ``runpy.run_module(module, run_name="__main__")``, then Python's own ending (non-daemon
threads joined, atexit handlers, streams flushed) and the same exit status (``SystemExit``'s code, 1 and
the traceback for an uncaught exception, ``-N`` for a signal).

What it cannot give is a fresh interpreter: modules stay imported and state set at import time stays.
So ``conftest.run_cli`` uses it only for mtmm-train's own modules and an environment that differs from
this server's only in variables read at run time, and starts a real process otherwise; anything this
server printed on stderr while importing (a library's warning at import) is written at the start of
every child's stderr, as a fresh process would print it. ``MTMM_TEST_FORK=0`` turns it off.

Protocol, one JSON line per request on stdin::

    {"module": "mtmm_train", "args": [...], "cwd": "...", "env": {...}, "stdout": "path", "stderr": "path"}

answered on stdout by the child's pid on one line, then its exit status on another.
"""

from __future__ import annotations

import atexit
import io
import json
import os
import runpy
import sys
import tempfile
import threading
import traceback

# Modules a command imports, imported once here. Libraries only: importing them has no effect a
# command could see (none reads the environment variables that run_cli lets differ, see conftest).
PRELOAD = [
    "torch", "hydra", "omegaconf", "mtmm_train.cli", "mtmm_train.recipe", "mtmm_train.evaluate", "mtmm_train.predict",
    "mtmm_train.export", "mtmm_train.report", "torchmetrics", "torch.utils.tensorboard", "torchvision", "scipy",
    "matplotlib",
]


def preload() -> bytes:
    """Import :data:`PRELOAD`; return what was printed on stderr meanwhile."""
    with tempfile.TemporaryFile() as captured:
        saved = os.dup(2)
        sys.stderr.flush()
        os.dup2(captured.fileno(), 2)
        try:
            for name in PRELOAD:
                __import__(name)
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        return captured.read()


def child(request: dict, printed: bytes) -> None:
    """In the forked child: become ``python -m module args`` and never return."""
    code = 1
    try:
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
            out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(out, fd)
            os.close(out)
        os.close(null)
        os.write(2, printed)
        # Streams as a fresh interpreter makes them for files: stdout block-buffered, stderr line-buffered.
        sys.stdin = sys.__stdin__ = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
        sys.stdout = sys.__stdout__ = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=False)
        sys.stderr = sys.__stderr__ = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), line_buffering=True,
                                                       errors="backslashreplace")
        sys.path[0] = os.getcwd()  # ``python -m`` puts the working folder first
        threads = os.environ.get("OMP_NUM_THREADS")
        if threads and threads.isdigit():
            import torch

            torch.set_num_threads(int(threads))
        sys.argv = [request["module"], *request["args"]]  # runpy puts the module's file first
        # ``python -m`` has not imported the module it runs as __main__ (it runs a second copy if imported later).
        for name in (request["module"], request["module"] + ".__main__"):
            sys.modules.pop(name, None)
        try:
            runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as e:
            if e.code is None:
                code = 0
            elif isinstance(e.code, int):
                code = e.code
            else:
                print(e.code, file=sys.stderr)
                code = 1
        except BaseException:
            traceback.print_exc()
            code = 1
        # Python's own ending: wait for non-daemon threads, run atexit handlers, flush the streams.
        threading._shutdown()  # type: ignore[attr-defined]
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
    except BaseException:
        try:
            traceback.print_exc()
        except Exception:
            pass
    finally:
        os._exit(code)


def serve() -> None:
    printed = preload()
    requests, replies = sys.stdin.buffer, sys.stdout.buffer
    replies.write(b"ready\n")
    replies.flush()
    for line in requests:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            child(request, printed)
        replies.write(f"{pid}\n".encode())
        replies.flush()
        _, status = os.waitpid(pid, 0)
        replies.write(f"{os.waitstatus_to_exitcode(status)}\n".encode())
        replies.flush()


if __name__ == "__main__":
    serve()
