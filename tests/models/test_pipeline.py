"""The CroCNet pipeline: any input size, label conventions, crop / paste back, fallback, the real M&Ms-2 image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from crocnet.crop import CropBox
from crocnet.models import (
    CroCNet,
    E2AUNet,
    SpecialistNets,
    label_masks,
    merge_binary_maps,
    stage1_targets,
    stage1_to_labels,
    stage2_inputs,
)


class OracleStage1(nn.Module):
    """Stage 1 that 'predicts' given label maps (channels LV, MYO, RV, background)."""

    size_divisor = 1

    def __init__(self, labels: torch.Tensor):
        super().__init__()
        self.labels = labels

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        onehot = F.one_hot(self.labels, 4).permute(0, 3, 1, 2).to(x.dtype)
        return torch.cat([onehot[:, 1:], onehot[:, :1]], dim=1)


class MaskEcho(nn.Module):
    """Stage 2 that returns its input masks as probabilities."""

    size_divisor = 1

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 1:]


def tiny_crocnet(crop_size=32) -> CroCNet:
    return CroCNet(E2AUNet(base_width=4, depth=2), SpecialistNets(base_width=4, depth=2), crop_size=crop_size).eval()


def test_label_conventions():
    probs = torch.zeros(1, 4, 1, 5)
    probs[0, :, 0, 0] = torch.tensor([0.1, 0.1, 0.1, 0.9])  # background
    probs[0, :, 0, 1] = torch.tensor([0.9, 0.2, 0.1, 0.1])  # LV
    probs[0, :, 0, 2] = torch.tensor([0.2, 0.8, 0.1, 0.1])  # MYO
    probs[0, :, 0, 3] = torch.tensor([0.2, 0.3, 0.7, 0.1])  # RV
    probs[0, :, 0, 4] = torch.tensor([0.6, 0.7, 0.1, 0.4])  # two foreground channels: the larger wins
    assert stage1_to_labels(probs).tolist() == [[[0, 1, 2, 3, 2]]]
    binary = torch.tensor([[0.1, 0.2, 0.3], [0.9, 0.1, 0.1], [0.6, 0.7, 0.1], [0.1, 0.4, 0.5]]).T[None, :, None]
    assert merge_binary_maps(binary).tolist() == [[[0, 1, 2, 3]]]


def test_targets_and_stage2_inputs():
    labels = torch.randint(0, 4, (2, 12, 10))
    targets = stage1_targets(labels)
    assert targets.shape == (2, 4, 12, 10) and torch.equal(targets.sum(1), torch.ones(2, 12, 10))
    assert torch.equal(stage1_to_labels(targets), labels)
    assert torch.equal(targets[:, :3], label_masks(labels)) and torch.equal(targets[:, 3], (labels == 0).float())
    image = torch.randn(2, 1, 12, 10)
    boxes = [CropBox(2, 1, 10, 9), CropBox(0, 0, 8, 8)]
    x = stage2_inputs(image, labels, boxes, 8)  # boxes of the crop size: plain slicing
    assert x.shape == (2, 4, 8, 8)
    torch.testing.assert_close(x[0, 0], image[0, 0, 2:10, 1:9])
    torch.testing.assert_close(x[1, 1:], label_masks(labels)[1, :, :8, :8])


@pytest.mark.parametrize("size", [(32, 32), (37, 53), (20, 70)])
def test_any_input_size(size):
    model = tiny_crocnet()
    with torch.inference_mode():
        out = model(torch.randn(2, 1, *size))
    assert out.labels.shape == out.stage1_labels.shape == (2, *size)
    assert out.labels.dtype == torch.int64 and set(out.labels.unique().tolist()) <= {0, 1, 2, 3}
    assert out.fallback.shape == (2,) and out.fallback.dtype == torch.bool
    assert len(out.boxes) == 2
    for box, fallback in zip(out.boxes, out.fallback.tolist()):
        assert (box is None) == fallback


def test_crop_removes_outliers_and_keeps_the_heart():
    labels = torch.zeros(2, 60, 80, dtype=torch.int64)
    labels[0, 20:40, 30:40] = 1
    labels[0, 20:40, 40:44] = 2
    labels[0, 20:40, 44:55] = 3
    labels[0, 55:58, 2:5] = 1  # an outlier far from the heart
    model = CroCNet(OracleStage1(labels), MaskEcho(), crop_size=48, margin=5)
    out = model(torch.randn(2, 1, 60, 80))
    assert out.boxes == [CropBox(15, 25, 45, 60), None]
    assert out.fallback.tolist() == [False, True]
    assert torch.equal(out.stage1_labels, labels)
    heart = labels[0].clone()
    heart[55:58, 2:5] = 0
    agree = (out.labels[0] == heart).float().mean()
    assert agree > 0.98, agree
    assert (out.labels[0, 50:, :] == 0).all()  # the outlier is gone
    assert torch.equal(out.labels[1], labels[1])
    assert out.probabilities.shape == (2, 3, 60, 80)
    assert torch.equal(merge_binary_maps(out.probabilities[:1]), out.labels[:1])
    assert (out.probabilities[0, :, :15] == 0).all() and (out.probabilities[1] == 0).all()  # outside the box, fallback


def test_refine_runs_stage2_on_given_labels_of_any_grid():
    labels = torch.zeros(1, 90, 120, dtype=torch.int64)
    labels[0, 30:60, 40:70] = 3
    model = CroCNet(OracleStage1(labels[:, :9, :12]), MaskEcho(), crop_size=48, margin=10)  # stage 1 is not run
    out = model.refine(torch.randn(1, 1, 90, 120), labels)
    assert out.boxes == [CropBox(20, 30, 70, 80)] and not out.fallback.any()
    assert (out.labels == labels).float().mean() > 0.99
    with pytest.raises(ValueError, match="same grid"):
        model.refine(torch.randn(1, 1, 90, 120), labels[:, :80])


def test_no_heart_falls_back_to_stage1():
    stage1 = E2AUNet(base_width=4, depth=2).eval()
    with torch.no_grad():
        stage1.head.weight.zero_()
        stage1.head.bias.copy_(torch.tensor([-5.0, -5.0, -5.0, 5.0]))  # background everywhere
    model = CroCNet(stage1, SpecialistNets(base_width=4, depth=2), crop_size=32).eval()
    with torch.inference_mode():
        out = model(torch.randn(3, 1, 40, 40))
    assert out.fallback.all() and out.boxes == [None, None, None]
    assert (out.labels == 0).all()


def test_stage2_single_network_works_too():
    single = E2AUNet(in_chans=4, num_classes=3, base_width=4, depth=2)
    model = CroCNet(E2AUNet(base_width=4, depth=2), single, crop_size=16).eval()
    with torch.inference_mode():
        assert model(torch.randn(1, 1, 24, 24)).labels.shape == (1, 24, 24)


def test_crop_size_must_suit_stage2():
    with pytest.raises(ValueError, match="crop_size"):
        CroCNet(E2AUNet(base_width=4, depth=2), SpecialistNets(base_width=4, depth=3), crop_size=20)


def load_la_ed(subject_dir):
    nib = pytest.importorskip("nibabel")
    image = np.asarray(nib.load(subject_dir / "001_LA_ED.nii.gz").dataobj, dtype=np.float32).squeeze()
    gt = np.asarray(nib.load(subject_dir / "001_LA_ED_gt.nii.gz").dataobj).squeeze().astype(np.int64)
    image = (image - image.mean()) / image.std()
    return torch.from_numpy(image)[None, None], torch.from_numpy(gt)[None]


def test_real_mnm2_la_image(mnm2_subject):
    image, _ = load_la_ed(mnm2_subject)
    assert image.shape == (1, 1, 256, 256)
    model = CroCNet(E2AUNet(base_width=4, depth=4), SpecialistNets(base_width=4, depth=4), crop_size=64).eval()
    with torch.inference_mode():
        for x in (image, image[..., 3:250, 5:240]):  # the scan, and a crop not divisible by 16
            out = model(x)
            assert out.labels.shape == x.shape[:1] + x.shape[2:]
            assert set(out.labels.unique().tolist()) <= {0, 1, 2, 3}


def test_real_mnm2_crop_holds_the_heart(mnm2_subject):
    image, gt = load_la_ed(mnm2_subject)
    out = CroCNet(OracleStage1(gt), MaskEcho(), crop_size=128)(image)
    (box,) = out.boxes
    rows, cols = np.nonzero(gt[0].numpy())
    assert box == CropBox(rows.min() - 15, cols.min() - 15, rows.max() + 16, cols.max() + 16)
    assert (out.labels == gt).float().mean() > 0.99
