"""Fixtures of the training tests: one quick demo run (phantoms, both stages) shared by every module."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from crocnet.train import demo
from crocnet.train.checkpoint import read_checkpoint


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    assert demo.main(["--quick", "--out", str(out), "--no-progress"]) == 0
    return out



@pytest.fixture
def relabelled_stage2(demo_run, tmp_path):
    """``relabelled_stage2(crop_from)``: the demo's stage-2 checkpoint saved again, saying it was trained on
    crops of ``crop_from`` (the weights do not matter where this is used)."""

    def make(crop_from: str) -> Path:
        ckpt = read_checkpoint(demo_run / "stage2-crocnet_specialists/fold0/best.pt")
        ckpt["preprocess"]["crop_from"] = crop_from
        path = tmp_path / f"stage2-{crop_from}-crops.pt"
        torch.save(ckpt, path)
        return path

    return make
