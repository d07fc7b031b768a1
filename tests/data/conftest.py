"""Fixtures of the data tests: a small phantom set written once per session."""

from __future__ import annotations

import pytest

from crocnet.data import write_phantoms


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory):
    """Three phantom subjects (LA and SA, ED and ES) in the M&Ms-2 layout, seed 7."""
    root = tmp_path_factory.mktemp("phantom")
    write_phantoms(root, subjects=3, seed=7, views=("LA", "SA"))
    return root
