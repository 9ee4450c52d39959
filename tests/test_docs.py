"""The documentation stays true: every documented command composes, links resolve, the README is short.

* Every ``mtmm-train ...`` command line in a fenced code block of README.md or docs/*.md (also
  ``torchrun ... -m mtmm_train ...`` and ``python -m mtmm_train ...``) is composed as
  ``mtmm-train --cfg job`` would compose it, in this process and without training: an unknown
  key, group or option fails the test. A sweep (``-m``, or an Optuna search) is composed once per
  value of each swept key; ``-cd myconf`` finds the files the docs tell the reader to write
  (a ``printf ... > myconf/...`` line, or a YAML block introduced by its ``myconf/...`` path).
* README.md has at most 250 lines.
* No file of the repository refers to a file outside it.
* Every relative link in README.md and docs/*.md points to a file (and heading) that exists.
"""

from __future__ import annotations

import codecs
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep, Override
from hydra.types import RunMode
from omegaconf import OmegaConf

from mtmm_train.config import LoggerConfig, TrainerConfig, check_trainer, typed

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 250

# Placeholders of the docs' commands, and what a reader would put there.
PLACEHOLDERS = {
    "<time>": "2026-01-01_00-00-00",
    "<that run>": "2026-01-01_00-00-00",
    "<that folder>": "logs/runs/2026-01-01_00-00-00",
    "<sweep>": "2026-01-01_00-00-00",
    "<sweep dir>": "logs/multiruns/2026-01-01_00-00-00",
    "<single-task sweep>": "single_task",
    "<name>": "penguins",
}
FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```", re.S | re.M)
SHELL_LANGS = ("", "bash", "sh", "shell", "console")


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


# ---------------------------------------------------------------------- documented commands
@dataclass(frozen=True)
class Command:
    """One documented command: where it is, and the arguments after ``mtmm-train``."""

    where: str
    line: str
    args: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.where}: {self.line}"


def shell_lines(block: str) -> list[tuple[int, str]]:
    """``(offset of the first line, joined line)`` for each line of a shell block; continuations joined."""
    out, pending, start = [], "", 0
    for i, line in enumerate(block.splitlines()):
        if not pending:
            start = i
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        out.append((start, pending + line))
        pending = ""
    if pending:
        out.append((start, pending))
    return out


def command_args(tokens: list[str]) -> list[str] | None:
    """The arguments given to mtmm-train by one shell command, or None when it runs something else."""
    if tokens[:1] == ["mtmm-train"]:
        return tokens[1:]
    if tokens[:1] == ["torchrun"] or tokens[:1] in (["python"], ["python3"]):
        for i in range(len(tokens) - 1):
            if tokens[i] == "-m" and tokens[i + 1] == "mtmm_train":
                return tokens[i + 2:]
    return None


def commands_in(text: str, where: str) -> list[Command]:
    """Every mtmm-train command in the shell code blocks of one Markdown text."""
    found = []
    for block in FENCE.finditer(text):
        if block.group(1) not in SHELL_LANGS:
            continue
        first = text.count("\n", 0, block.start(2)) + 1
        for offset, line in shell_lines(block.group(2)):
            if line.lstrip().startswith("#") or not re.search(r"mtmm-train|mtmm_train", line):
                continue
            for key, value in PLACEHOLDERS.items():
                line = line.replace(key, value)
            try:
                tokens = shlex.split(line, comments=True)
            except ValueError:
                continue  # not a shell command (e.g. a tree drawing)
            segment: list[str] = []
            for token in [*tokens, "&&"]:
                if token in ("&&", "||", ";", "|"):
                    args = command_args(segment) if segment else None
                    if args is not None:
                        found.append(Command(f"{where}:{first + offset}", " ".join(line.split()), tuple(args)))
                    segment = []
                else:
                    segment.append(token)
    return found


def documented_commands() -> list[Command]:
    return [c for path in doc_files() for c in commands_in(path.read_text(), str(path.relative_to(ROOT)))]


def write_documented_files(folder: Path) -> None:
    """Write under ``folder`` the config files the docs tell the reader to create for ``-cd``."""
    for path in doc_files():
        text = path.read_text()
        end = 0
        for block in FENCE.finditer(text):
            lang, body = block.group(1), block.group(2)
            if lang in SHELL_LANGS:
                for match in re.finditer(r"printf '([^']*)' > (\S+)", body):
                    target = folder / match.group(2)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text(codecs.decode(match.group(1), "unicode_escape"))
            elif lang in ("yaml", "yml"):
                # A YAML block the prose before it introduces by its path, e.g. `myconf/dataset/pets.yaml`.
                named = re.findall(r"`((?:\./)?myconf/[\w./-]+\.ya?ml)`", text[end:block.start()])
                if named:
                    target = folder / named[-1]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text(body)
            end = block.end()


def override(o: Override, value: str) -> str:
    return f"{o.get_key_element()}={value}"


def is_group(o: Override) -> bool:
    """Whether ``o`` picks an option of a config group (``fusion=...``, ``hydra/launcher=...``)."""
    return o.key_or_group.startswith("hydra/") or (ROOT / "configs" / o.key_or_group).is_dir()


def jobs(overrides: list[str]) -> list[list[str]]:
    """The override lists to compose for one command: every swept key at its first value, then each
    other option of each swept config group in turn (so every documented option is composed once;
    the other values of a swept plain key, such as ``seed=0,1,2``, add nothing to check)."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    values: list[list[str]] = []
    for o in parsed:
        if not o.is_sweep_override():
            values.append([o.input_line])
        elif isinstance(o.value(), IntervalSweep):  # an Optuna range: its lower end
            values.append([override(o, str(o.value().start))])
        else:
            every = [override(o, v) for v in o.sweep_string_iterator()]
            values.append(every if is_group(o) else every[:1])
    base = [v[0] for v in values]
    out = [base]
    for i, choices in enumerate(values):
        for choice in choices[1:]:
            out.append([*base[:i], choice, *base[i + 1:]])
    return out


def compose_command(command: Command, cwd: Path) -> int:
    """Compose ``command`` as ``mtmm-train --cfg job`` would (nothing trains); return the number of
    configs composed. Raises on an unknown flag, key, group or option, or a bad trainer/logger value."""
    args, overrides, multirun = list(command.args), [], False
    while args:
        arg = args.pop(0)
        if arg in ("-m", "--multirun"):
            multirun = True
        elif arg in ("--cfg", "-c"):
            assert args and args.pop(0) in ("job", "hydra", "all"), f"{command}: --cfg takes job, hydra or all"
        elif arg in ("-cd", "--config-dir"):
            folder = (cwd / args.pop(0)).resolve()
            assert folder.is_dir(), f"{command}: the docs never create the config folder {folder.name}"
            overrides.append(f"hydra.searchpath=[file://{folder}]")
        elif arg == "--resolve":
            continue
        elif arg.startswith("-"):
            raise AssertionError(f"{command}: this test does not know the flag {arg}")
        else:
            overrides.append(arg)
    left = [a for a in overrides if re.search(r"<[^>]*>", a)]
    assert not left, f"{command}: placeholder(s) {left}; give them a value in PLACEHOLDERS"
    composed = 0
    sweeps = [o.input_line for o in OverridesParser.create().parse_overrides(overrides) if o.is_sweep_override()]
    with initialize_config_module(config_module="mtmm_train.configs", version_base="1.3"):
        for job in jobs(overrides):
            key = (multirun, *job)
            if key in COMPOSED:  # the same job documented twice (README and docs/) composes once
                composed += 1
                continue
            cfg = compose(config_name="train", overrides=job, return_hydra_config=True)
            if sweeps:
                assert multirun or cfg.hydra.mode == RunMode.MULTIRUN, \
                    f"{command}: {sweeps} sweep(s) without -m (mtmm-train would refuse them)"
            job_cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
            OmegaConf.to_yaml(job_cfg)  # what --cfg job prints
            check_trainer(typed(job_cfg, "trainer", TrainerConfig))
            typed(job_cfg, "logger", LoggerConfig)
            COMPOSED.add(key)
            composed += 1
    return composed


COMMANDS = documented_commands()
COMPOSED: set[tuple] = set()  # jobs composed without error, in this session


@pytest.fixture(scope="module")
def reader_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the config files the docs tell the reader to write (``myconf/...``)."""
    folder = tmp_path_factory.mktemp("reader")
    write_documented_files(folder)
    return folder


def test_the_docs_have_commands() -> None:
    # Guards the parser: if it stopped finding commands, the test below would check nothing.
    assert len(COMMANDS) >= 40, [str(c) for c in COMMANDS]
    assert any(c.line.startswith("torchrun") for c in COMMANDS)
    assert any("-cd" in c.args for c in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.where)
def test_documented_command_composes(command: Command, reader_folder: Path) -> None:
    assert compose_command(command, reader_folder) >= 1


@pytest.mark.parametrize("line", [
    "mtmm-train fusion=nope",                                            # an unknown option
    "mtmm-train trainer.max_epoch=3",                                    # an unknown key
    "mtmm-train -m fusion=concat,nope seed=0,1",                         # a bad value in a sweep (not the first)
    "mtmm-train -m hydra/launcher=slurm hydra.launcher.partitionX=gpu",  # an unknown launcher key
    "mtmm-train hparams_search=optuna hydra.sweeper.n_trial=5",          # an unknown sweeper key
    "mtmm-train trainer.precision=fp8",                                  # a value the trainer schema refuses
    "mtmm-train fusion=concat,sum",                                      # a sweep without -m
    "mtmm-train -cd nowhere fusion=sum",                                 # a config folder the docs never make
    "mtmm-train hydra.run.dir=logs/runs/<when>",                         # a placeholder without a value
])
def test_a_wrong_command_fails(line: str, tmp_path: Path) -> None:
    block = f"```bash\n{line}\n```\n"
    (command,) = commands_in(block, "example")
    with pytest.raises(Exception):  # noqa: B017 (Hydra's, OmegaConf's or our errors, or an assertion)
        compose_command(command, tmp_path)


def test_commands_are_found_where_the_docs_put_them() -> None:
    text = """```bash
# mtmm-train trainer.max_epochs=1   (a comment: skipped)
pip install . && mtmm-train fusion=sum   # a trailing comment
torchrun --standalone --nproc_per_node=2 -m mtmm_train seed=1 \\
  trainer.batch_size=16
pip install 'mtmm-train[data]'
```
"""
    assert [c.args for c in commands_in(text, "x")] == [("fusion=sum",), ("seed=1", "trainer.batch_size=16")]
    assert jobs(["fusion=a,b", "seed=0,1,2", "x=1", "encoder@model.encoders.text=mlp,cnn"]) == [
        ["fusion=a", "seed=0", "x=1", "encoder@model.encoders.text=mlp"],
        ["fusion=b", "seed=0", "x=1", "encoder@model.encoders.text=mlp"],
        ["fusion=a", "seed=0", "x=1", "encoder@model.encoders.text=cnn"]]


# ---------------------------------------------------------------------- README length
def test_readme_is_short() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move details to docs/"


# ---------------------------------------------------------------------- no references outside the repo
# Written so that this file does not match them itself.
OUTSIDE = [re.compile(p) for p in (r"\bDESIGN\.md", r"\bSTYLE\.md", r"shared[/]device", r"\.\./shared\b",
                                   r"development[ ]setup")]


def repository_files() -> list[Path]:
    """Tracked files and new untracked ones (not ignored); without git, every file but build outputs."""
    if shutil.which("git") and (ROOT / ".git").exists():
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                                capture_output=True, text=True, check=True).stdout.split("\0")
        return sorted({ROOT / name for name in listed if name and (ROOT / name).is_file()})
    skip = {".git", "__pycache__", "logs", "outputs", "multirun", "build", "dist", ".pytest_cache", ".ruff_cache"}
    return sorted(p for p in ROOT.rglob("*") if p.is_file() and not skip & set(p.relative_to(ROOT).parts)
                  and not any(part.endswith(".egg-info") for part in p.parts))


def test_no_file_refers_outside_the_repository() -> None:
    found = []
    for path in repository_files():
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue  # binary
        for number, line in enumerate(text.splitlines(), 1):
            if any(p.search(line) for p in OUTSIDE):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not found, "references to files outside the repository:\n" + "\n".join(found)


# ---------------------------------------------------------------------- links
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")


def prose(text: str) -> str:
    """``text`` without fenced code blocks and inline code spans."""
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown file (duplicates get -1, -2, ...)."""
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", path.read_text()).splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        slug = re.sub(r"[^\w\- ]", "", match.group(1).lower()).replace(" ", "-")
        out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return out


@pytest.mark.parametrize("doc", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc: Path) -> None:
    broken = []
    for match in LINK.finditer(prose(doc.read_text())):
        target = match.group(1) or match.group(2)
        if re.match(r"^[a-z][\w+.-]*:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        path = (doc.parent / file).resolve() if file else doc
        if not path.exists() or ROOT not in [path, *path.parents]:
            broken.append(f"{target}: no such file in the repository")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target}: {path.name} has no heading #{anchor}")
    assert not broken, f"{doc.relative_to(ROOT)}:\n" + "\n".join(broken)
