"""Fixtures of the training tests: one quick demo run (phantoms, both stages) shared by every module."""

from __future__ import annotations

from pathlib import Path

import pytest

from crocnet.train import demo


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    assert demo.main(["--quick", "--out", str(out), "--no-progress"]) == 0
    return out
