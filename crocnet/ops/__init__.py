"""Functional ops: ``e2a`` and ``cross_e2a`` (autograd-aware, Triton or PyTorch), and their naive specs."""

from .e2a import cross_e2a, e2a
from .naive import TOKEN_NORMS, cross_e2a_naive, cross_e2a_streams, e2a_naive

__all__ = ["e2a", "cross_e2a", "e2a_naive", "cross_e2a_naive", "cross_e2a_streams", "TOKEN_NORMS"]
