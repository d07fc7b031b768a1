"""Reading and writing NIfTI files with clear errors.

Arrays keep nibabel's voxel-axis order ``(i, j, k)``: ``(H, W, 1)`` for a long-axis image, ``(H, W, Z)``
for a short-axis stack. A 2D file is returned as ``(H, W, 1)`` (its slice thickness then comes from the
affine's third column); trailing axes of length 1 beyond the third are dropped. ``affine`` maps voxel
indices ``(i, j, k, 1)`` to world millimetres (NIfTI RAS+) and is kept exactly as stored (M&Ms-2
long-axis images have rotated affines).
"""

from __future__ import annotations

import gzip
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from ..atomic import atomic_write_bytes
from .validation import DataError, MissingFileError, check_image, check_label, check_same_grid, require_file

__all__ = ["NiftiVolume", "read_image_and_label", "read_nifti", "write_nifti"]


@dataclass
class NiftiVolume:
    """The array, geometry and header of one NIfTI file.

    Attributes:
        array: voxel values in their stored dtype, shape ``(H, W, Z)`` (``Z = 1`` for 2D images).
        affine: ``(4, 4)`` voxel → world (mm) matrix.
        spacing: voxel size in mm per array axis, or ``None`` when the header has no valid sizes.
        header: the NIfTI header (reuse it when writing a prediction for this file).
        path: the file read.
    """

    array: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, ...] | None
    header: nib.Nifti1Header
    path: Path


def read_nifti(path: str | Path) -> NiftiVolume:
    """Read a ``.nii`` / ``.nii.gz`` file into a :class:`NiftiVolume`.

    Raises:
        MissingFileError: the file does not exist.
        DataError: the file is corrupt or truncated, or is not a 2D/3D image.
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: expected a NIfTI file, got a folder")
    if not path.is_file():
        what = "a broken or looping symbolic link" if path.is_symlink() else "not found"
        raise MissingFileError(f"{path}: NIfTI file {what}")
    try:
        image = nib.load(path)
        array = np.asanyarray(image.dataobj)
    except (nib.filebasedimages.ImageFileError, nib.spatialimages.HeaderDataError, EOFError, zlib.error, OSError,
            ValueError) as exc:
        raise DataError(
            f"{path}: expected a readable NIfTI image, got a corrupt or truncated file "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.size == 0:
        raise DataError(f"{path}: expected a 2D or 3D image, got an array of shape {array.shape}")
    return NiftiVolume(array=array, affine=image.affine.copy(), spacing=_spacing(image, path), header=image.header,
                       path=path)


def _fmt(values) -> tuple[float, ...]:
    return tuple(round(float(v), 6) for v in values)


def _spacing(image, path: Path) -> tuple[float, float, float] | None:
    """Voxel size in mm: the header's ``pixdim`` where it agrees with the affine's column lengths.

    nibabel reports a stored size of 0 as 1.0, so the raw, unchecked ``pixdim`` is read. Where ``pixdim`` is missing (0,
    negative, non-finite) or disagrees with the affine by more than 0.1 %, the sform affine (when the file has
    one) is the geometry every viewer uses, so its column lengths are taken, with a warning; without an
    sform the size is unknown (``None``), never a guess of 1 mm.
    """
    header = image.header
    try:  # nibabel's header check on load turns a stored 0 into 1: read the raw header again, unchecked
        with nib.openers.ImageOpener(path) as f:
            header = type(image.header).from_fileobj(f, check=False)
    except Exception:  # noqa: BLE001 - the checked header read already succeeded; keep it
        pass
    from_affine = np.linalg.norm(np.asarray(image.affine, dtype=np.float64)[:3, :3], axis=0)
    n = min(int(header["dim"][0]), 3) if "dim" in header else 3
    raw = np.array([float(z) for z in header["pixdim"][1:1 + n]] if "pixdim" in header else [], dtype=np.float64)
    raw = np.concatenate([raw, from_affine[len(raw):]])  # a 2D file's slice thickness comes from the affine
    valid = lambda z: bool(np.all(np.isfinite(z)) and np.all(z > 0))
    if valid(raw) and np.allclose(raw, from_affine, rtol=1e-3, atol=0):
        return tuple(float(z) for z in raw)
    sform = int(header["sform_code"]) > 0 if "sform_code" in header else False
    if sform and valid(from_affine):
        warnings.warn(f"{path}: the header's voxel size (pixdim) {_fmt(raw)} does not match the sform "
                      f"affine's {_fmt(from_affine)}; using the affine's", stacklevel=3)
        return tuple(float(z) for z in from_affine)
    warnings.warn(f"{path}: expected a positive voxel size in the header (pixdim) matching the affine, got "
                  f"pixdim {_fmt(raw)} and affine column lengths {_fmt(from_affine)}; "
                  "the spacing is unknown (distances are reported in pixels)", stacklevel=3)
    return None


def write_nifti(
    path: str | Path,
    array: np.ndarray,
    affine: np.ndarray | None,
    header: nib.Nifti1Header | None = None,
) -> Path:
    """Write ``array`` (in the voxel-axis order of :func:`read_nifti`) as NIfTI, creating parent folders.

    The file is replaced atomically (a temporary file, then a rename): a kill never leaves a torn file.

    Args:
        path: output file (``.nii.gz`` compresses).
        array: the voxels; its dtype is stored (use uint8 for label maps).
        affine: voxel → world matrix; ``None`` writes an identity geometry.
        header: a header to start from (e.g. the source image's, so a prediction keeps its qform/sform
            codes and units); its data type and scaling are replaced by the array's, and its display range
            (``cal_min``/``cal_max``, a label map shown in an image's 0–800 window looks black) and intent reset.
    """
    path = Path(path)
    if not path.name.endswith((".nii", ".nii.gz")):
        raise ValueError(f"a NIfTI path must end in .nii or .nii.gz, got {str(path)!r}")
    header = None if header is None else header.copy()
    image = nib.Nifti1Image(np.asarray(array), np.eye(4) if affine is None else np.asarray(affine), header=header)
    image.set_data_dtype(np.asarray(array).dtype)
    image.header.set_slope_inter(None, None)
    image.header["cal_min"] = image.header["cal_max"] = 0  # 0, 0: viewers take the data's range
    image.header.set_intent("none")
    data = image.to_bytes()
    if path.name.endswith(".gz"):
        data = gzip.compress(data, compresslevel=1, mtime=0)  # nibabel's level; no time stamp: same array, same bytes
    return atomic_write_bytes(path, data)


def read_image_and_label(
    image_path: str | Path, label_path: str | Path | None, lookup: np.ndarray | None = None
) -> tuple[NiftiVolume, np.ndarray, np.ndarray | None]:
    """Read an image and (optionally) its label map, checked against each other.

    Args:
        image_path: the image file.
        label_path: its label map, or ``None`` for an unlabelled case.
        lookup: optional label remapping table, ``ours = lookup[theirs]`` (see :func:`check_label`).

    Returns:
        ``(volume, image, label)``: the image's :class:`NiftiVolume`, the float32 image ``(H, W, Z)`` and
        the uint8 label map of the same shape in the project's convention (or ``None``).

    Raises:
        MissingFileError: a file is missing (the label message names the label file).
        DataError: corrupt file, NaN/inf intensities, labels outside the map, or image and label grids
            (shape or affine) that differ.
    """
    volume = read_nifti(image_path)
    image = check_image(volume.array, volume.path)
    if label_path is None:
        return volume, image, None
    label_volume = read_nifti(require_file(label_path, f"label map of {Path(image_path).name}"))
    check_same_grid(
        volume.path, volume.array.shape, volume.affine, label_volume.path, label_volume.array.shape,
        label_volume.affine,
    )
    return volume, image, check_label(label_volume.array, label_volume.path, lookup)
