"""Checks of a command's output paths, made before any work so that a bad path costs nothing and loses nothing:
an output has the expected suffix, is not an existing folder, its folder can be created, and it is neither one
of the command's inputs nor another of its outputs (``Path.resolve``, so ``./x`` and symbolic links count)."""

from __future__ import annotations

import os
from pathlib import Path


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether ``a`` and ``b`` name the same file: the same resolved path, or (both existing) one hard-linked file."""
    a, b = Path(a), Path(b)
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_creatable(path: str | Path, flag: str) -> None:
    """The folder that will hold ``path`` exists or can be made: its nearest existing ancestor is a writable folder."""
    _check_folder_creatable(Path(path).resolve().parent, path, flag)


def _check_folder_creatable(folder: Path, path: str | Path, flag: str) -> None:
    ancestor = folder
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"{flag} {str(path)!r}: its folder cannot be created, {str(ancestor)!r} is a file")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {str(path)!r}: the folder {str(ancestor)!r} is not writable")


def check_output_file(path: str | Path, flag: str, suffixes: tuple[str, ...] = (), kind: str = "") -> Path:
    """``path`` as an output file of option ``flag``: ending in one of ``suffixes`` (if given), not an existing
    folder, in a folder that exists or can be created. ``kind`` names the format in the error ("NIfTI")."""
    text = str(path)
    what = f"a {kind + ' ' if kind else ''}file path" + (f" ending in {' or '.join(suffixes)}" if suffixes else "")
    if Path(path).is_dir():
        raise ValueError(f"{flag} must be {what}, got the folder {text!r}")
    if suffixes and not text.endswith(suffixes):
        raise ValueError(f"{flag} must be {what}, got {text!r}")
    check_creatable(path, flag)
    return Path(path)


def check_output_folder(path: str | Path, flag: str, holds: str = "") -> Path:
    """``path`` as an output folder of option ``flag``: a folder, or nothing yet in a place where one can be made.
    ``holds`` says what the folder gets, for the error."""
    if Path(path).exists() and not Path(path).is_dir():
        raise ValueError(f"{flag} must be a folder{' for ' + holds if holds else ''}, got the file {str(path)!r}; "
                         f"choose another path")
    _check_folder_creatable(Path(path).resolve(), path, flag)
    return Path(path)


def check_distinct(outputs: list[tuple[str, str | Path | None]], inputs: list[tuple[str, str | Path | None]] = ()) -> None:
    """Refuse an output that is one of the ``inputs`` or another output. ``outputs``: ``(flag, path)`` pairs;
    ``inputs``: ``(description, path)`` pairs, e.g. ``("the --input file", path)``; ``None`` paths are skipped.

    Raises ValueError like ``--output x.nii.gz is the --input file; choose another path``."""
    seen: list[tuple[str, str | Path]] = []
    for flag, path in outputs:
        if path is None:
            continue
        for description, source in inputs:
            if source is not None and same_file(path, source):
                raise ValueError(f"{flag} {path} is {description}; choose another path")
        for other_flag, other in seen:
            if same_file(path, other):
                raise ValueError(f"{flag} {path} is also the {other_flag} path; choose another path")
        seen.append((flag, path))
