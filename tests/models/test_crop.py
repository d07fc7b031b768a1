"""The crop: largest component, margin, clipping, empty predictions, batched crop / resize / paste back."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crocnet.crop import CropBox, crop_and_resize, heart_box, heart_boxes, largest_component, paste_back


def blob(shape, top, left, bottom, right) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[top:bottom, left:right] = True
    return mask


@pytest.mark.parametrize("margin", [0, 3, 15])
def test_box_holds_the_foreground_plus_margin(margin):
    rng = np.random.default_rng(0)
    mask = np.zeros((120, 100), dtype=bool)
    mask[40:70, 30:60] = rng.random((30, 30)) < 0.9
    mask[40:70, 30] = mask[40, 30:60] = mask[69, 30:60] = mask[40:70, 59] = True  # one component, known extent
    box = heart_box(mask, margin=margin)
    assert box == CropBox(40 - margin, 30 - margin, 70 + margin, 60 + margin)
    assert mask[box.slices].sum() == mask.sum()
    assert (box.height, box.width) == (30 + 2 * margin, 30 + 2 * margin)


def test_box_is_clipped_at_the_borders():
    mask = blob((64, 48), 0, 5, 10, 48)
    assert heart_box(mask, margin=15) == CropBox(0, 0, 25, 48)
    assert heart_box(blob((64, 48), 60, 40, 64, 44), margin=15) == CropBox(45, 25, 64, 48)


def test_largest_component_is_chosen():
    mask = blob((80, 80), 10, 10, 40, 40) | blob((80, 80), 60, 60, 70, 70)  # 900 px and 100 px
    keep = largest_component(mask)
    assert keep.sum() == 900 and not keep[60:70, 60:70].any()
    box = heart_box(mask, margin=2)
    assert box == CropBox(8, 8, 42, 42)
    # largest by pixel count, not by bounding box: a long thin line loses to a compact square
    line = np.zeros((80, 80), dtype=bool)
    line[5, 0:70] = True
    assert heart_box(line | blob((80, 80), 50, 50, 60, 60), margin=0) == CropBox(50, 50, 60, 60)


def test_connectivity():
    diagonal = np.eye(6, dtype=bool)
    assert largest_component(diagonal, connectivity=1).sum() == 1
    assert largest_component(diagonal, connectivity=2).sum() == 6


def test_empty_prediction_gives_no_box():
    assert heart_box(np.zeros((32, 32), dtype=bool)) is None
    fg = torch.zeros(3, 32, 32, dtype=torch.bool)
    fg[1, 10:12, 20:22] = True
    boxes = heart_boxes(fg, margin=1)
    assert boxes == [None, CropBox(9, 19, 13, 23), None]
    with pytest.raises(ValueError, match="margin"):
        heart_box(fg[1].numpy(), margin=-1)


def test_crop_and_resize_batched():
    x = torch.arange(2 * 3 * 20 * 30, dtype=torch.float32).reshape(2, 3, 20, 30)
    boxes = [CropBox(0, 0, 20, 30), CropBox(5, 10, 13, 18)]
    crops = crop_and_resize(x, boxes, 8)
    assert crops.shape == (2, 3, 8, 8)
    torch.testing.assert_close(crops[1], x[1, :, 5:13, 10:18])  # box of the crop size: no resampling
    masks = (torch.rand(2, 3, 20, 30) > 0.5).float()
    assert set(crop_and_resize(masks, boxes, (16, 12), mode="nearest-exact").unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(ValueError, match="one box per image"):
        crop_and_resize(x, boxes[:1], 8)


def test_paste_back_inverts_the_crop():
    x = torch.randn(2, 2, 24, 20)
    boxes = [CropBox(2, 3, 18, 19), CropBox(0, 4, 24, 20)]
    crops = crop_and_resize(x, boxes, (16, 16))
    pasted = paste_back(crops, boxes, (24, 20), fill=-7.0)
    torch.testing.assert_close(pasted[0, :, 2:18, 3:19], x[0, :, 2:18, 3:19])
    inside = torch.zeros(24, 20, dtype=torch.bool)
    inside[2:18, 3:19] = True
    assert (pasted[0][:, ~inside] == -7.0).all()
    assert (pasted[1, :, :, :4] == -7.0).all() and pasted.shape == (2, 2, 24, 20)


@pytest.mark.parametrize(
    "mask, message",
    [
        (np.full((8, 8), 0.3), r"expected a boolean foreground mask .* got dtype float64 with values in \[0\.3, 0\.3\]"),
        (np.full((8, 8), 2), r"got dtype int64 with values in \[2, 2\]"),
        (np.zeros((2, 8, 8), bool), r"expected a non-empty \(H, W\) foreground mask, got shape \(2, 8, 8\)"),
        (np.zeros((0, 8), bool), r"got shape \(0, 8\)"),
    ],
)
def test_heart_box_rejects_masks_that_are_not_boolean_images(mask, message):
    with pytest.raises(ValueError, match=message):
        heart_box(mask)


def test_heart_box_accepts_zero_one_integers_and_heart_boxes_wants_bool():
    assert heart_box(blob((20, 20), 5, 6, 9, 12).astype(np.uint8), margin=0) == CropBox(5, 6, 9, 12)
    with pytest.raises(ValueError, match=r"expected a boolean \(B, H, W\) foreground mask .*got torch\.float32"):
        heart_boxes(torch.rand(2, 8, 8))
    with pytest.raises(ValueError, match="connectivity must be 1 .* or 2"):
        heart_box(blob((20, 20), 5, 6, 9, 12), connectivity=3)


@pytest.mark.parametrize(
    "bounds, error, message",
    [
        ((5, 5, 5, 9), ValueError, r"0 <= top < bottom .* got top=5, left=5, bottom=5, right=9"),
        ((-1, 0, 4, 4), ValueError, "got top=-1"),
        ((0.5, 0, 4, 4), TypeError, r"integer pixel bounds, got \(0\.5, 0, 4, 4\)"),
    ],
)
def test_crop_box_rejects_empty_negative_or_fractional_bounds(bounds, error, message):
    with pytest.raises(error, match=message):
        CropBox(*bounds)


def test_crop_and_paste_reject_missing_and_out_of_image_boxes():
    x = torch.rand(2, 1, 16, 16)
    with pytest.raises(ValueError, match=r"box 1: expected a CropBox, got None \(no foreground found"):
        crop_and_resize(x, [CropBox(0, 0, 8, 8), None], 8)
    with pytest.raises(ValueError, match=r"box 0: CropBox\(.*\) reaches outside the 16x16 image"):
        crop_and_resize(x, [CropBox(0, 0, 8, 20), CropBox(0, 0, 8, 8)], 8)
    with pytest.raises(ValueError, match=r"expected images \(B, C, H, W\), got shape \(16, 16\)"):
        crop_and_resize(x[0, 0], [], 8)
    with pytest.raises(ValueError, match=r"size must be a positive int"):
        crop_and_resize(x, [CropBox(0, 0, 8, 8)] * 2, 0)
    with pytest.raises(ValueError, match=r"box 0: expected a CropBox, got None"):
        paste_back(torch.rand(1, 1, 8, 8), [None], (16, 16))
    with pytest.raises(ValueError, match=r"reaches outside the 12x12 image"):
        paste_back(torch.rand(1, 1, 8, 8), [CropBox(0, 0, 16, 16)], (12, 12))


@pytest.mark.parametrize("call, error, message", [
    (lambda x: crop_and_resize(x, CropBox(0, 0, 8, 8), 8), TypeError, "expected a sequence of CropBox, one per image, got CropBox"),
    (lambda x: crop_and_resize(x, [CropBox(0, 0, 8, 8)] * 2, 8.0), ValueError, r"size must be a positive int or \(h, w\) of positive ints, got 8.0"),
    (lambda x: crop_and_resize(x, [CropBox(0, 0, 8, 8)] * 2, True), ValueError, "size must be a positive int .* got True"),
    (lambda x: crop_and_resize(x, [CropBox(0, 0, 8, 8)] * 2, 8, mode="linear"), ValueError,
     r"mode must be one of \('nearest', 'nearest-exact', 'bilinear', 'bicubic', 'area'\), got 'linear'"),
    (lambda x: crop_and_resize(x.long(), [CropBox(0, 0, 8, 8)] * 2, 8), TypeError,
     "images of dtype torch.int64 are resized with mode 'nearest' or 'nearest-exact' .* got 'bilinear'"),
    (lambda x: paste_back(x, [CropBox(0, 0, 8, 8)] * 2, (16, 16, 1)), ValueError,
     r"image_size must be a positive int or \(h, w\) of positive ints, got \(16, 16, 1\)"),
    (lambda x: paste_back(x, [CropBox(0, 0, 8, 8)] * 2, (16.0, 16)), ValueError, r"image_size .* got \(16.0, 16\)"),
    (lambda x: heart_box(np.ones((8, 8), bool), margin=1.5), ValueError, r"margin must be an int >= 0 \(pixels\), got 1.5"),
    (lambda x: heart_boxes(np.ones((1, 8, 8), bool)), TypeError, r"expected a boolean \(B, H, W\) torch tensor .* got ndarray"),
])
def test_bad_sizes_modes_and_margins_are_clear_errors(call, error, message):
    with pytest.raises(error, match=message):
        call(torch.rand(2, 1, 16, 16))


def test_integer_maps_resize_with_nearest_modes():
    labels = torch.randint(0, 4, (1, 1, 16, 16))
    crop = crop_and_resize(labels, [CropBox(0, 0, 8, 8)], 8, mode="nearest")
    assert crop.dtype == torch.int64 and torch.equal(crop, labels[..., :8, :8])
    assert torch.equal(paste_back(crop, [CropBox(0, 0, 8, 8)], 16, mode="nearest")[..., :8, :8], crop)


def test_boolean_masks_crop_and_paste_back_as_booleans():
    mask = torch.from_numpy(blob((16, 16), 4, 4, 12, 12))[None, None]
    box = [CropBox(2, 2, 14, 14)]
    crop = crop_and_resize(mask, box, 24, mode="nearest-exact")
    assert crop.dtype == torch.bool and crop.sum() == 16 * 16
    back = paste_back(crop, box, (16, 16), mode="nearest-exact")
    assert back.dtype == torch.bool and torch.equal(back, mask)
    with pytest.raises(ValueError, match=r"boolean masks are resized with mode 'nearest' or 'nearest-exact', got 'bilinear'"):
        crop_and_resize(mask, box, 24)
