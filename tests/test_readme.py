"""The README's quickstart runs as written (on CPU), and every command the READMEs show parses."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import re
import shlex
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_quickstart_runs():
    text = README.read_text()
    section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "no python block in the README's quickstart"
    namespace: dict = {}
    exec(compile("\n".join(blocks), str(README), "exec"), namespace)
    assert namespace["y"].shape == (8, 1024, 64)
    assert namespace["lv"].shape == (2, 256, 32)


def test_readme_commands_match_ci():
    """The install and test commands CI runs are the README's."""
    text = README.read_text()
    ci = (README.parent / ".ci" / "run").read_text()
    assert 'pip install -e ".[dev]"' in text and 'pip install -e ".[dev]"' in ci
    assert "&& pytest" in text and "pytest" in ci.splitlines()[-1]


class _Parsed(Exception):
    """Raised in place of running a command once its arguments parsed."""


def _bash_blocks(md: Path):
    """The text of each ```bash block, continuation lines joined."""
    block = None
    for line in md.read_text().splitlines():
        if line.startswith("```"):
            if block is not None:
                yield "\n".join(block).replace("\\\n", " ")
            block = [] if block is None and line[3:].strip() == "bash" else None
        elif block is not None:
            block.append(line)


def _documented_commands():
    """``crocnet …`` commands of the bash blocks in the READMEs, and the argv each results folder recorded."""
    root = README.parent
    for md in (README, root / "results" / "README.md", root / "benchmarks" / "README.md"):
        for text in _bash_blocks(md):
            for line in text.splitlines():
                for part in re.split(r"&&|;", line.split(" #")[0]):
                    if part.strip().startswith("crocnet "):
                        yield md.relative_to(root), part.strip()
    for record in sorted((root / "results").rglob("versions.json")):
        argv = json.loads(record.read_text()).get("argv") or []
        if argv and Path(argv[0]).name == "crocnet":  # some runs were scripts (`python -c`), not the CLI
            yield record.relative_to(root), shlex.join(["crocnet", *argv[1:]])


def test_documented_commands_parse(monkeypatch):
    """Every ``crocnet`` command the READMEs show, and every recorded training command, parses with today's
    command line: a renamed or removed flag fails here instead of in a user's shell."""
    from crocnet.cli import SUBCOMMANDS

    def parse_only(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace))

    original = argparse.ArgumentParser.parse_args
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_only)
    commands = list(_documented_commands())
    assert len(commands) > 100, f"expected the READMEs' and results' commands, found {len(commands)}"
    failures = []
    for where, command in commands:
        name, *argv = shlex.split(command)[1:]
        assert name in SUBCOMMANDS, f"{where}: unknown command {name!r} in {command!r}"
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr):
                importlib.import_module(SUBCOMMANDS[name][0]).main(argv)
        except _Parsed:
            continue
        except SystemExit as exit_:
            said = stderr.getvalue().strip().splitlines() or [f"exit status {exit_.code}"]
            failures.append(f"{where}: {command}\n    {said[-1]}")
            continue
        failures.append(f"{where}: {command}\n    ran instead of stopping after parsing")
    assert not failures, "documented commands the CLI refuses:\n" + "\n".join(failures)
