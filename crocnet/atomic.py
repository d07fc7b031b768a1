"""Atomic file writes: a temporary file beside the target, synced, then renamed onto it with ``os.replace``.

Readers (and a job resumed after a kill) see the old file or the new one, never a torn one. A kill between
the two leaves only a ``.NAME.*.tmp`` file, which :func:`remove_stale_temporaries` deletes.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_savefig", "atomic_write_bytes", "atomic_write_text", "exclusive", "remove_stale_temporaries",
           "replacing"]

#: the lock file :func:`exclusive` holds in a folder
LOCK_NAME = ".crocnet.lock"


def _umask_mode() -> int:
    """The mode ``open`` would give a new file (``mkstemp`` makes them private, 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def replacing(path: str | Path, mode: str = "w", **open_kwargs):
    """A file object (``open(..., mode, **open_kwargs)``) on a temporary file beside ``path``, synced and
    renamed onto ``path`` when the block ends without error (deleted otherwise). Creates parent folders."""
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with replacing(path, "w") as f:
        f.write(text)
    return Path(path)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with replacing(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_savefig(fig, path: str | Path, **kwargs) -> Path:
    """``fig.savefig`` as PNG to a temporary file beside ``path``, then ``os.replace`` it."""
    with replacing(path, "wb") as f:
        fig.savefig(f, format="png", **kwargs)
    return Path(path)


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the ``.NAME.*.tmp`` files a killed atomic write left in ``folder``; returns them."""
    stale = sorted(Path(folder).glob(".*.tmp")) if Path(folder).is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


@contextmanager
def exclusive(folder: str | Path, doing: str):
    """Hold an exclusive lock on ``folder`` (creating it) for the block: a second process writing into the same
    folder at once (two trainings of one fold, a resume while the first job still runs) is a ``RuntimeError``
    naming it, instead of two runs' files mixed. ``doing`` says what, e.g. ``"training"``. The lock is
    ``flock`` on ``folder/.crocnet.lock``, released by the system when the process ends (a kill included);
    where ``fcntl`` is missing (Windows) nothing is locked."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        yield
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, _umask_mode())
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"{folder}: another process is {doing} into this folder (it holds {LOCK_NAME} there); "
                               f"wait for it to end, or choose another folder") from None
        yield
    finally:
        os.close(fd)
