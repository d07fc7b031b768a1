"""One entry point over the readers: ``load_dataset(name, root)`` and ``list_subjects(name, root)``."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

from .acdc import find_h5_volumes, find_patients, load_acdc, load_acdc_h5
from .mnm2 import find_subjects, load_mnm2
from .nnunet import dataset_file_ending, find_cases, load_nnunet_raw, parse_case_name
from .records import Record
from .validation import code_list

__all__ = ["DATASETS", "list_subjects", "load_dataset", "select"]

#: dataset name -> reader; ``"mnm2"`` also reads :mod:`crocnet.data.phantom` output
DATASETS: dict[str, Callable[..., list[Record]]] = {
    "mnm2": load_mnm2,
    "acdc": load_acdc,
    "acdc_h5": load_acdc_h5,
    "nnunet": load_nnunet_raw,
}


def load_dataset(name: str, root: str | Path, **options) -> list[Record]:
    """Read a dataset into records with :data:`DATASETS` ``[name]``; ``options`` go to that reader.

    Examples::

        load_dataset("mnm2", "data/phantom")                       # LA ED + ES of every subject
        load_dataset("mnm2", "MnM2", views=("LA", "SA"), subjects=fold["train"])
        load_dataset("acdc_h5", "../shared/data/acdc_h5/volumes")
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    return DATASETS[name](root, **options)


def list_subjects(name: str, root: str | Path) -> list[str]:
    """The subject ids of a dataset folder, sorted, found from file names only (no image is read)."""
    if name == "mnm2":
        return sorted(find_subjects(root))
    if name == "acdc":
        return sorted(find_patients(root))
    if name == "acdc_h5":
        return sorted(find_h5_volumes(root))
    if name == "nnunet":
        return sorted({parse_case_name(case)[0] for case in find_cases(root, ending=dataset_file_ending(root))})
    raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")


def select(records: Iterable[Record], subjects: Iterable[str]) -> list[Record]:
    """The records whose subject is in ``subjects`` (e.g. one fold's ``"train"`` list), in their order."""
    wanted = set(code_list(subjects, "subjects", "['001', '002']"))
    return [r for r in records if r.subject in wanted]
