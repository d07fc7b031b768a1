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



@pytest.fixture(scope="session")
def stage2_folds(demo_run, tmp_path_factory) -> Path:
    """A stage-2 stage folder for both folds of the demo, which trains a stage 2 for fold 0 only: ``fold0`` its
    checkpoint, ``fold1`` the same weights saved as fold 1's (evaluation refuses a checkpoint trained as
    another fold; the pairing, not the training, is under test where this is used)."""
    stage = tmp_path_factory.mktemp("stage2") / "stage2-crocnet_specialists"
    source = demo_run / "stage2-crocnet_specialists/fold0/best.pt"
    for k in range(2):
        ckpt = read_checkpoint(source)
        ckpt["fold"] = k
        (stage / f"fold{k}").mkdir(parents=True)
        torch.save(ckpt, stage / f"fold{k}" / "best.pt")
    return stage


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


@pytest.fixture(scope="session")
def constant_stage1(demo_run, tmp_path_factory) -> Path:
    """A stage-1 folder like the demo's whose fold-k model labels every pixel as structure k + 1 (fold 0:
    LV, fold 1: MYO): the quick demo's one-epoch models predict nothing, so they cannot tell which fold's
    checkpoint scored an image; these can."""
    from crocnet.train.checkpoint import export_safetensors

    stage = tmp_path_factory.mktemp("constant") / "stage1-e2aunet"
    for k in range(2):
        ckpt = read_checkpoint(demo_run / f"stage1-e2aunet/fold{k}/best.pt")
        sd = ckpt["state_dict"]
        sd["head.weight"] = torch.zeros_like(sd["head.weight"])
        sd["head.bias"] = torch.full_like(sd["head.bias"], -10.0)
        sd["head.bias"][k] = 10.0  # channels (LV, MYO, RV, background)
        (stage / f"fold{k}").mkdir(parents=True)
        torch.save(ckpt, stage / f"fold{k}" / "best.pt")
        export_safetensors(ckpt, stage / f"fold{k}" / "best.safetensors")
    return stage
