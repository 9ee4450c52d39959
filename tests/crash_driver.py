"""Fault injection for ``tests/test_crash_safety.py``: run ``mtmm-train`` and ``kill -9`` it at chosen points.

Usage: ``python tests/crash_driver.py ROOT POINT [POINT ...] -- OVERRIDES``

For each point (``<where>:<n>``) a forked child runs the CLI with ``hydra.run.dir=ROOT/<where>-<n>``
and sends itself SIGKILL at the n-th occurrence of ``<where>``:

* ``step``: right after optimizer step n.
* ``write``: halfway through writing the n-th checkpoint's temporary file.
* ``rename``: the n-th checkpoint fully written and fsynced, before its rename.
* ``renamed``: right after the n-th rename, before the folder's fsync.
* ``eval``: at the start of the n-th evaluation.
* ``finish``: at the start of the end-of-run writes (metrics.json, hparams).

It appends one line per point to ``ROOT/fault-points.txt``: the point and how the child ended
(``killed`` or its exit code).
Forking after the imports saves a Python start per point.
"""

from __future__ import annotations

import io
import os
import signal
import sys
import traceback
from pathlib import Path

import torch

from mtmm_train import checkpoint, cli
from mtmm_train.recipe import TrainRecipe


def kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def arm(where: str, n: int) -> None:
    """Patch the code so that the n-th occurrence of ``where`` kills this process."""
    seen = {"count": 0}

    def hit() -> bool:
        seen["count"] += 1
        return seen["count"] == n

    if where == "step":
        step = TrainRecipe.optimizer_step

        def optimizer_step(self: TrainRecipe, skip: bool = False) -> None:
            step(self, skip)
            if hit():
                kill()
        TrainRecipe.optimizer_step = optimizer_step
    elif where == "write":
        save = torch.save

        def half_save(obj: object, f: io.BufferedWriter) -> None:
            if not hit():
                return save(obj, f)
            buffer = io.BytesIO()
            save(obj, buffer)
            data = buffer.getvalue()
            f.write(data[:len(data) // 2])
            f.flush()
            kill()
        checkpoint.torch.save = half_save
    elif where in ("rename", "renamed"):
        replace = os.replace

        def killing_replace(src: str, dst: str) -> None:
            checkpoint_file = str(dst).endswith(".pt")
            if checkpoint_file and where == "rename" and hit():
                kill()
            replace(src, dst)
            if checkpoint_file and where == "renamed" and hit():
                kill()
        checkpoint.os.replace = killing_replace
    elif where in ("eval", "finish"):
        name = "evaluate" if where == "eval" else "finish"
        original = getattr(TrainRecipe, name)

        def killing(self: TrainRecipe, *args: object, **kwargs: object) -> object:
            if hit():
                kill()
            return original(self, *args, **kwargs)
        setattr(TrainRecipe, name, killing)
    else:
        raise SystemExit(f"unknown fault point {where!r}")


def main() -> None:
    split = sys.argv.index("--")
    root, points, overrides = Path(sys.argv[1]), sys.argv[2:split], sys.argv[split + 1:]
    root.mkdir(parents=True, exist_ok=True)
    for point in points:
        where, n = point.split(":")
        pid = os.fork()
        if pid == 0:
            arm(where, int(n))
            sys.argv = ["mtmm-train", *overrides, f"hydra.run.dir={root / f'{where}-{n}'}"]
            code = 1
            try:
                cli.main()
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        ended = "killed" if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL \
            else f"exit {os.waitstatus_to_exitcode(status)}"
        with open(root / "fault-points.txt", "a") as f:  # not stdout: the children's logs go there
            f.write(f"{point} {ended}\n")


if __name__ == "__main__":
    main()
