"""crocnet.metrics against brute-force surface distances, and the empty-mask policy."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from scipy import ndimage

from crocnet.metrics import MetricSummary, dice, hausdorff_distance, segmentation_metrics, summarize, surface_distances


def _random_mask(rng, shape, threshold=0.3):
    field = ndimage.gaussian_filter(rng.standard_normal(shape), 1.2)
    return field > threshold * field.std()


def _brute_surface_points(mask, spacing):
    """Surface voxels (mask minus its face-connected erosion, array border counting) as mm coordinates."""
    eroded = np.zeros_like(mask)
    inner = tuple(slice(1, -1) for _ in mask.shape)
    eroded[inner] = mask[inner]
    for axis in range(mask.ndim):
        for shift in (-1, 1):
            eroded &= np.roll(mask, shift, axis=axis)
    surface = mask & ~eroded
    return np.argwhere(surface) * np.asarray(spacing)


def _brute_force(pred, gt, spacing):
    a, b = _brute_surface_points(pred, spacing), _brute_surface_points(gt, spacing)
    d = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    a_to_b, b_to_a = d.min(1), d.min(0)
    hd = max(a_to_b.max(), b_to_a.max())
    hd95 = np.percentile(np.hstack([a_to_b, b_to_a]), 95)  # medpy.metric.binary.hd95
    return a_to_b, b_to_a, hd, hd95


@pytest.mark.parametrize(
    "shape, spacing",
    [((14, 17), (0.7, 1.9)), ((23, 11), (1.719, 1.719)), ((7, 9, 11), (10.0, 1.3, 0.8)), ((6, 8, 8), (2.5, 0.6, 1.1))],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hausdorff_matches_brute_force(shape, spacing, seed):
    rng = np.random.default_rng(seed)
    pred, gt = _random_mask(rng, shape), _random_mask(rng, shape)
    assert pred.any() and gt.any(), "the fixed seeds must give non-empty masks"
    a_to_b, b_to_a, hd, hd95 = _brute_force(pred, gt, spacing)
    to_gt, to_pred = surface_distances(pred, gt, spacing)
    np.testing.assert_allclose(to_gt, a_to_b, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(to_pred, b_to_a, rtol=1e-12, atol=1e-12)
    assert hausdorff_distance(pred, gt, spacing) == pytest.approx(hd, rel=1e-12)
    assert hausdorff_distance(pred, gt, spacing, percentile=95) == pytest.approx(hd95, rel=1e-12)
    assert dice(pred, gt) == pytest.approx(2 * (pred & gt).sum() / (pred.sum() + gt.sum()))


def test_known_distances_and_anisotropy():
    a, b = np.zeros((6, 7), bool), np.zeros((6, 7), bool)
    a[0, 0], b[3, 4] = True, True
    assert hausdorff_distance(a, b) == pytest.approx(5.0)
    assert hausdorff_distance(a, b, spacing=(2.0, 1.0)) == pytest.approx(math.hypot(6, 4))
    assert hausdorff_distance(a, b, spacing=(2.0, 1.0), percentile=95) == pytest.approx(math.hypot(6, 4))
    assert dice(a, b) == 0.0 and dice(a, a) == 1.0


def test_hd95_pools_both_directions():
    # pred: a 1-voxel-wide bar; gt: the same bar plus one far voxel: only one directed distance is large
    pred, gt = np.zeros((40, 5), bool), np.zeros((40, 5), bool)
    pred[:30, 2] = gt[:30, 2] = True
    gt[39, 2] = True
    to_gt, to_pred = surface_distances(pred, gt)
    pooled = np.concatenate([to_gt, to_pred])
    assert hausdorff_distance(pred, gt) == pytest.approx(10.0)
    assert hausdorff_distance(pred, gt, percentile=95) == pytest.approx(np.percentile(pooled, 95))
    assert hausdorff_distance(pred, gt, percentile=95) < 1.0  # 1 outlier of 61 distances


def test_mask_touching_the_array_border_and_singleton_axis():
    rng = np.random.default_rng(3)
    pred, gt = _random_mask(rng, (12, 12), -0.5), _random_mask(rng, (12, 12), 0.0)
    assert pred[0].any() or pred[:, 0].any()  # touches the border: border voxels are surface voxels
    *_, hd, hd95 = _brute_force(pred, gt, (1.5, 0.9))
    assert hausdorff_distance(pred, gt, (1.5, 0.9)) == pytest.approx(hd)
    # a long-axis image stored (H, W, 1) is measured as the 2D image
    assert hausdorff_distance(pred[..., None], gt[..., None], (1.5, 0.9, 8.0)) == pytest.approx(hd)
    assert hausdorff_distance(pred[..., None], gt[..., None], (1.5, 0.9, 8.0), percentile=95) == pytest.approx(hd95)


def test_empty_mask_policy():
    empty, full = np.zeros((5, 5), bool), np.zeros((5, 5), bool)
    full[2, 2] = True
    assert dice(empty, empty) == 1.0 and hausdorff_distance(empty, empty) == 0.0
    assert hausdorff_distance(empty, empty, percentile=95) == 0.0
    assert dice(full, empty) == 0.0 and dice(empty, full) == 0.0
    assert math.isnan(hausdorff_distance(full, empty)) and math.isnan(hausdorff_distance(empty, full, percentile=95))
    with pytest.raises(ValueError, match="non-empty"):
        surface_distances(full, empty)


def test_label_maps_and_bad_spacing_are_refused_even_for_empty_masks():
    labels = np.array([[0, 2], [1, 0]])
    with pytest.raises(ValueError, match=r"pred must be a mask \(bool or 0/1\), got the value 2; .* \(labels == k\)"):
        dice(labels, labels == 1)
    with pytest.raises(ValueError, match="gt must be a mask"):
        hausdorff_distance(labels == 1, labels * 0.5)
    empty = np.zeros((4, 4), bool)
    with pytest.raises(ValueError, match=r"spacing must be finite and > 0, got \(-1.0, 1.0\)"):
        hausdorff_distance(empty, empty, spacing=(-1.0, 1.0))
    assert dice(np.array([[0, 1]], np.uint8), np.array([[0.0, 1.0]])) == 1.0  # 0/1 in any dtype is a mask


@pytest.mark.parametrize("spacing", [(math.inf, 1.0), (1.0, -math.inf), (math.nan, 1.0)])
def test_non_finite_spacing_is_refused(spacing):
    a = np.zeros((4, 4), bool)
    a[1, 1] = True
    shown = re.escape(str(tuple(spacing)))
    for call in (lambda: hausdorff_distance(a, a, spacing), lambda: surface_distances(a, a, spacing),
                 lambda: segmentation_metrics(a.astype(np.uint8), a.astype(np.uint8), spacing)):
        with pytest.raises(ValueError, match=rf"spacing must be finite and > 0, got {shown}"):
            call()


@pytest.mark.parametrize("shape", [(0, 5), (0,), (3, 0, 2), ()])
def test_size_zero_and_zero_dimensional_arrays_are_refused(shape):
    none = np.zeros(shape, bool)
    message = rf"expected non-empty arrays of at least one dimension, got shape {re.escape(str(shape))}"
    for call in (lambda: dice(none, none), lambda: hausdorff_distance(none, none),
                 lambda: hausdorff_distance(none, none, percentile=95), lambda: surface_distances(none, none),
                 lambda: segmentation_metrics(none.astype(np.uint8), none.astype(np.uint8))):
        with pytest.raises(ValueError, match=message):
            call()


@pytest.mark.parametrize(
    "bad, shown",
    [(4.5, "4.5"), (math.nan, "nan"), (7, "7"), (-1, "-1"), (math.inf, "inf")],
)
@pytest.mark.parametrize("side", ["pred", "gt"])
def test_segmentation_metrics_refuses_bad_labels(bad, shown, side):
    good = np.zeros((6, 6), np.float64)
    good[1:4, 1:4] = 1
    wrong = good.copy()
    wrong[5, 5] = bad
    args = (wrong, good) if side == "pred" else (good, wrong)
    with pytest.raises(ValueError, match=rf"^{side}: expected integer labels in \{{0, 1, 2, 3\}}, got {shown}$"):
        segmentation_metrics(*args)
    with pytest.raises(ValueError, match=rf"^{side}: expected integer labels in \{{0, 1, 2, 3\}}, got {shown}$"):
        segmentation_metrics(*(torch.from_numpy(a) for a in args))  # torch input is checked the same way


def test_segmentation_metrics_label_check_details():
    labels = np.array([[0, 1], [2, 3]], np.int64)
    with pytest.raises(ValueError, match=r"^gt: expected an integer label map, got dtype bool$"):
        segmentation_metrics(labels, labels == 1)
    many = np.arange(20).reshape(4, 5)
    with pytest.raises(ValueError, match=r"^pred: expected integer labels in \{0, 1, 2, 3\}, got 4, 5, 6, 7, 8, \.\.\.$"):
        segmentation_metrics(many, many)
    # integer-valued floats are labels (M&Ms-2 stores them as float64); extra structures extend the set
    assert segmentation_metrics(labels.astype(np.float32), labels)["LV"]["dice"] == 1.0
    out = segmentation_metrics(labels + (labels == 3), labels + (labels == 3), structures={4: "X"})
    assert out == {"X": {"dice": 1.0, "hd": 0.0, "hd95": 0.0}}


@pytest.mark.parametrize("structures", [{"LV": 1}, [1, 2, 3], {}, {0: "background"}, {True: "LV"}, {1.5: "LV"}])
def test_segmentation_metrics_refuses_bad_structures(structures):
    labels = np.array([[0, 1], [2, 3]])
    with pytest.raises(ValueError, match=rf"^structures must be a non-empty mapping of label value \(int, not 0\) -> name, "
                                         rf"e.g. \{{1: 'LV', 2: 'MYO', 3: 'RV'\}}, got {re.escape(repr(structures))}$"):
        segmentation_metrics(labels, labels, structures=structures)


def test_masks_of_any_torch_float_dtype_and_non_numeric_arrays():
    a = np.zeros((6, 6), bool)
    a[1:4, 1:4] = True
    b = np.roll(a, 1, axis=0)
    for dtype in (torch.bfloat16, torch.float16):
        assert dice(torch.from_numpy(a).to(dtype), torch.from_numpy(b)) == dice(a, b)
    with pytest.raises(ValueError, match=r"^pred must be a mask \(bool or 0/1\), got dtype object; .* \(labels == k\)$"):
        dice(np.array([None, 1]), np.array([1, 1]))
    with pytest.raises(ValueError, match=r"^gt must be a mask \(bool or 0/1\), got dtype <U1;"):
        hausdorff_distance(np.array([1, 0]), np.array(["1", "0"]))


@pytest.mark.parametrize("percentile", [None, -1, 100.5, math.nan, "95", True])
def test_segmentation_metrics_refuses_bad_percentile(percentile):
    labels = np.array([[0, 1], [2, 3]])
    with pytest.raises(ValueError, match=rf"^percentile must be a number in \[0, 100\] \(e.g. 95 for HD95\), got {re.escape(repr(percentile))}$"):
        segmentation_metrics(labels, labels, percentile=percentile)
    if percentile is not None:  # None is hausdorff_distance's maximum; a bad number is refused even for empty masks
        empty = np.zeros((3, 3), bool)
        with pytest.raises(ValueError, match=r"percentile must be a number in \[0, 100\]"):
            hausdorff_distance(empty, empty, percentile=percentile)


def test_segmentation_metrics_percentile_key():
    labels = np.array([[0, 1, 1], [2, 2, 3]])
    assert set(segmentation_metrics(labels, labels, percentile=50)["LV"]) == {"dice", "hd", "hd50"}
    assert set(segmentation_metrics(labels, labels, percentile=np.float64(99.5))["RV"]) == {"dice", "hd", "hd99.5"}


def test_segmentation_metrics_per_structure_and_torch_input():
    rng = np.random.default_rng(5)
    gt = np.zeros((20, 24), np.uint8)
    gt[4:12, 4:10] = 1
    gt[3:13, 10:12] = 2
    pred = gt.copy()
    pred[4:6, 4:10] = 0  # LV shrinks; RV absent from both; MYO identical
    pred[rng.random(pred.shape) > 0.995] = 3  # a few RV voxels only in pred
    out = segmentation_metrics(torch.from_numpy(pred), torch.from_numpy(gt), spacing=(1.2, 0.8))
    assert set(out) == {"LV", "MYO", "RV"} and set(out["LV"]) == {"dice", "hd", "hd95"}
    assert out["MYO"] == {"dice": 1.0, "hd": 0.0, "hd95": 0.0}
    assert out["LV"]["dice"] == pytest.approx(2 * 36 / (36 + 48))
    assert out["LV"]["hd"] == pytest.approx(2 * 1.2)
    assert out["RV"]["dice"] == 0.0 and math.isnan(out["RV"]["hd"])
    with pytest.raises(ValueError, match="same shape"):
        segmentation_metrics(pred, gt[:10])


def test_summarize_counts_undefined_cases():
    s = summarize([1.0, float("nan"), 3.0, float("nan")])
    assert isinstance(s, MetricSummary)
    assert (s.mean, s.median, s.n, s.n_undefined) == (2.0, 2.0, 4, 2)
    assert "2 undefined" in str(s) and s.as_dict()["n_undefined"] == 2
    none = summarize([float("nan")])
    assert math.isnan(none.mean) and none.n_undefined == 1
    with pytest.raises(ValueError):
        summarize([float("inf")])
    with pytest.raises(TypeError, match=r"got None at index 1"):
        summarize([0.5, None])  # not silently one more undefined case
    assert summarize([np.float32(0.5), 1, np.int64(0)]).n == 3
