"""Checks of plain arguments shared by the modules, the crops and the training code (``bool`` is never a
number here, though Python counts it as an int)."""

from __future__ import annotations

import numbers


def is_int(value) -> bool:
    """Whether ``value`` is a Python int."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_integral(value) -> bool:
    """Whether ``value`` is an integer of any kind, Python's or NumPy's (sizes computed with NumPy)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_rate(value) -> bool:
    """Whether ``value`` is a real number in [0, 1): a dropout or drop-path rate."""
    return not isinstance(value, bool) and isinstance(value, numbers.Real) and 0 <= value < 1


def positive_int(owner: str, **values) -> None:
    """Raise a ``ValueError`` unless every keyword value is an int >= 1."""
    for name, value in values.items():
        if not is_int(value) or value < 1:
            raise ValueError(f"{owner}: {name} must be an int >= 1, got {value!r}")
