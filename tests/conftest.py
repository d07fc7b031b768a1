"""Shared test setup.

* Triton's interpreter is chosen before any kernel is defined: CPU-only machines run the Triton kernels
  in it (``TRITON_INTERPRET=1``), machines with CUDA compile them. An explicit environment value wins.
* Real data lives outside the project: ``CROCNET_SHARED_DATA`` (default ``../shared/data`` beside the
  checkout). Tests that need it skip with the reason when it is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

if "TRITON_INTERPRET" not in os.environ:
    os.environ["TRITON_INTERPRET"] = "0" if torch.cuda.is_available() else "1"

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    return Path(os.environ.get("CROCNET_SHARED_DATA", REPO_ROOT.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-scan folder (see ``../shared/data/README.md``); skips when it is not there."""
    root = shared_data_dir()
    if not root.is_dir():
        pytest.skip(f"real data not found at {root} (set CROCNET_SHARED_DATA to the shared/data folder)")
    return root


@pytest.fixture(scope="session")
def mnm2_subject(shared_data) -> Path:
    path = shared_data / "mnm2" / "001"
    if not (path / "001_LA_ED.nii.gz").is_file():
        pytest.skip(f"M&Ms-2 subject 001 not found under {path}")
    return path


@pytest.fixture(scope="session")
def acdc_h5(shared_data) -> Path:
    path = shared_data / "acdc_h5" / "volumes"
    if not path.is_dir() or not any(path.glob("*.h5")):
        pytest.skip(f"ACDC h5 volumes not found under {path}")
    return path


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device (the kernels at real sizes)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip_gpu)
