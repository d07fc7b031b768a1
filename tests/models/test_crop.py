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
