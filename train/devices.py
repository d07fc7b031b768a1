"""The ``--device`` flag of every command: one parser, one set of messages."""

from __future__ import annotations

import torch

DEVICE_HELP = "auto (cuda if available), cpu, cuda or cuda:N"


def resolve_device(name: str, flag: str = "--device") -> torch.device:
    """The device ``name`` asks for: ``auto`` (cuda when this machine has one, else cpu), ``cpu``, ``cuda`` or
    ``cuda:N`` of a CUDA device this machine has.

    Raises:
        ValueError: for any other name, for CUDA on a machine without it, or for an index it does not have.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda") or (device.type == "cpu" and device.index not in (None, 0)):
        raise ValueError(f"{flag} must be auto, cpu, cuda or cuda:N, got {name!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{flag} {name}: no CUDA device is available here; use {flag} cpu or auto")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"{flag} {name}: this machine has {count} CUDA device(s), cuda:0 .. cuda:{count - 1}")
    return device
