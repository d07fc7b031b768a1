"""Segmenter: native-grid decoding of resampled probabilities, CroCNet's fallback, ensembles of stage-1 and of
stage-2 models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from crocnet.crop import crop_and_resize, heart_box
from crocnet.data import Record
from crocnet.models import CroCNet, MeanEnsemble, merge_binary_maps, stage1_to_labels
from crocnet.train.checkpoint import read_checkpoint
from crocnet.train.inference import Segmenter
from crocnet.train.samples import normalise, plan_transform


class SoftDisc(nn.Module):
    """Stage 1 'predicting' a disc of LV with soft edges in every image whose mean is positive, else background."""

    size_divisor = 1

    def __init__(self, radius: float = 0.22):
        super().__init__()
        self.radius = radius

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        yy, xx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
        r = ((yy - 0.45 * h) ** 2 + (xx - 0.55 * w) ** 2).sqrt()
        lv = torch.sigmoid((self.radius * h - r) / 0.8).expand(x.shape[0], h, w)
        lv = lv * (x.mean(dim=(1, 2, 3)) > 0).float()[:, None, None]
        zero = torch.zeros_like(lv)
        return torch.stack([lv, zero, zero, 1 - lv], dim=1)


class BlurMasks(nn.Module):
    """Stage 2 returning its input masks blurred: soft probability maps."""

    size_divisor = 1

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x[:, 1:], 5, stride=1, padding=2, count_include_pad=False)


def frame(size: int) -> dict:
    return {"image_size": size, "target_spacing": None}


def soft_disc_segmenter(demo_run, members, crop_from: str = "frame") -> Segmenter:
    """A Segmenter whose networks are replaced by the hand-made ones above (the demo's checkpoints only load),
    cropping stage 1's network frame or (``crop_from="native"``) the native image."""
    seg = Segmenter(demo_run / "stage1-e2aunet/fold0", demo_run / "stage2-crocnet_specialists/fold0")
    seg.members = members
    seg.pipeline = CroCNet(members[0][0], BlurMasks(), crop_size=32, margin=3)
    seg.crop_from = crop_from
    return seg


def record(image: np.ndarray) -> Record:
    return Record(image=image, label=None, spacing=None, affine=None, subject="s", phase=None, view="SA", dataset="acdc_h5")


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    image = np.random.default_rng(0).random((80, 72, 3), dtype=np.float32) + 1.0
    image[:, :, 1] = -1.0  # no heart here: stage 1 finds nothing, CroCNet falls back
    return image


def test_native_labels_are_decoded_from_resampled_probabilities(demo_run, image):
    seg = soft_disc_segmenter(demo_run, [(SoftDisc(), frame(32))])
    out = seg.segment(record(image))
    assert out.labels.shape == out.stage1.shape == (80, 72, 3) and out.probabilities.shape == (80, 72, 3, 4)
    assert out.fallback_slices == 1

    native = torch.from_numpy(out.probabilities).permute(2, 3, 0, 1)
    np.testing.assert_array_equal(out.stage1, stage1_to_labels(native).permute(1, 2, 0).numpy())
    assert (out.stage1[:, :, 0] == 1).sum() > 100 and (out.stage1[:, :, 1] == 0).all()

    t = plan_transform((80, 72), None, 32, None)
    frames = torch.stack([torch.from_numpy(t.apply(normalise(image[:, :, z]), "image")) for z in range(3)])[:, None]
    with torch.inference_mode():
        pasted = seg.pipeline(frames.float()).probabilities
    for z in (0, 2):
        expected = merge_binary_maps(torch.from_numpy(t.invert(pasted[z].numpy(), "probabilities"))[None])[0]
        np.testing.assert_array_equal(out.labels[:, :, z], expected.numpy())
    np.testing.assert_array_equal(out.labels[:, :, 1], out.stage1[:, :, 1])

    # a label map upsampled 2.5x by nearest neighbours is blocky; the decoded disc is round: its area is
    # that of the soft disc's 0.5 contour, π (0.22 · 32 · 2.5)², within 2 %
    area = (out.stage1[:, :, 0] == 1).sum()
    assert abs(area / (np.pi * (0.22 * 32 * 2.5) ** 2) - 1) < 0.02, area


def test_an_ensemble_averages_native_probabilities_of_members_of_any_input_size(demo_run, image):
    a, b = (SoftDisc(0.22), frame(32)), (SoftDisc(0.3), frame(48))
    pa = soft_disc_segmenter(demo_run, [a]).segment(record(image)).probabilities
    pb = soft_disc_segmenter(demo_run, [b]).segment(record(image)).probabilities
    seg = soft_disc_segmenter(demo_run, [a, b])
    seg.pipeline = None
    out = seg.segment(record(image))
    np.testing.assert_allclose(out.probabilities, (pa + pb) / 2, rtol=1e-6, atol=1e-7)
    native = torch.from_numpy(out.probabilities).permute(2, 3, 0, 1)
    np.testing.assert_array_equal(out.stage1, stage1_to_labels(native).permute(1, 2, 0).numpy())
    np.testing.assert_array_equal(out.labels, out.stage1)
    assert (out.stage1 == 1).sum() > (pa[..., 0] > 0.5).sum()  # the larger disc pulls the average out


def test_ensemble_of_checkpoints(demo_run, image, relabelled_stage2):
    one = demo_run / "stage1-e2aunet/fold0/best.pt"
    single = Segmenter(one).segment(record(image))
    twice = Segmenter([one, demo_run / "stage1-e2aunet/fold0/best.safetensors"])
    assert twice.names["stage 1"] == "stage 1 (ensemble of 2: 2 × E-2AUNet)"
    np.testing.assert_allclose(twice.segment(record(image)).probabilities, single.probabilities, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="frame crops takes one stage-1 checkpoint.*--crop-from native"):
        Segmenter([one, one], relabelled_stage2("frame"))
    with pytest.raises(ValueError, match="at least one"):
        Segmenter([])


class Recorder(BlurMasks):
    """BlurMasks that keeps every batch of stage-2 inputs it is given."""

    def __init__(self):
        super().__init__()
        self.inputs = []

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.clone())
        return super().predict(x)


def test_native_crops_and_frame_crops_agree_where_the_frame_is_the_native_grid(demo_run):
    image = np.random.default_rng(1).random((32, 32, 2), dtype=np.float32) + 1.0
    segs = {}
    for mode in ("frame", "native"):
        segs[mode] = soft_disc_segmenter(demo_run, [(SoftDisc(), frame(32))], mode)
    a, b = (segs[m].segment(record(image)) for m in ("frame", "native"))
    assert (a.labels == 1).sum() > 100
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.stage1, b.stage1)


def test_native_crops_cut_the_native_image_around_the_native_stage1_labels(demo_run, image):
    seg = soft_disc_segmenter(demo_run, [(SoftDisc(), frame(32))], "native")
    seg.pipeline.stage2 = Recorder()
    out = seg.segment(record(image))
    assert out.labels.shape == (80, 72, 3) and out.fallback_slices == 1
    np.testing.assert_array_equal(out.labels[:, :, 1], out.stage1[:, :, 1])  # no heart: stage 1's labels

    (x,) = seg.pipeline.stage2.inputs  # one batch, the two slices with a heart
    assert x.shape == (2, 4, 32, 32)
    for i, z in enumerate((0, 2)):
        box = heart_box(out.stage1[:, :, z] != 0, margin=3)  # on the 80 x 72 native grid, 3 native pixels
        assert box.bottom > 32 and box.right > 32
        native = torch.from_numpy(normalise(image[:, :, z]))[None, None]
        np.testing.assert_allclose(x[i, :1].numpy(), crop_and_resize(native, [box], (32, 32), mode="bilinear")[0].numpy(),
                                   rtol=1e-6, atol=1e-6)
        lv = torch.from_numpy((out.stage1[:, :, z] == 1).astype(np.float32))[None, None]
        np.testing.assert_array_equal(x[i, 1].numpy(), crop_and_resize(lv, [box], (32, 32), mode="nearest-exact")[0, 0].numpy())
    # stage 2 echoes blurred masks: the final LV is the native stage-1 disc, up to its blurred rim
    lv_final, lv_stage1 = out.labels[:, :, 0] == 1, out.stage1[:, :, 0] == 1
    assert 2 * (lv_final & lv_stage1).sum() / (lv_final.sum() + lv_stage1.sum()) > 0.97


def test_native_crop_crocnet_crops_around_an_ensembles_labels(demo_run, image, relabelled_stage2):
    one = demo_run / "stage1-e2aunet/fold0/best.pt"
    seg = Segmenter([one, one], relabelled_stage2("native"))
    assert seg.crop_from == "native" and len(seg.members) == 2

    a, b = (SoftDisc(0.22), frame(32)), (SoftDisc(0.3), frame(48))
    seg = soft_disc_segmenter(demo_run, [a, b], "native")
    seg.pipeline.stage2 = Recorder()
    out = seg.segment(record(image))
    single = soft_disc_segmenter(demo_run, [a]).segment(record(image)).stage1
    assert (out.stage1 == 1).sum() > (single == 1).sum()  # the ensemble's disc is the larger one
    (x,) = seg.pipeline.stage2.inputs
    for i, z in enumerate((0, 2)):  # the stage-2 masks are cut from the ensemble's labels
        box = heart_box(out.stage1[:, :, z] != 0, margin=3)
        lv = torch.from_numpy((out.stage1[:, :, z] == 1).astype(np.float32))[None, None]
        np.testing.assert_array_equal(x[i, 1].numpy(), crop_and_resize(lv, [box], (32, 32), mode="nearest-exact")[0, 0].numpy())


def test_several_stage2_checkpoints_are_one_averaging_stage2(demo_run, image, relabelled_stage2, tmp_path):
    one, s2 = demo_run / "stage1-e2aunet/fold0/best.pt", demo_run / "stage2-crocnet_specialists/fold0/best.pt"
    single = Segmenter(one, s2)
    assert single.names["CroCNet"] == "CroCNet (specialists)"
    expected = single.segment(record(image))

    ckpt = read_checkpoint(s2)  # another "seed": the weights perturbed
    torch.manual_seed(0)
    ckpt["state_dict"] = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v
                          for k, v in ckpt["state_dict"].items()}
    other = tmp_path / "other-seed.pt"
    torch.save(ckpt, other)
    pair = Segmenter(one, [s2, other])
    assert isinstance(pair.pipeline.stage2, MeanEnsemble) and len(pair.pipeline.stage2.members) == 2
    assert pair.names["CroCNet"] == "CroCNet (stage 2: ensemble of 2: 2 × specialists)"
    x = torch.randn(3, 4, *pair.pipeline.crop_size)
    with torch.inference_mode():
        members = [Segmenter(one, p).pipeline.stage2.predict(x) for p in (s2, other)]
        torch.testing.assert_close(pair.pipeline.stage2.predict(x), (members[0] + members[1]) / 2, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(members[0], members[1], atol=1e-3)

    twice = Segmenter(one, [s2, s2]).segment(record(image))  # the mean of one model twice is that model
    np.testing.assert_array_equal(twice.labels, expected.labels)
    np.testing.assert_array_equal(twice.stage1, expected.stage1)

    with pytest.raises(ValueError, match=r"same crops \(crop source, crop size, margin\); got .*'frame'.*'native'"):
        Segmenter(one, [relabelled_stage2("frame"), relabelled_stage2("native")])
    with pytest.raises(ValueError, match="stage-1 checkpoint; expected stage 2"):
        Segmenter(one, [s2, one])


@pytest.fixture(scope="module")
def tiny_stage1(tmp_path_factory):
    """A stage-1 checkpoint of a tiny E-2AUNet: the input checks below need a Segmenter, not a trained one."""
    from crocnet.train.checkpoint import atomic_save, build_model

    kwargs = {"base_width": 4, "depth": 1}
    path = tmp_path_factory.mktemp("tiny") / "s1.pt"
    atomic_save({"model": "e2aunet", "model_kwargs": kwargs, "preprocess": {"image_size": 32, "target_spacing": None},
                 "stage": 1, "fold": 0, "epoch": 1, "state_dict": build_model("e2aunet", kwargs).state_dict()}, path)
    return path


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_segment_refuses_non_finite_voxels_naming_the_record(tiny_stage1, bad):
    """One NaN voxel used to make its slice's normalisation NaN, and the whole slice background, silently."""
    image = np.random.default_rng(0).random((20, 24, 2), dtype=np.float32)
    image[3, 3, 0] = bad
    rec = record(image)
    with pytest.raises(ValueError, match=r"^record s_SA: expected finite intensities, got 1 NaN/inf voxels of 960$"):
        Segmenter(tiny_stage1).segment(rec)


EXPECTED_IMAGE = "expected image (H, W, Z) with H, W, Z >= 1 and a real numeric dtype"


@pytest.mark.parametrize("image, got", [
    (np.zeros((20, 24), np.float32), "got shape (20, 24) and dtype float32"),
    (np.zeros((20, 24, 2, 1), np.float32), "got shape (20, 24, 2, 1) and dtype float32"),
    (np.zeros((20, 24, 0), np.float32), "got shape (20, 24, 0) and dtype float32"),
    (np.zeros((0, 24, 2), np.float32), "got shape (0, 24, 2) and dtype float32"),
    (np.zeros((20, 24, 2), bool), "got shape (20, 24, 2) and dtype bool"),
    (np.zeros((20, 24, 2), np.complex64), "got shape (20, 24, 2) and dtype complex64"),
    (torch.zeros(20, 24, 2), "(a NumPy array), got a torch.Tensor of shape (20, 24, 2)"),
])
def test_segment_refuses_images_of_the_wrong_shape_or_type_naming_the_record(tiny_stage1, image, got):
    rec = Record(image=image, label=None, spacing=None, affine=None, subject="s", phase="ED", view="SA", dataset="acdc_h5")
    with pytest.raises(ValueError) as info:
        Segmenter(tiny_stage1).segment(rec)
    assert str(info.value).startswith(f"record s_SA_ED: {EXPECTED_IMAGE}") and got in str(info.value)


def test_segment_accepts_integer_and_float64_images(tiny_stage1):
    image = np.random.default_rng(0).random((20, 24, 2))
    seg = Segmenter(tiny_stage1)
    expected = seg.segment(record(image.astype(np.float32))).probabilities
    np.testing.assert_allclose(seg.segment(record(image)).probabilities, expected, atol=1e-5)
    assert seg.segment(record((image * 1000).astype(np.int16))).labels.shape == (20, 24, 2)


@pytest.mark.parametrize("batch_size", [0, -1, 1.5, True, "8", None])
def test_batch_size_must_be_a_positive_integer(tiny_stage1, batch_size):
    """-1 used to skip every slice (all background), 0 to fail inside range()."""
    with pytest.raises(ValueError) as info:
        Segmenter(tiny_stage1, batch_size=batch_size)
    assert str(info.value) == f"batch_size must be a positive integer (slices per forward pass), got {batch_size!r}"
    image = np.random.default_rng(0).random((20, 24, 3), dtype=np.float32)
    one, all_at_once = Segmenter(tiny_stage1, batch_size=1), Segmenter(tiny_stage1, batch_size=np.int64(5))
    np.testing.assert_allclose(one.segment(record(image)).probabilities, all_at_once.segment(record(image)).probabilities, atol=1e-6)


def test_a_model_trained_at_a_spacing_refuses_images_without_one(demo_run, image):
    """A checkpoint trained at ``target_spacing`` mm cannot be run on an image whose voxel size is unknown
    (an h5 volume): fitting its field of view instead would show the heart at another scale than in
    training, silently. The same image with a spacing is segmented."""
    seg = soft_disc_segmenter(demo_run, [(SoftDisc(), {"image_size": 32, "target_spacing": 1.5})])
    with pytest.raises(ValueError, match=r"a model trained at 1.5 mm .* needs each image's voxel size.*acdc_h5 record"):
        seg.segment(record(image))
    known = Record(image=image, label=None, spacing=(2.0, 2.0, 8.0), affine=None, subject="s", phase=None, view="SA",
                   dataset="acdc")
    assert seg.segment(known).labels.shape == image.shape


def test_normalise_scales_images_that_are_mostly_one_value():
    """Percentiles equal (over 99 % padding): the minimum and maximum scale the image instead of zeroing it;
    only a constant image becomes 0."""
    image = np.zeros((100, 100), np.int16)
    image[0, :40] = 500
    out = normalise(image)
    assert out.max() == 1.0 and out[0, :40].tolist() == [1.0] * 40 and out[1:].max() == 0.0
    assert not normalise(np.full((8, 8), 3.0)).any()


def test_a_frame_crop_stage2_refuses_a_stage1_with_another_frame():
    """The committed 192 px CroCNet stage 2 (frame crops) behind the 128 px stage 1 of the same fold: the crops
    would have another field of view and scale than in training (it ran, silently, 0.4 Dice below stage 1)."""
    acdc = Path(__file__).resolve().parents[2] / "results" / "acdc"
    stage1_128 = acdc / "e2aunet" / "e2aunet-w8-acdc-fold0.safetensors"
    stage1_192 = acdc / "cv_s192_l234" / "fold0" / "e2aunet-l234-w8-s192-e42-acdc-fold0-fp16.safetensors"
    stage2_192 = acdc / "cv_crocnet_s192_l234" / "fold0" / "crocnet_specialists-w8-s192-l234-acdc-fold0-fp16.safetensors"
    with pytest.raises(ValueError, match=r"was trained on crops of a 192 px stage-1 frame \(target spacing None\), got "
                                         r".*e2aunet-w8-acdc-fold0.safetensors with a 128 px frame"):
        Segmenter(stage1_128, stage2_192)
    assert Segmenter(stage1_192, stage2_192).crop_from == "frame"
