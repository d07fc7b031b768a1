"""The one record type every reader returns, the label convention, and 2D slicing.

Axis convention
---------------
``image`` and ``label`` keep the voxel-axis order of the NIfTI file as nibabel returns it, ``(i, j, k)``:
``(H, W, 1)`` for a long-axis (LA) image and ``(H, W, Z)`` for a short-axis (SA) stack. ``i, j`` are the
in-plane axes and ``k`` runs over slices, so 2D training samples are ``image[:, :, k]`` (see :func:`slices`).
``spacing[a]`` is the voxel size in mm along array axis ``a`` and ``affine`` maps ``(i, j, k, 1)`` to world
millimetres, exactly as stored in the file (M&Ms-2 LA affines are rotated; keep them when writing
predictions).

Label convention (M&Ms-2): 0 background, 1 LV blood pool, 2 LV myocardium, 3 RV blood pool. Readers of
datasets with another convention (ACDC: 1 RV, 3 LV) remap to this one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from .validation import DataError

__all__ = ["LABELS", "Record", "slices"]

#: label value -> structure name, the project's convention (M&Ms-2)
LABELS: dict[int, str] = {0: "background", 1: "LV", 2: "MYO", 3: "RV"}


@dataclass
class Record:
    """One image (and its label map) with geometry and subject metadata.

    Attributes:
        image: float32, ``(H, W, Z)`` in the file's voxel-axis order (``Z = 1`` for LA images).
        label: uint8 of the same shape (checked on construction) in the project's convention (0 bg, 1 LV,
            2 MYO, 3 RV), or ``None`` when the case has no label map.
        spacing: voxel size in mm per array axis, or ``None`` when unknown (e.g. ACDC HDF5 files).
        affine: ``(4, 4)`` voxel → world (mm) matrix, or ``None`` when unknown.
        subject: subject identifier, e.g. ``"001"`` (M&Ms-2) or ``"patient021"`` (ACDC).
        phase: cardiac phase, ``"ED"`` or ``"ES"``, or ``None`` when unknown.
        view: ``"LA"`` (long axis, 4-chamber) or ``"SA"`` (short-axis stack), or ``None`` when unknown.
        dataset: which reader produced it: ``"mnm2"``, ``"acdc"``, ``"acdc_h5"`` or ``"nnunet"``.
        vendor, disease: from the dataset's description when it has one, else ``None``.
        source: the image file read.
        header: the NIfTI header of the image (``None`` for non-NIfTI sources); reuse it to write predictions.
        info: other metadata of the dataset (M&Ms-2 scanner and field; ACDC frame, height, weight...).
    """

    image: np.ndarray
    label: np.ndarray | None
    spacing: tuple[float, ...] | None
    affine: np.ndarray | None
    subject: str
    phase: str | None
    view: str | None
    dataset: str
    vendor: str | None = None
    disease: str | None = None
    source: Path | None = None
    header: object | None = field(default=None, repr=False)
    info: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        if self.label is not None and np.shape(self.label) != np.shape(self.image):
            where = f" ({self.source})" if self.source is not None else ""
            raise DataError(
                f"record {self.name}{where}: expected a label map of the image's shape {np.shape(self.image)}, "
                f"got {np.shape(self.label)}"
            )

    @classmethod
    def from_nifti(cls, volume, image: np.ndarray, label: np.ndarray | None, **metadata) -> "Record":
        """A record whose geometry (spacing, affine, header) and ``source`` come from a read NIfTI volume.

        ``volume`` is the :class:`~crocnet.data.nifti.NiftiVolume` the image was read from; ``metadata`` gives
        the other fields (``subject``, ``phase``, ``view``, ``dataset`` and optionally ``vendor``,
        ``disease``, ``info``).
        """
        return cls(image=image, label=label, spacing=volume.spacing, affine=volume.affine, source=volume.path,
                   header=volume.header, **metadata)

    @property
    def name(self) -> str:
        """A case name unique within a dataset, e.g. ``"001_LA_ED"``."""
        return "_".join(part for part in (self.subject, self.view, self.phase) if part)

    @property
    def in_plane_spacing(self) -> tuple[float, float] | None:
        """``(spacing[0], spacing[1])`` in mm, the pixel size of every 2D slice, or ``None`` when unknown."""
        return None if self.spacing is None else (float(self.spacing[0]), float(self.spacing[1]))

    def __repr__(self) -> str:
        label = "none" if self.label is None else "yes"
        return (
            f"Record({self.name!r}, dataset={self.dataset!r}, shape={self.image.shape}, label={label}, "
            f"spacing={self.spacing}, vendor={self.vendor!r}, disease={self.disease!r})"
        )


def slices(record: Record, labelled_only: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """Yield the 2D ``(image, label)`` pairs of a record, slice by slice along the last axis.

    Args:
        record: a :class:`Record` with ``image`` of shape ``(H, W, Z)``.
        labelled_only: skip slices whose label map is all background (apical / basal SA slices).

    Yields:
        ``image[:, :, k]`` float32 ``(H, W)`` and ``label[:, :, k]`` uint8 ``(H, W)`` (or ``None`` when the
        record has no label map). Their pixel size is ``record.in_plane_spacing``.
    """
    for k in range(record.image.shape[2]):
        label = None if record.label is None else record.label[:, :, k]
        if labelled_only and (label is None or not label.any()):
            continue
        yield record.image[:, :, k], label
