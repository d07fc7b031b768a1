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


@pytest.mark.parametrize("stage1, stage2, message", [
    (dict(num_classes=3), {}, r"CroCNet's stage1 must predict 4 maps \(LV, MYO, RV, background\), got num_classes=3 \(E2AUNet\)"),
    ({}, dict(streams=4, in_chans=5), r"CroCNet's stage2 must predict 3 maps \(LV, MYO, RV\), got num_classes=4 \(SpecialistNets\)"),
    ({}, dict(in_chans=5), r"stage2 takes the image and the 3 stage-1 masks: in_chans = stage 1's 1 \+ 3 = 4, got 5"),
    (dict(in_chans=2), {}, r"in_chans = stage 1's 2 \+ 3 = 5, got 4"),
])
def test_stages_that_do_not_fit_together_are_refused(stage1, stage2, message):
    with pytest.raises(ValueError, match=message):
        CroCNet(E2AUNet(base_width=4, depth=1, **stage1), SpecialistNets(base_width=4, depth=1, **stage2), crop_size=16)


def test_a_single_stage2_network_with_four_maps_is_refused():
    """It would have given label 4 where its fourth map won."""
    with pytest.raises(ValueError, match=r"stage2 must predict 3 maps .* got num_classes=4 \(E2AUNet\)"):
        CroCNet(E2AUNet(base_width=4, depth=1), E2AUNet(in_chans=4, num_classes=4, base_width=4, depth=1), crop_size=16)
    with pytest.raises(TypeError, match="CroCNet's stage1 must be a model with a predict method .* got Conv2d"):
        CroCNet(nn.Conv2d(1, 4, 1), MaskEcho())


@pytest.mark.parametrize("kwargs, message", [
    (dict(crop_size=0), "crop_size must be a positive int or \\(h, w\\) of positive ints, got 0"),
    (dict(crop_size=16.0), "crop_size must be a positive int .* got 16.0"),
    (dict(crop_size=(16,)), r"crop_size must be a positive int .* got \(16,\)"),
    (dict(margin=1.5), r"margin must be an int >= 0 \(pixels\), got 1.5"),
    (dict(threshold=0), r"threshold must be a probability in \(0, 1\], got 0"),
    (dict(threshold=50), r"threshold must be a probability in \(0, 1\], got 50"),
    (dict(connectivity=8), r"connectivity must be 1 \(edge neighbours\) or 2 \(also diagonal\), got 8"),
])
def test_bad_pipeline_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CroCNet(OracleStage1(torch.zeros(1, 8, 8, dtype=torch.long)), MaskEcho(), **kwargs)


def test_bad_images_are_refused_before_anything_runs():
    model = tiny_crocnet(crop_size=16)
    nan = torch.randn(3, 1, 16, 16)
    nan[1, 0, 4, 4] = float("nan")
    for image, error, message in (
        (nan, ValueError, r"CroCNet: expected finite images, got NaN or inf in image\(s\) \[1\] of the batch"),
        (torch.zeros(0, 1, 16, 16), ValueError, r"CroCNet: expected non-empty images \(B, C, H, W\), got \(0, 1, 16, 16\)"),
        (torch.zeros(1, 1, 16, 16, dtype=torch.uint8), TypeError, "CroCNet: expected floating-point images, got torch.uint8"),
        (torch.zeros(1, 16, 16), ValueError, r"CroCNet: expected images \(B, C, H, W\), got \(1, 16, 16\)"),
    ):
        with pytest.raises(error, match=message):
            model(image)


def test_refine_checks_the_stage1_labels_and_takes_uint8():
    labels = torch.zeros(1, 40, 40, dtype=torch.int64)
    labels[0, 10:30, 10:30] = 1
    model = CroCNet(OracleStage1(labels), MaskEcho(), crop_size=32, margin=2)
    image = torch.randn(1, 1, 40, 40)
    out = model.refine(image, labels.to(torch.uint8))
    assert out.labels.dtype == torch.int64 and torch.equal(out.labels, model.refine(image, labels).labels)
    with pytest.raises(ValueError, match=r"expected stage-1 labels in 0..3 \(0 bg, 1 LV, 2 MYO, 3 RV\), got values in \[0, 4\]"):
        model.refine(image, labels * 4)
    with pytest.raises(TypeError, match="expected integer stage-1 labels .* got dtype torch.float32"):
        model.refine(image, labels.float())
    with pytest.raises(TypeError, match="expected integer stage-1 labels .* got dtype torch.bool"):
        model.refine(image, labels.bool())


def test_stage2_output_of_another_layout_is_named():
    labels = torch.zeros(1, 20, 20, dtype=torch.int64)
    labels[0, 5:15, 5:15] = 2

    class AllChannels(MaskEcho):
        def predict(self, x):
            return x

    model = CroCNet(OracleStage1(labels), AllChannels(), crop_size=16)
    with pytest.raises(ValueError, match=r"CroCNet: stage 2 must predict \(B, 3, h, w\) = \(1, 3, 16, 16\) on the crops .* got \(1, 4, 16, 16\)"):
        model(torch.randn(1, 1, 20, 20))


def test_label_helpers_refuse_bad_label_maps_and_maps():
    with pytest.raises(TypeError, match="expected integer labels .* got dtype torch.float32"):
        label_masks(torch.full((1, 4, 4), 1.7))  # was silently LV
    with pytest.raises(ValueError, match=r"expected labels in 0..3 .* got values in \[-1, 0\]"):
        stage1_targets(torch.tensor([[[0, -1]]]))
    with pytest.raises(ValueError, match=r"expected labels \(B, H, W\) .* got \(4, 4\)"):
        label_masks(torch.zeros(4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"expected binary probability maps \(B, 3, H, W\) ordered LV, MYO, RV, got \(1, 4, 2, 2\)"):
        merge_binary_maps(torch.rand(1, 4, 2, 2))  # was label 4 where channel 3 won
    with pytest.raises(ValueError, match=r"threshold must be a probability in \(0, 1\], got 0"):
        merge_binary_maps(torch.rand(1, 3, 2, 2), threshold=0)  # was LV wherever every map is 0
    labels = torch.zeros(1, 12, 12, dtype=torch.long)
    with pytest.raises(ValueError, match=r"stage2_inputs: expected stage-1 labels \(B, H, W\) on the image's grid \(1, 16, 16\), got \(1, 12, 12\)"):
        stage2_inputs(torch.randn(1, 1, 16, 16), labels, [CropBox(0, 0, 8, 8)], 8)
    with pytest.raises(TypeError, match="stage2_inputs: expected floating-point images, got torch.int64"):
        stage2_inputs(torch.zeros(1, 1, 12, 12, dtype=torch.long), labels, [CropBox(0, 0, 8, 8)], 8)


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
