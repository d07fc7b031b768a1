"""M&Ms-2 reader (the native archive layout, also what :mod:`crocnet.data.phantom` writes).

Layout::

    MnM2/dataset_information.csv          SUBJECT_CODE, DISEASE, VENDOR, SCANNER, FIELD
    MnM2/dataset/NNN/NNN_LA_ED.nii.gz     long axis, 4-chamber, (H, W, 1)
    MnM2/dataset/NNN/NNN_LA_ED_gt.nii.gz  its labels: 0 bg, 1 LV, 2 MYO, 3 RV (stored as float64)
    MnM2/dataset/NNN/NNN_{LA,SA}_{ED,ES}[_gt].nii.gz

``root`` may be the ``MnM2`` folder, its ``dataset`` folder, a folder of ``NNN`` subject folders, or one
subject folder. Uncompressed ``.nii`` files are read too. ``dataset_information.csv`` is looked for where the
layout puts it (see :func:`find_information_csv`); it is optional (vendor and disease are then ``None``).
"""

from __future__ import annotations

import csv
import re
import warnings
from pathlib import Path
from typing import Iterable

from .nifti import read_image_and_label
from .records import Record
from .validation import DataError, MissingFileError, code_list, name_list, not_text, require_file

__all__ = [
    "INFORMATION_COLUMNS",
    "find_information_csv",
    "find_subjects",
    "load_mnm2",
    "read_dataset_information",
    "read_subject",
]

#: the columns of ``dataset_information.csv``
INFORMATION_COLUMNS = ("SUBJECT_CODE", "DISEASE", "VENDOR", "SCANNER", "FIELD")
_SUBJECT = re.compile(r"^\d{3}$")


def read_dataset_information(path: str | Path) -> dict[str, dict[str, str]]:
    """Read ``dataset_information.csv`` into ``{"001": {"DISEASE": ..., "VENDOR": ..., ...}, ...}``.

    Subject codes are written as three digits whether the csv stores ``1`` or ``001``; two rows for one
    subject are an error. A UTF-8 byte-order mark (as spreadsheet programs write) is skipped.
    """
    _, rows = read_information_rows(path)
    return {subject: {k: row[k] for k in INFORMATION_COLUMNS[1:]} for subject, row in rows.items()}


def read_information_rows(path: str | Path) -> tuple[list[str], dict[str, dict[str, str]]]:
    """The columns (M&Ms-2's first, then any others in file order) and the whole rows, by three-digit
    subject code, of ``dataset_information.csv``, with the checks of :func:`read_dataset_information`."""
    path = require_file(Path(path), "M&Ms-2 dataset_information.csv")
    try:
        return _read_information_rows(path)
    except UnicodeDecodeError as exc:
        raise DataError(not_text(path, "a CSV file with columns " + ", ".join(INFORMATION_COLUMNS), exc)) from None


def _read_information_rows(path: Path) -> tuple[list[str], dict[str, dict[str, str]]]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in INFORMATION_COLUMNS if c not in columns]
        if missing:
            raise DataError(f"{path}: expected columns {', '.join(INFORMATION_COLUMNS)}, missing {', '.join(missing)}")
        table, lines = {}, {}
        for row in reader:
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
            if not any(row.values()):
                continue  # a blank row (a spreadsheet's padding, ",,,,")
            code = row["SUBJECT_CODE"]
            if not code.isdigit():
                raise DataError(f"{path}: expected a numeric SUBJECT_CODE, got {code!r}")
            subject = f"{int(code):03d}"
            if subject in lines:
                first_code, first_line = lines[subject]
                raise DataError(
                    f"{path}: expected one row per subject, got SUBJECT_CODE {first_code!r} (line {first_line}) "
                    f"and {code!r} (line {reader.line_num}), both subject {subject}"
                )
            lines[subject] = (code, reader.line_num)
            table[subject] = row
    extra = [c for c in dict.fromkeys(columns) if c and c not in INFORMATION_COLUMNS]
    return list(INFORMATION_COLUMNS) + extra, table


#: written by ``crocnet phantom`` before its first file and removed after its last: a set holding it is partial
INCOMPLETE = ".phantom-incomplete"


def _is_subject_folder(folder: Path) -> bool:
    """``NNN/`` holding ``NNN_*.nii[.gz]`` files: one subject's folder."""
    return bool(_SUBJECT.match(folder.name)) and any(folder.glob(f"{folder.name}_*.nii*"))


def _layout_folders(root: Path) -> list[Path]:
    """The folders an M&Ms-2 root's ``dataset_information.csv`` may sit in: ``root``; for a ``dataset`` folder,
    the ``MnM2`` folder above; for one subject folder, its folder of subjects and the ``MnM2`` folder above
    their ``dataset`` folder."""
    places = [root]
    if root.name == "dataset":
        places.append(root.parent)
    elif _is_subject_folder(root):
        places.append(root.parent)
        if root.parent.name == "dataset":
            places.append(root.parent.parent)
    return places


def find_information_csv(root: str | Path) -> Path | None:
    """``dataset_information.csv`` of an M&Ms-2 root, or ``None``: in ``root``; for a ``dataset`` folder, in the
    ``MnM2`` folder above it; for one subject folder, in its folder of subjects or the ``MnM2`` folder above
    their ``dataset`` folder. Never in any other folder above (another dataset's CSV, a phantom set's say,
    would give real subjects its vendors and diseases)."""
    places = _layout_folders(Path(root).resolve())
    return next((d / "dataset_information.csv" for d in places if (d / "dataset_information.csv").is_file()), None)


def find_subjects(root: str | Path) -> dict[str, Path]:
    """Subject folders ``{"001": path, ...}`` under an M&Ms-2 root (see the module docstring for the forms).

    Raises:
        MissingFileError: ``root`` does not exist.
        DataError: no subject folder (``NNN`` with ``NNN_*.nii.gz`` files) was found.
    """
    root = Path(root)
    if not root.is_dir():
        raise MissingFileError(f"{root}: M&Ms-2 folder not found")
    partial = next((d / INCOMPLETE for d in _layout_folders(root.resolve()) if (d / INCOMPLETE).exists()), None)
    if partial is not None:
        raise DataError(f"{partial.parent}: a `crocnet phantom` into this folder was interrupted ({INCOMPLETE} is "
                        f"there): run the same command again to finish the set")
    if _is_subject_folder(root):
        return {root.name: root}
    base = root / "dataset" if (root / "dataset").is_dir() else root
    folders = [p for p in sorted(base.iterdir()) if p.is_dir() and _SUBJECT.match(p.name)]
    found = {p.name: p for p in folders if any(p.glob("*.nii*"))}
    if not found:
        raise DataError(
            f"{root}: expected M&Ms-2 subject folders (dataset/NNN/NNN_LA_ED.nii.gz ...), found none"
        )
    empty = [p.name for p in folders if p.name not in found]
    if empty:
        warnings.warn(f"{base}: skipping {len(empty)} subject folder(s) without NIfTI files: {name_list(empty)}",
                      stacklevel=2)
    return found


def _nifti_file(folder: Path, stem: str, what: str) -> Path:
    """``folder/stem.nii.gz``, else ``folder/stem.nii``; missing, a :class:`MissingFileError` that names a file
    differing only in case (the names are case-sensitive)."""
    for suffix in (".nii.gz", ".nii"):
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    wanted = {f"{stem}{suffix}".lower() for suffix in (".nii.gz", ".nii")}
    near = sorted(p.name for p in folder.glob("*") if p.name.lower() in wanted) if folder.is_dir() else []
    hint = f"; found {name_list(near)}, which differs in case (the names are case-sensitive)" if near else ""
    raise MissingFileError(f"{folder / stem}.nii.gz: {what} not found (expected {stem}.nii.gz or {stem}.nii){hint}")


def read_subject(
    subject_dir: str | Path,
    views: Iterable[str] = ("LA",),
    phases: Iterable[str] = ("ED", "ES"),
    labels: bool = True,
    information: dict[str, str] | None = None,
) -> list[Record]:
    """Read the requested views and phases of one subject folder ``NNN/``.

    Args:
        subject_dir: the folder holding ``NNN_{LA,SA}_{ED,ES}[_gt].nii.gz``.
        views: ``"LA"`` and/or ``"SA"``.
        phases: ``"ED"`` and/or ``"ES"``.
        labels: read the ``_gt`` label maps (a missing one is an error); ``False`` gives ``label=None``.
        information: this subject's row of ``dataset_information.csv`` (vendor, disease, scanner, field).

    Returns:
        One :class:`Record` per (view, phase), LA images as ``(H, W, 1)``, SA stacks as ``(H, W, Z)``.
    """
    subject_dir = Path(subject_dir)
    subject = subject_dir.name
    information = information or {}
    views = code_list(views, "views", "['LA', 'SA']")
    phases = code_list(phases, "phases", "['ED', 'ES']")
    records = []
    for view in views:
        for phase in phases:
            if view not in ("LA", "SA") or phase not in ("ED", "ES"):
                raise ValueError(f"view must be LA or SA and phase ED or ES, got {view!r}, {phase!r}")
            image_path = _nifti_file(subject_dir, f"{subject}_{view}_{phase}", f"{view} {phase} image")
            label_path = (_nifti_file(subject_dir, f"{subject}_{view}_{phase}_gt", f"{view} {phase} label map")
                          if labels else None)
            volume, image, label = read_image_and_label(image_path, label_path)
            records.append(
                Record.from_nifti(
                    volume,
                    image,
                    label,
                    subject=subject,
                    phase=phase,
                    view=view,
                    dataset="mnm2",
                    vendor=information.get("VENDOR") or None,
                    disease=information.get("DISEASE") or None,
                    info={k: information[k] for k in ("SCANNER", "FIELD") if information.get(k)},
                )
            )
    return records


def load_mnm2(
    root: str | Path,
    views: Iterable[str] = ("LA",),
    phases: Iterable[str] = ("ED", "ES"),
    subjects: Iterable[str] | None = None,
    labels: bool = True,
) -> list[Record]:
    """Read an M&Ms-2 dataset (or phantom output) into records, ordered by subject, view, phase.

    Args:
        root: the ``MnM2`` folder (with ``dataset_information.csv`` and ``dataset/``), the ``dataset``
            folder, a folder of ``NNN`` folders or one subject folder.
        views, phases: which images to read per subject (default: the LA ED and ES images).
        subjects: restrict to these subject codes (e.g. one fold of :func:`crocnet.data.splits.kfold`);
            a code with no folder is an error.
        labels: read the ``_gt`` label maps.
    """
    root = Path(root)
    views = code_list(views, "views", "['LA', 'SA']")
    phases = code_list(phases, "phases", "['ED', 'ES']")
    subjects = code_list(subjects, "subjects", "['001', '002']")
    found = find_subjects(root)
    csv_path = find_information_csv(root)
    information = read_dataset_information(csv_path) if csv_path else {}
    if subjects is not None:
        wanted = [f"{int(s):03d}" if str(s).isdigit() else str(s) for s in subjects]
        absent = [s for s in wanted if s not in found]
        if absent:
            raise MissingFileError(f"{root}: subject folders not found: {', '.join(absent)}")
        found = {s: found[s] for s in wanted}
    views, phases = tuple(views), tuple(phases)
    records = []
    for subject, path in found.items():
        records += read_subject(path, views, phases, labels, information.get(subject))
    return records
