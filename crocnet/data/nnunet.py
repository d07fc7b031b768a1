"""nnU-Net raw dataset reader (``dataset.json``, ``imagesTr/CASE_0000.nii.gz``, ``labelsTr/CASE.nii.gz``).

Both ``dataset.json`` flavours are understood: nnU-Net v2 (``"labels": {"background": 0, "LV": 1, ...}``,
``"file_ending"``) and v1 (``"labels": {"0": "background", "1": "LV", ...}``). Labels are remapped to the
project's convention (0 bg, 1 LV, 2 MYO, 3 RV) from their *names* (``LV``, ``left ventricle``, ``MYO``,
``myocardium``, ``RV``...), or from an explicit ``label_map`` when the names are something else. Only the
first channel (``_0000``) is read: the cine MR datasets this project handles have one.

Case names of the form ``SUBJECT_VIEW_PHASE`` (``001_LA_ED``, how M&Ms-2 is usually converted) fill
``subject``, ``view`` and ``phase``; other names become the subject with unknown view and phase.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from .nifti import read_image_and_label
from .records import Record
from .validation import UNDECLARED, DataError, MissingFileError, code_list, name_list, read_text, require_file

__all__ = ["find_cases", "load_nnunet_raw", "parse_case_name"]

_NAMES = {
    0: {"background", "bg", "clear", "none"},
    # nnU-Net's own ACDC conversion (Dataset027_ACDC): "MLV" (myocardium of the LV), "LVC" (LV cavity)
    1: {"lv", "leftventricle", "lvbloodpool", "lvcavity", "leftventriclebloodpool", "leftventricularcavity", "lvc",
        "lvbp"},  # nnU-Net's M&Ms-1 conversion (Dataset114_MNMs)
    2: {"myo", "myocardium", "lvmyocardium", "lvmyo", "leftventricularmyocardium", "lvm", "mlv"},
    3: {"rv", "rightventricle", "rvbloodpool", "rvcavity", "rightventriclebloodpool", "rightventricularcavity"},
}
_CASES = (  # case-name forms, tried in order
    re.compile(r"^(?P<subject>.+)_(?P<view>LA|SA)_(?P<phase>ED|ES)$"),  # this project's M&Ms-2 conversion
    re.compile(r"^(?P<subject>.+)_(?P<phase>ED|ES)$"),
    re.compile(r"^(?P<subject>.+)_(?P<phase>frame\d+)$"),  # nnU-Net's ACDC (and M&Ms-1) conversion: patient001_frame01
)
_CHANNEL = re.compile(r"_\d{4}$")


def _declared_labels(description: dict, path: Path) -> dict[int, str]:
    labels = description.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise DataError(f"{path}: expected a 'labels' mapping, got {labels!r}")
    declared = {}
    for key, value in labels.items():
        if str(key).isdigit():  # v1: {"0": "background"}
            number, name = int(key), str(value)
        elif isinstance(value, int):  # v2: {"background": 0}
            number, name = value, str(key)
            if isinstance(value, bool) or number < 0:
                raise DataError(f"{path}: expected label values to be integers >= 0, got {key!r}: {value!r}")
        else:
            raise DataError(
                f"{path}: expected labels as name -> integer (v2) or integer -> name (v1), got {key!r}: {value!r}"
                " (region-based labels are not supported)"
            )
        if number in declared:
            raise DataError(f"{path}: expected each label value once, got {number} for both "
                            f"{declared[number]!r} and {name!r}")
        declared[number] = name
    return declared


def _read_description(path: Path) -> dict:
    """The JSON object of an nnU-Net ``dataset.json``, with a checked ``file_ending`` (default ``.nii.gz``)."""
    try:
        description = json.loads(read_text(path, "an nnU-Net dataset.json"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: expected valid JSON, got {exc}") from exc
    if not isinstance(description, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(description).__name__}")
    ending = description.setdefault("file_ending", ".nii.gz")
    if not isinstance(ending, str) or not ending.startswith("."):
        raise DataError(f"{path}: file_ending must be a string such as '.nii.gz', got {ending!r}")
    return description


def _lookup(declared: dict[int, str], label_map: Mapping[int, int] | None, path: Path) -> np.ndarray:
    if label_map is None:
        label_map = {}
        for value, name in declared.items():
            key = re.sub(r"[^a-z]", "", name.lower())
            ours = next((v for v, names in _NAMES.items() if key in names), None)
            if ours is None:
                raise DataError(
                    f"{path}: label {value} {name!r} is not a known cardiac structure (background, LV, MYO, RV, or "
                    f"names such as {', '.join(sorted(_NAMES[2]))}); rename it in dataset.json, or from Python pass "
                    "load_nnunet_raw(..., label_map={theirs: ours}) (ours: 0 background, 1 LV, 2 MYO, 3 RV)"
                )
            label_map[value] = ours
    table = np.full(max(declared) + 1, UNDECLARED, dtype=np.uint8)
    for theirs in declared:
        ours = label_map.get(theirs)
        if ours is None or ours not in (0, 1, 2, 3):
            raise DataError(f"{path}: label_map must send declared label {theirs} to 0..3, got {ours!r}")
        table[theirs] = ours
    return table


def parse_case_name(case: str) -> tuple[str, str | None, str | None]:
    """``(subject, view, phase)`` of a case name: ``"001_LA_ED"`` → ``("001", "LA", "ED")``, ``"001_ES"`` →
    ``("001", None, "ES")``, nnU-Net's ACDC ``"patient001_frame12"`` → ``("patient001", None, "frame12")`` (the
    frames of one subject stay together in the splits, and their case names, ``patient001_frame12``, differ).

    Other names give ``(case, None, None)``.
    """
    for form in _CASES:
        parts = form.match(case)
        if parts:
            groups = parts.groupdict()
            return groups["subject"], groups.get("view"), groups.get("phase")
    return case, None, None


def find_cases(root: str | Path, split: str = "Tr", ending: str = ".nii.gz") -> dict[str, Path]:
    """First-channel image files by case name, ``{"001_LA_ED": .../imagesTr/001_LA_ED_0000.nii.gz, ...}``."""
    folder = Path(root) / f"images{split}"
    images = sorted(folder.glob(f"*_0000{ending}"))
    if not images:
        raise DataError(f"{folder}: expected images named CASE_0000{ending}, found none")
    others = sorted(p.name for p in folder.glob(f"*{ending}") if not _CHANNEL.search(p.name[: -len(ending)]))
    if others:
        warnings.warn(f"{folder}: ignoring {len(others)} file(s) without a channel suffix _XXXX (nnU-Net names "
                      f"images CASE_0000{ending}): {name_list(others)}", stacklevel=2)
    return {path.name[: -len(f"_0000{ending}")]: path for path in images}


def dataset_file_ending(root: str | Path) -> str:
    """The ``file_ending`` of ``root/dataset.json`` (``.nii.gz`` when the file or the key is absent).

    Raises:
        DataError: a ``dataset.json`` that is not a JSON object, or whose ``file_ending`` is not a string.
    """
    path = Path(root) / "dataset.json"
    return _read_description(path)["file_ending"] if path.is_file() else ".nii.gz"


def load_nnunet_raw(
    root: str | Path,
    split: str = "Tr",
    label_map: Mapping[int, int] | None = None,
    subjects: Iterable[str] | None = None,
) -> list[Record]:
    """Read an nnU-Net raw dataset folder into records.

    Args:
        root: the ``DatasetXXX_Name`` folder holding ``dataset.json``.
        split: ``"Tr"`` (``imagesTr`` + ``labelsTr``, labels required) or ``"Ts"`` (``imagesTs``, labels
            read from ``labelsTs`` when that folder exists).
        label_map: ``{dataset label: project label}``; default: derived from the label names.
        subjects: keep only the cases of these subjects (see :func:`parse_case_name`); ``None`` keeps all.

    Returns:
        Records ordered by case name, images ``(H, W, Z)`` (2D cases as ``(H, W, 1)``).

    Raises:
        MissingFileError: no ``dataset.json``, or a missing label file (named).
        DataError: a ``dataset.json`` that is not a JSON object, label values that are not integers >= 0,
            unknown label names, labels outside the declared ones, grids that differ, an empty images folder,
            corrupt files.
    """
    root = Path(root)
    if not root.is_dir():
        raise MissingFileError(f"{root}: nnU-Net dataset folder not found")
    if split not in ("Tr", "Ts"):
        raise ValueError(f"split must be 'Tr' or 'Ts', got {split!r}")
    subjects = code_list(subjects, "subjects", "['001', '002']")
    json_path = require_file(root / "dataset.json", "nnU-Net dataset.json")
    description = _read_description(json_path)
    declared = _declared_labels(description, json_path)
    lookup = _lookup(declared, label_map, json_path)
    ending = description["file_ending"]
    label_dir = root / f"labels{split}"
    with_labels = split == "Tr" or label_dir.is_dir()
    records = []
    wanted = None if subjects is None else set(subjects)
    cases = find_cases(root, split, ending)
    if with_labels and label_dir.is_dir():
        orphans = sorted(p.name for p in label_dir.glob(f"*{ending}") if p.name[: -len(ending)] not in cases)
        if orphans:
            warnings.warn(f"{label_dir}: ignoring {len(orphans)} label file(s) without an image in images{split}: "
                          f"{name_list(orphans)}", stacklevel=2)
    for case, image_path in cases.items():
        subject, view, phase = parse_case_name(case)
        if wanted is not None and subject not in wanted:
            continue
        label_path = label_dir / f"{case}{ending}" if with_labels else None
        volume, image, label = read_image_and_label(image_path, label_path, lookup)
        records.append(
            Record.from_nifti(
                volume, image, label, subject=subject, phase=phase, view=view, dataset="nnunet", info={"case": case}
            )
        )
    return records
