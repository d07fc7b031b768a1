"""The README's quickstart runs as written (on CPU)."""

from __future__ import annotations

import re
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
