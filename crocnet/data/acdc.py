"""ACDC readers: the native NIfTI release and the SSL4MIS / WSL4MIS HDF5 volumes.

ACDC labels are 0 background, 1 RV, 2 myocardium, 3 LV; both readers remap them to the project's
convention (1 LV, 2 MYO, 3 RV) with :data:`ACDC_TO_PROJECT`.

Native layout (``training/`` or ``testing/`` of the release, or any folder of patient folders)::

    patientNNN/Info.cfg                       "ED: 1", "ES: 12", "Group: DCM", "Height: ...", ...
    patientNNN/patientNNN_frameFF.nii.gz      short-axis stack (H, W, Z)
    patientNNN/patientNNN_frameFF_gt.nii.gz

HDF5 layout (SSL4MIS/WSL4MIS ``ACDC/data`` or ``volumes``)::

    patientNNN_frameFF.h5   image float32 (Z, H, W) in [0, 1]; label uint8 (Z, H, W); scribble uint16

The HDF5 arrays were written from SimpleITK, whose array order is the reverse of nibabel's; the reader
transposes them back to nibabel's ``(i, j, k)`` order, so a record from either source has the same array
layout. No spacing or affine is stored: both are ``None`` (distances in pixels unless the user supplies
spacing). The phase is not stored either: of a patient's two frames the earlier is ED, the later ES.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np

from .nifti import read_image_and_label
from .records import Record
from .validation import (
    DataError, MissingFileError, check_image, check_label, code_list, name_list, read_text, require_file
)

__all__ = ["ACDC_TO_PROJECT", "find_h5_volumes", "find_patients", "load_acdc", "load_acdc_h5", "read_info_cfg"]

#: ACDC label -> project label (ACDC 1 RV, 2 MYO, 3 LV -> 3, 2, 1)
ACDC_TO_PROJECT = np.array([0, 3, 2, 1], dtype=np.uint8)
_H5_NAME = re.compile(r"^(patient\d{3})_frame(\d{2})\.h5$")


def read_info_cfg(path: str | Path) -> dict[str, str]:
    """Parse an ACDC ``Info.cfg`` (``key: value`` lines) into a dict of strings."""
    path = require_file(Path(path), "ACDC Info.cfg")
    info = {}
    for line in read_text(path, "an ACDC Info.cfg of 'key: value' lines").splitlines():
        if line.strip():
            key, sep, value = line.partition(":")
            if not sep:
                raise DataError(f"{path}: expected 'key: value' lines, got {line!r}")
            info[key.strip()] = value.strip()
    for key in ("ED", "ES"):
        if not info.get(key, "").isdigit():
            raise DataError(f"{path}: expected an integer {key} frame, got {info.get(key)!r}")
    return info


def find_patients(root: str | Path) -> dict[str, Path]:
    """Patient folders ``{"patient001": path, ...}`` (those with an ``Info.cfg``) of a native ACDC folder.

    ``root`` is a folder of patient folders or the release folder holding ``training``/``testing``.
    """
    root = Path(root)
    if not root.is_dir():
        raise MissingFileError(f"{root}: ACDC folder not found")
    configs = sorted(root.glob("patient*/Info.cfg")) or sorted(root.glob("*/patient*/Info.cfg"))
    if not configs:
        raise DataError(f"{root}: expected ACDC patient folders (patientNNN/Info.cfg), found none")
    parts = sorted({cfg.parent.parent.name for cfg in configs if cfg.parent.parent != root})
    if len(parts) > 1:
        warnings.warn(f"{root}: reading the patients of {' and '.join(parts)}/ together (the release's official test "
                      f"patients among them, in every split and fold made of these records); give {root}/training to "
                      f"keep them out", stacklevel=2)
    return dict(sorted((cfg.parent.name, cfg.parent) for cfg in configs))


def find_h5_volumes(root: str | Path) -> dict[str, list[tuple[int, Path]]]:
    """HDF5 volumes by patient, ``{"patient021": [(1, path), (13, path)], ...}``, frames in order.

    ``root`` is the folder of ``.h5`` files or the dataset folder above it, whose ``volumes/`` (WSL4MIS)
    or ``data/`` (SSL4MIS) subfolder holds them.
    """
    root = Path(root)
    if not root.is_dir():
        raise MissingFileError(f"{root}: ACDC HDF5 folder not found")
    if not any(root.glob("*.h5")):
        for sub in ("volumes", "data"):
            if any((root / sub).glob("*.h5")):
                root = root / sub
                break
    by_patient: dict[str, list[tuple[int, Path]]] = {}
    others = []
    for path in sorted(root.glob("*.h5")):
        match = _H5_NAME.match(path.name)
        if match:
            by_patient.setdefault(match[1], []).append((int(match[2]), path))
        else:
            others.append(path.name)
    if others and by_patient:
        warnings.warn(f"{root}: ignoring {len(others)} .h5 file(s) not named patientNNN_frameFF.h5: "
                      f"{name_list(others)}", stacklevel=2)
    if not by_patient:
        raise DataError(f"{root}: expected ACDC volumes named patientNNN_frameFF.h5, found none")
    return {patient: sorted(frames) for patient, frames in by_patient.items()}


def _restrict(found: dict, subjects: Iterable[str] | None, root: Path) -> dict:
    if subjects is None:
        return found
    wanted = list(code_list(subjects, "subjects", "['patient001', 'patient002']"))
    absent = [s for s in wanted if s not in found]
    if absent:
        raise MissingFileError(f"{root}: no ACDC files for {', '.join(absent)}")
    return {s: found[s] for s in wanted}


def load_acdc(
    root: str | Path,
    phases: Iterable[str] = ("ED", "ES"),
    subjects: Iterable[str] | None = None,
    labels: bool = True,
) -> list[Record]:
    """Read the native ACDC NIfTI release into short-axis records ``(H, W, Z)`` with remapped labels.

    Args:
        root: a folder of ``patientNNN`` folders, or the release folder holding ``training``/``testing``.
        phases: ``"ED"`` and/or ``"ES"`` (frame numbers from each ``Info.cfg``).
        subjects: restrict to these patients (``"patient001"``); ``None`` reads all.
        labels: read the ``_gt`` label maps (a missing one is an error).

    Returns:
        Records ordered by patient then phase; ``disease`` is the ACDC group (NOR, DCM, HCM, MINF, RV),
        ``info`` the rest of ``Info.cfg`` (frame, height, weight, number of frames).
    """
    phases = code_list(phases, "phases", "['ED', 'ES']")
    records = []
    for patient, folder in _restrict(find_patients(root), subjects, root).items():
        info = read_info_cfg(folder / "Info.cfg")
        for phase in phases:
            if phase not in ("ED", "ES"):
                raise ValueError(f"phase must be ED or ES, got {phase!r}")
            frame = int(info[phase])
            image_path = require_file(folder / f"{patient}_frame{frame:02d}.nii.gz", f"{phase} image")
            label_path = folder / f"{patient}_frame{frame:02d}_gt.nii.gz" if labels else None
            volume, image, label = read_image_and_label(image_path, label_path, ACDC_TO_PROJECT)
            records.append(
                Record.from_nifti(
                    volume,
                    image,
                    label,
                    subject=patient,
                    phase=phase,
                    view="SA",
                    dataset="acdc",
                    disease=info.get("Group") or None,
                    info={"frame": f"{frame:02d}", **{k: info[k] for k in info if k not in ("ED", "ES", "Group")}},
                )
            )
    return records


def _h5_array(f, key: str, path: Path) -> np.ndarray:
    """The non-empty dataset ``key`` of an open HDF5 file, read as an array."""
    import h5py

    item = f[key]
    if not isinstance(item, h5py.Dataset):
        raise DataError(f"{path}: expected '{key}' to be an HDF5 dataset, got a {type(item).__name__.lower()}")
    if not item.size:  # size 0, or None for a dataset without a dataspace
        raise DataError(f"{path}: expected a non-empty '{key}' dataset, got shape {item.shape}")
    return item[()]


def load_acdc_h5(root: str | Path, subjects: Iterable[str] | None = None) -> list[Record]:
    """Read SSL4MIS/WSL4MIS ACDC volumes ``patientNNN_frameFF.h5`` into records with remapped labels.

    Args:
        root: the folder of ``.h5`` volumes (e.g. ``acdc_h5/volumes``), or the folder above it.
        subjects: restrict to these patients (``"patient021"``); ``None`` reads all.

    Returns:
        Short-axis records, ``image`` float32 ``(H, W, Z)`` in [0, 1] (transposed from the stored
        ``(Z, H, W)``, see the module docstring), ``spacing = affine = None``, phase ED / ES by frame order
        (a patient with one or three frames: ``"frameFF"``).
    """
    import h5py

    records = []
    for patient, frames in _restrict(find_h5_volumes(root), subjects, root).items():
        # two frames are ED then ES; otherwise the frame number names the phase (and keeps case names unique)
        phases = ("ED", "ES") if len(frames) == 2 else tuple(f"frame{frame:02d}" for frame, _ in frames)
        for (frame, path), phase in zip(frames, phases):
            try:
                with h5py.File(path, "r") as f:
                    image = _h5_array(f, "image", path)
                    label = _h5_array(f, "label", path) if "label" in f else None
            except (OSError, KeyError) as exc:
                got = "no 'image' dataset in it" if isinstance(exc, KeyError) else f"an unreadable file ({exc})"
                raise DataError(f"{path}: expected an HDF5 file with an 'image' dataset, got {got}") from exc
            if image.ndim != 3:
                raise DataError(f"{path}: expected a (Z, H, W) image, got shape {image.shape}")
            if label is not None and label.shape != image.shape:
                raise DataError(
                    f"{path}: label grid does not match the image: expected shape {image.shape}, got {label.shape}"
                )
            image = check_image(image, path).transpose(2, 1, 0)
            if label is not None:
                label = check_label(label, path, ACDC_TO_PROJECT).transpose(2, 1, 0)
            records.append(
                Record(
                    image=np.ascontiguousarray(image),
                    label=None if label is None else np.ascontiguousarray(label),
                    spacing=None,
                    affine=None,
                    subject=patient,
                    phase=phase,
                    view="SA",
                    dataset="acdc_h5",
                    source=path,
                    info={"frame": f"{frame:02d}"},
                )
            )
    return records
