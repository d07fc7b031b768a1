"""Invertible preprocessing: resample + crop/pad, and back onto the native grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crocnet.data import PlaneTransform, load_mnm2
from crocnet.metrics import dice, hausdorff_distance


def _label_map(shape=(90, 70)):
    i, j = np.mgrid[: shape[0], : shape[1]]
    label = np.zeros(shape, np.uint8)
    label[(i - 45) ** 2 / 400 + (j - 30) ** 2 / 150 < 1] = 2
    label[(i - 45) ** 2 / 300 + (j - 30) ** 2 / 90 < 1] = 1
    label[(i - 40) ** 2 / 200 + (j - 52) ** 2 / 40 < 1] = 3
    return label


@pytest.mark.parametrize("size", [(128, 96), (90, 70), (64, 80), 100])
def test_crop_pad_only_is_exact(size):
    label = _label_map()
    transform = PlaneTransform.plan(label.shape, spacing=(1.5, 1.5), target_spacing=(1.5, 1.5), size=size)
    assert transform.resampled_shape == label.shape
    out = transform.apply(label, "label")
    assert out.shape == ((size, size) if isinstance(size, int) else size) and out.dtype == np.uint8
    back = transform.invert(out, "label")
    kept = transform.invert(np.ones_like(out), "label").astype(bool)  # native pixels inside the frame
    np.testing.assert_array_equal(back[kept], label[kept])
    assert not back[~kept].any()
    if kept.all():
        np.testing.assert_array_equal(back, label)


def test_crop_keeps_the_centre_and_pads_with_zero():
    label = _label_map()
    transform = PlaneTransform.plan(label.shape, size=(60, 100))
    out = transform.apply(label, "label")
    np.testing.assert_array_equal(out[:, 15:85], label[15:75])
    assert not out[:, :15].any() and not out[:, 85:].any()


def test_resample_round_trip_close_and_spacing_reported():
    label = _label_map()
    for spacing, target in [((1.72, 1.72), 1.25), ((0.9, 1.1), (1.4, 1.4))]:
        transform = PlaneTransform.plan(label.shape, spacing, target, size=128)
        out = transform.apply(label, "label")
        assert transform.output_spacing(spacing) == pytest.approx(np.broadcast_to(target, 2), rel=0.02)
        back = transform.invert(out, "label")
        assert back.shape == label.shape
        for k in (1, 2, 3):  # boundaries move by at most about one coarse pixel
            assert dice(back == k, label == k) > 0.85
            assert hausdorff_distance(back == k, label == k, spacing) <= 1.5 * max(transform.output_spacing(spacing))


def test_unknown_spacing_does_not_resample_and_center_is_honoured():
    transform = PlaneTransform.plan((90, 70), spacing=None, target_spacing=1.0, size=32, center=(40, 52))
    assert transform.resampled_shape == (90, 70)
    label = _label_map()
    out = transform.apply(label, "label")
    assert out[15:17, 15:17].min() == 3  # the RV centre is in the middle of the output


def test_torch_batches_images_and_probabilities():
    transform = PlaneTransform.plan((90, 70), (1.0, 1.0), 1.3, size=64)
    x = torch.rand(2, 3, 90, 70, dtype=torch.float64)
    y = transform.apply(x)
    assert y.shape == (2, 3, 64, 64) and y.dtype == torch.float64
    assert transform.invert(y, "probabilities").shape == (2, 3, 90, 70)
    with pytest.raises(ValueError, match="expected an array"):
        transform.apply(torch.rand(2, 5, 5))
    with pytest.raises(ValueError, match="kind"):
        transform.apply(x, "nearest")


def test_real_label_round_trip(mnm2_subject):
    record = load_mnm2(mnm2_subject, phases=("ED",))[0]
    label = record.label[..., 0]
    same = PlaneTransform.for_record(record, target_spacing=None, size=224)
    np.testing.assert_array_equal(same.invert(same.apply(label, "label"), "label"), label)  # heart is central
    finer = PlaneTransform.for_record(record, target_spacing=1.25, size=256)
    back = finer.invert(finer.apply(label, "label"), "label")
    for k in (1, 2, 3):
        assert dice(back == k, label == k) > 0.97
    probabilities = np.stack([finer.apply((label == k).astype(np.float32)) for k in range(4)])
    assert np.mean(finer.invert(probabilities, "probabilities").argmax(0) == label) > 0.995


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(shape=(0, 70)), r"shape \(H, W\) must be positive whole numbers, got \(0, 70\)"),
        (dict(shape=(90, 70), size=(128, 0)), r"size must be positive whole numbers, got \(128, 0\)"),
        (dict(shape=(90, 70), size=(128.5, 96)), r"size must be positive whole numbers"),
        (dict(shape=(90, 70), spacing=(0, 1.5), target_spacing=1.0), r"spacing must be finite and > 0, got \(0, 1\.5\)"),
        (dict(shape=(90, 70), spacing=(1.5, 1.5), target_spacing=float("inf")), r"target_spacing must be finite and > 0"),
        (dict(shape=(90, 70), spacing=(1.5, float("nan")), target_spacing=1.0), r"spacing must be finite and > 0"),
        (dict(shape=(90, 70), spacing=("a", 1.0), target_spacing=1.0), r"spacing must be finite and > 0"),
    ],
)
def test_plan_rejects_empty_shapes_and_non_positive_sizes(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PlaneTransform.plan(**kwargs)
