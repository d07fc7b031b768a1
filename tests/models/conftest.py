"""Helpers shared by the model tests."""

from __future__ import annotations

import pytest
import torch


def _assert_every_grad(model: torch.nn.Module) -> None:
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradient for {bad}"


@pytest.fixture
def assert_every_grad():
    """``assert_every_grad(model)``: after a backward, every parameter has a finite gradient."""
    return _assert_every_grad
