"""Functional ops: ``e2a`` and ``cross_e2a`` (``*_packed`` for q and k side by side in one tensor)
(autograd-aware, Triton or PyTorch), and their naive specs."""

from .e2a import cross_e2a, cross_e2a_packed, e2a, e2a_packed
from .naive import TOKEN_NORMS, cross_e2a_naive, cross_e2a_streams, e2a_naive

__all__ = ["e2a", "e2a_packed", "cross_e2a", "cross_e2a_packed", "e2a_naive", "cross_e2a_naive", "cross_e2a_streams", "TOKEN_NORMS"]
