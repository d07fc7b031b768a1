"""Errors of the data layer and the checks every reader applies.

Every message names the file and says what was expected and what was found.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


#: entry of a label lookup table marking a value the dataset does not declare
UNDECLARED = 255


class DataError(ValueError):
    """A data file or folder is not what the reader expects (corrupt, mismatched, wrong labels, empty)."""


class MissingFileError(DataError, FileNotFoundError):
    """A file the layout requires (an image, its label map, a dataset description) does not exist."""


def name_list(names, limit: int = 5) -> str:
    """The first ``limit`` names, comma-separated, with ``, ...`` when there are more (for messages)."""
    names = [str(n) for n in names]
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


def code_list(codes, name: str, example: str):
    """``codes`` unless it is a bare string, which would be read character by character: then raise
    TypeError saying a list like ``example`` was expected (``name``: the argument, e.g. ``"subjects"``)."""
    if isinstance(codes, (str, bytes)):
        raise TypeError(f"{name} must be a list of codes like {example}, got the string {codes!r}")
    return codes


def read_text(path: Path, what: str) -> str:
    """The text of ``path`` read as UTF-8 (a byte-order mark skipped); :class:`DataError` naming the file and
    ``what`` it should be when it is not UTF-8 text."""
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(not_text(path, what, exc)) from None


def not_text(path: Path | str, what: str, exc: UnicodeDecodeError) -> str:
    """The message for a ``path`` that should be ``what`` (a UTF-8 text file) but is not UTF-8 text."""
    return f"{path}: expected {what} (UTF-8 text), got bytes that are not UTF-8 text (byte {exc.start}: {exc.reason})"


def require_file(path: Path, what: str) -> Path:
    """Return ``path`` if it is a file, else raise :class:`MissingFileError` saying which ``what`` it is."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: {what} not found (expected a file at this path)")
    return path


def check_image(image: np.ndarray, path: Path | str) -> np.ndarray:
    """Return ``image`` as float32 after checking that it is real and every voxel is finite and fits float32."""
    image = np.asarray(image)
    if not np.issubdtype(image.dtype, np.number):
        raise DataError(f"{path}: expected a numeric image, got dtype {image.dtype}")
    if np.iscomplexobj(image):
        raise DataError(f"{path}: expected a real-valued image, got {image.dtype}")
    # checked before the cast, which turns values beyond float32's range into inf
    bad = ~np.isfinite(image)
    if bad.any():
        raise DataError(
            f"{path}: expected finite intensities, got {int(bad.sum())} NaN/inf voxels of {image.size}"
        )
    limit = np.finfo(np.float32).max
    if np.issubdtype(image.dtype, np.floating) and np.finfo(image.dtype).max > limit:
        peak = np.abs(image).max(initial=0)
        if peak > limit:
            raise DataError(
                f"{path}: expected intensities within float32's range (±{limit:.4g}), "
                f"got values up to {peak:.4g}, beyond float32's range"
            )
    return image.astype(np.float32, copy=False)


def check_label(label: np.ndarray, path: Path | str, lookup: np.ndarray | None = None) -> np.ndarray:
    """Return the label map as uint8 in the project's convention (0 bg, 1 LV, 2 MYO, 3 RV).

    Args:
        label: integer-valued label map, any numeric dtype (M&Ms-2 stores labels as float64).
        path: the file it came from, for messages.
        lookup: optional remapping table, ``ours = lookup[theirs]``; values outside ``range(len(lookup))``
            or whose entry is :data:`UNDECLARED` are rejected. Without it, values must be in {0, 1, 2, 3}.
    """
    label = np.asarray(label)
    if not np.issubdtype(label.dtype, np.number):
        raise DataError(f"{path}: expected a numeric label map, got dtype {label.dtype}")
    if np.issubdtype(label.dtype, np.floating):
        if not np.isfinite(label).all() or (np.round(label) != label).any():
            raise DataError(f"{path}: expected integer label values, got non-integer or NaN values")
    table = np.arange(4, dtype=np.uint8) if lookup is None else np.asarray(lookup, dtype=np.uint8)
    allowed = np.flatnonzero(table != UNDECLARED)
    values = np.unique(label)
    outside = values[~np.isin(values, allowed)]
    if outside.size:
        raise DataError(
            f"{path}: expected label values in {{{', '.join(map(str, allowed))}}}, "
            f"got {', '.join(f'{v:g}' for v in outside)}"
        )
    return table[label.astype(np.int64)]


def check_same_grid(
    image_path: Path | str,
    image_shape: tuple[int, ...],
    image_affine: np.ndarray | None,
    label_path: Path | str,
    label_shape: tuple[int, ...],
    label_affine: np.ndarray | None,
    atol_mm: float = 1e-3,
) -> None:
    """Raise :class:`DataError` unless an image and its label map share shape and (when known) affine."""
    if tuple(image_shape) != tuple(label_shape):
        raise DataError(
            f"{label_path}: label grid does not match its image {Path(image_path).name}: "
            f"expected shape {tuple(image_shape)}, got {tuple(label_shape)}"
        )
    if image_affine is not None and label_affine is not None:
        if not np.allclose(image_affine, label_affine, atol=atol_mm, rtol=0):
            diff = float(np.abs(np.asarray(image_affine) - np.asarray(label_affine)).max())
            raise DataError(
                f"{label_path}: label grid does not match its image {Path(image_path).name}: expected the "
                f"same affine (within {atol_mm} mm), got one that differs by up to {diff:.4g}"
            )
