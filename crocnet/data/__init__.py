"""Cardiac MR data: readers returning one :class:`Record` type, splits, preprocessing, augmentation, phantoms.

Readers (all return ``list[Record]``, labels in the project's convention 0 bg, 1 LV, 2 MYO, 3 RV)::

    load_dataset("mnm2", root)      # M&Ms-2 archive or phantom output (load_mnm2)
    load_dataset("acdc", root)      # ACDC NIfTI release, labels remapped (load_acdc)
    load_dataset("acdc_h5", root)   # SSL4MIS/WSL4MIS HDF5 volumes, spacing unknown (load_acdc_h5)
    load_dataset("nnunet", root)    # nnU-Net raw dataset (load_nnunet_raw)

Arrays keep the NIfTI voxel-axis order ``(H, W, Z)`` (LA images ``(H, W, 1)``); :func:`slices` gives 2D
pairs. Splits by subject: :func:`mnm2_official_split`, :func:`kfold`, :func:`make_splits` (JSON).
:class:`PlaneTransform` resamples and crops/pads invertibly; :class:`Augment` augments batches on device.
"""

from .acdc import ACDC_TO_PROJECT, load_acdc, load_acdc_h5
from .augment import Augment
from .datasets import DATASETS, list_subjects, load_dataset, select
from .mnm2 import load_mnm2, read_dataset_information
from .nifti import NiftiVolume, read_image_and_label, read_nifti, write_nifti
from .nnunet import load_nnunet_raw
from .phantom import make_subject, write_overview_png, write_phantoms
from .preprocess import PlaneTransform
from .records import LABELS, Record, slices
from .splits import kfold, make_splits, mnm2_official_split, read_splits, write_splits
from .validation import DataError, MissingFileError

__all__ = [
    "ACDC_TO_PROJECT",
    "DATASETS",
    "LABELS",
    "Augment",
    "DataError",
    "MissingFileError",
    "NiftiVolume",
    "PlaneTransform",
    "Record",
    "kfold",
    "list_subjects",
    "load_acdc",
    "load_acdc_h5",
    "load_dataset",
    "load_mnm2",
    "load_nnunet_raw",
    "make_splits",
    "make_subject",
    "mnm2_official_split",
    "read_dataset_information",
    "read_image_and_label",
    "read_nifti",
    "read_splits",
    "select",
    "slices",
    "write_nifti",
    "write_overview_png",
    "write_phantoms",
    "write_splits",
]
