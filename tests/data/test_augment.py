"""Batched augmentation: image and labels stay aligned, identity at p = 0, determinism by seed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from crocnet.data import Augment

SPATIAL = dict(p_blur=0, p_gamma=0, p_noise=0)


def _labels(b=4, h=48, w=40, device="cpu"):
    i, j = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    label = torch.zeros(b, h, w, dtype=torch.long, device=device)
    for n in range(b):  # structures at least 4 pixels thick
        label[n][((i - 20 - n) ** 2 + (j - 16) ** 2) < 13**2] = 2
        label[n][((i - 20 - n) ** 2 + (j - 16) ** 2) < 8**2] = 1
        label[n][((i - 34) ** 2 / 60 + (j - 31 + n) ** 2 / 30) < 1] = 3
    return label


@pytest.mark.parametrize("options", [dict(p_flip=0.5, p_affine=1, p_elastic=1), dict(p_flip=1, p_affine=0, p_elastic=0)])
def test_image_equal_to_labels_stays_aligned(options):
    label = _labels()
    image = label[:, None].float()
    out_image, out_label = Augment(**SPATIAL, **options)(image, label, torch.Generator().manual_seed(0))
    assert out_label.dtype == torch.long and out_label.shape == label.shape
    assert not torch.equal(out_label, label)
    # away from label boundaries (5x5 neighbourhood of one label) and from the zero padding beyond the
    # array border, bilinear and nearest sampling agree exactly
    as_float = out_label[:, None].float()
    interior = (F.max_pool2d(as_float, 5, 1, 2) == -F.max_pool2d(-as_float, 5, 1, 2))[:, 0]
    interior[:, :2] = interior[:, -2:] = interior[:, :, :2] = interior[:, :, -2:] = False
    assert interior.float().mean() > 0.4
    assert torch.equal(out_image[:, 0].round().long()[interior], out_label[interior])
    # one-hot channels moved bilinearly, then argmax, give the nearest-moved labels almost everywhere
    onehot = F.one_hot(label, 4).permute(0, 3, 1, 2).float()
    moved, moved_label = Augment(**SPATIAL, **options)(onehot, label, torch.Generator().manual_seed(0))
    assert (moved.argmax(1) == moved_label).float().mean() > 0.99


def test_flips_are_exact():
    label = _labels()
    image = torch.rand(4, 2, 48, 40)
    out_image, out_label = Augment(**SPATIAL, p_flip=1, p_affine=0, p_elastic=0)(image, label)
    torch.testing.assert_close(out_image, image.flip(-1, -2), atol=1e-5, rtol=0)
    assert torch.equal(out_label, label.flip(-1, -2))


def test_multichannel_masks_follow_the_image():
    label = _labels()
    masks = F.one_hot(label, 4).permute(0, 3, 1, 2).to(torch.uint8)  # (B, K, H, W)
    image = masks.float()
    out_image, out_masks = Augment(**SPATIAL, p_affine=1, p_elastic=1)(image, masks, torch.Generator().manual_seed(1))
    assert out_masks.shape == masks.shape and out_masks.dtype == torch.uint8
    assert (out_image.round().to(torch.uint8) == out_masks).float().mean() > 0.99


def test_identity_when_probabilities_are_zero():
    image, label = torch.randn(3, 1, 20, 24), _labels(3, 20, 24)
    out_image, out_label = Augment.identity()(image, label)
    assert torch.equal(out_image, image) and torch.equal(out_label, label)
    out_image, none = Augment.identity()(image)
    assert torch.equal(out_image, image) and none is None


def test_deterministic_by_seed_and_inputs_untouched():
    image, label = torch.rand(4, 1, 32, 32), _labels(4, 32, 32)
    image_copy, label_copy = image.clone(), label.clone()
    augment = Augment(p_flip=0.5, p_affine=1, p_elastic=1, p_blur=0.5, p_gamma=0.5, p_noise=0.5)
    a = augment(image, label, torch.Generator().manual_seed(3))
    b = augment(image, label, torch.Generator().manual_seed(3))
    c = augment(image, label, torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert torch.equal(image, image_copy) and torch.equal(label, label_copy)


def test_intensity_operations_respect_channels_and_labels():
    image, label = torch.rand(4, 2, 32, 32), _labels(4, 32, 32)
    augment = Augment(p_flip=0, p_affine=0, p_elastic=0, p_blur=1, p_gamma=1, p_noise=1, intensity_channels=(0,))
    out_image, out_label = augment(image, label, torch.Generator().manual_seed(0))
    assert torch.equal(out_image[:, 1], image[:, 1]) and torch.equal(out_label, label)
    assert not torch.allclose(out_image[:, 0], image[:, 0])
    blurred, _ = Augment(p_flip=0, p_affine=0, p_elastic=0, p_blur=1, p_gamma=0, p_noise=0)(image)
    assert blurred.diff(dim=-1).abs().mean() < image.diff(dim=-1).abs().mean()  # smoother
    torch.testing.assert_close(blurred.mean((-1, -2)), image.mean((-1, -2)), atol=0.02, rtol=0)


def test_shape_errors():
    with pytest.raises(ValueError, match="B, C, H, W"):
        Augment()(torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="label must be"):
        Augment()(torch.rand(2, 1, 8, 8), torch.zeros(2, 8, 9, dtype=torch.long))


def test_integer_image_is_a_clear_error():
    with pytest.raises(TypeError, match=r"^expected a floating-point image tensor, got torch\.uint8$"):
        Augment()(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))
    with pytest.raises(TypeError, match=r"got torch\.int64$"):
        Augment.identity()(torch.zeros(2, 1, 8, 8, dtype=torch.long))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_noise_on_half_precision_images(dtype):
    image = torch.rand(3, 2, 16, 12).to(dtype)
    out, _ = Augment(p_flip=0, p_affine=0, p_elastic=0, p_blur=0, p_gamma=0, p_noise=1)(image, None, torch.Generator().manual_seed(0))
    assert out.dtype == dtype and out.shape == image.shape
    assert not torch.equal(out, image) and (out.float() - image.float()).abs().max() < 0.2


@pytest.mark.gpu
def test_on_cuda_with_a_cuda_generator():
    label = _labels(device="cuda")
    image = label[:, None].float()
    generator = torch.Generator(device="cuda").manual_seed(0)
    augment = Augment(p_flip=0.5, p_affine=1, p_elastic=1, p_blur=0, p_gamma=0, p_noise=0)
    out_image, out_label = augment(image, label, generator)
    assert out_image.is_cuda and out_label.is_cuda
    assert (out_image[:, 0].round().long() == out_label).float().mean() > 0.99
    again = augment(image, label, torch.Generator(device="cuda").manual_seed(0))
    assert torch.equal(again[1], out_label)


def test_one_hot_targets_keep_their_background_outside_the_field_of_view():
    """Rotated or zoomed-out corners come from outside the image: with ``label_fill`` the one-hot stage-1
    targets there are background, exactly the one-hot of the moved label map, and every pixel has one class."""
    from crocnet.models import STAGE1_TARGET_FILL, stage1_targets

    label = _labels(b=8)
    image = torch.rand(8, 1, 48, 40)
    options = dict(**SPATIAL, p_flip=0.5, p_affine=1, p_elastic=0.5, scale=(0.7, 0.8))
    _, moved_label = Augment(**options)(image, label, torch.Generator().manual_seed(3))
    _, moved = Augment(**options, label_fill=STAGE1_TARGET_FILL)(image, stage1_targets(label), torch.Generator().manual_seed(3))
    assert torch.equal(moved, stage1_targets(moved_label))
    assert torch.equal(moved.sum(1), torch.ones(8, 48, 40))
    assert torch.equal(stage1_targets(torch.zeros(1, 1, 1, dtype=torch.long)).flatten(), torch.tensor(STAGE1_TARGET_FILL))
    # without the fill, the zoomed-out borders belong to no class
    _, unfilled = Augment(**options)(image, stage1_targets(label), torch.Generator().manual_seed(3))
    assert (unfilled.sum(1) == 0).float().mean() > 0.05
    with pytest.raises(ValueError, match=r"label_fill must be one number or one per label channel \(4\), got \(0, 1\)"):
        Augment(**options, label_fill=(0, 1))(image, stage1_targets(label))
