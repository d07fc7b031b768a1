"""timm registry: every name builds, cfgs describe the inputs, no downloads, local weight files load."""

from __future__ import annotations

import pytest
import timm
import torch

import crocnet.models
from crocnet.models import MODEL_NAMES, E2AUNet, SpecialistNets

TINY = dict(base_width=4, depth=2)
EXPECTED = {
    "e2aunet": (E2AUNet, 1, 4),
    "e2aunet_mhsa": (E2AUNet, 1, 4),
    "e2aunet_noattn": (E2AUNet, 1, 4),
    "crocnet_specialists": (SpecialistNets, 4, 3),
    "crocnet_single": (E2AUNet, 4, 3),
}


def test_every_name_is_registered():
    assert set(MODEL_NAMES) == set(EXPECTED)
    assert set(MODEL_NAMES) <= set(timm.list_models())
    assert set(timm.list_models(module="registry")) >= set(MODEL_NAMES)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_create_model(name):
    cls, in_chans, out_chans = EXPECTED[name]
    model = timm.create_model(name, **TINY)
    assert type(model) is cls
    cfg = model.pretrained_cfg
    assert cfg["input_size"][0] == in_chans and cfg["num_classes"] == out_chans
    assert not cfg.get("url") and not cfg.get("hf_hub_id") and not cfg.get("file")
    assert model(torch.randn(1, in_chans, 16, 16)).shape == (1, out_chans, 16, 16)


def test_defaults_follow_the_paper():
    assert timm.create_model("e2aunet").widths == (32, 64, 128, 256, 512)
    assert timm.create_model("crocnet_single").widths == (16, 32, 64, 128, 256)
    assert timm.create_model("e2aunet_mhsa", **TINY).attention == "mhsa"
    assert timm.create_model("e2aunet_noattn", **TINY).attention == "none"
    model = timm.create_model("crocnet_specialists")
    assert model.net.widths == (16, 32, 64, 128, 256) and model.cross is not None
    assert timm.create_model("crocnet_specialists", cross_attention=False, **TINY).cross is None


def test_constructor_kwargs_pass_through():
    model = timm.create_model(
        "e2aunet", in_chans=2, num_classes=3, drop_path_rate=0.1, head_activation="softmax", **TINY
    )
    assert (model.in_chans, model.num_classes, model.head_activation) == (2, 3, "softmax")
    with pytest.raises(ValueError, match="num_classes must equal streams"):
        timm.create_model("crocnet_specialists", num_classes=4)


@pytest.mark.parametrize("name", ["e2aunet", "crocnet_specialists"])
def test_pretrained_without_a_file_is_a_clear_error(name):
    with pytest.raises(RuntimeError, match="no pretrained weights are published.*pretrained_file"):
        timm.create_model(name, pretrained=True, **TINY)
    with pytest.raises(FileNotFoundError, match="not a file"):
        timm.create_model(name, pretrained_file="/nonexistent/weights.pth", **TINY)


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("suffix", ["pth", "safetensors"])
def test_pretrained_file_loads(name, suffix, tmp_path):
    source = timm.create_model(name, **TINY)
    path = tmp_path / f"weights.{suffix}"
    if suffix == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    else:
        torch.save({"state_dict": source.state_dict(), "epoch": 3}, path)  # a training checkpoint
    torch.manual_seed(1)
    loaded = timm.create_model(name, pretrained_file=path, **TINY)
    for (key, a), b in zip(source.state_dict().items(), loaded.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=key)
    via_overlay = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **TINY)
    torch.testing.assert_close(via_overlay.state_dict(), source.state_dict(), rtol=0, atol=0)


def test_pretrained_file_with_other_classes_keeps_all_but_the_head(tmp_path):
    source = timm.create_model("e2aunet", **TINY)
    torch.save(source.state_dict(), tmp_path / "w.pth")
    model = timm.create_model("e2aunet", num_classes=2, pretrained_file=tmp_path / "w.pth", **TINY)
    assert model.head.out_channels == 2
    torch.testing.assert_close(model.stem.conv1.weight, source.stem.conv1.weight, rtol=0, atol=0)


@pytest.mark.parametrize("classes, chans", [(2, 1), (4, 3), (2, 3)])
def test_pretrained_file_of_another_shape_than_the_defaults_loads_whole(classes, chans, tmp_path):
    """A checkpoint whose ``num_classes`` or ``in_chans`` differ from the registry's defaults, loaded into a
    model of its own shape (given, or taken from the file when not given), loads whole: timm is told the
    file's head and first conv, not the defaults (it would drop the head of a 2-class model's own weights)."""
    source = timm.create_model("e2aunet", num_classes=classes, in_chans=chans, **TINY)
    torch.save(source.state_dict(), tmp_path / "w.pth")
    for kwargs in (dict(num_classes=classes, in_chans=chans), {}):
        torch.manual_seed(1)
        loaded = timm.create_model("e2aunet", pretrained_file=tmp_path / "w.pth", **kwargs, **TINY)
        assert (loaded.num_classes, loaded.in_chans) == (classes, chans)
        torch.testing.assert_close(loaded.state_dict(), source.state_dict(), rtol=0, atol=0)


@pytest.mark.parametrize("depth", [2, 5])
def test_features_only_gives_every_level_of_any_depth(depth):
    """timm's default ``out_indices`` are five levels: depth 2 failed timm's assertion, depth 5 lost its deepest."""
    model = timm.create_model("e2aunet", base_width=4, depth=depth, features_only=True).eval()
    with torch.no_grad():
        maps = model(torch.randn(1, 1, 64, 64))
    assert len(maps) == depth + 1 and maps[-1].shape[-1] == 64 // 2**depth


def test_a_crocnet_checkpoint_builds_the_network_it_records():
    """A committed training export (``base_width`` 8, attention on levels 2-4) loads whole through
    ``pretrained_file`` with no arguments (it was a size-mismatch error); an argument contradicting the file, or
    the file of another registered model, is a clear error."""
    from pathlib import Path

    from crocnet.train.checkpoint import read_checkpoint

    acdc = Path(__file__).resolve().parents[2] / "results" / "acdc"
    path = acdc / "e2aunet_l234_s192e42" / "e2aunet-l234-w8-s192-e42-acdc-fold0.safetensors"
    ckpt = read_checkpoint(path)
    model = timm.create_model("e2aunet", pretrained_file=path)
    assert (model.widths[0], sorted(model.attention_levels)) == (8, [2, 3, 4])
    torch.testing.assert_close(model.state_dict(), ckpt["state_dict"], rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"holds a network built with .*'base_width': 8.*, got base_width=32 \(the "
                                         r"file: 8\); leave them out to take the file's"):
        timm.create_model("e2aunet", pretrained_file=path, base_width=32)
    with pytest.raises(ValueError, match=r"e2aunet_noattn: pretrained_file .* holds a checkpoint of e2aunet .*; expected "
                                         r"e2aunet_noattn: use timm.create_model\('e2aunet', pretrained_file=...\)"):
        timm.create_model("e2aunet_noattn", pretrained_file=path)
    assert timm.create_model("e2aunet", pretrained_file=path, num_classes=2).head.out_channels == 2


def test_features_only_gives_the_encoder_maps():
    """timm's ``features_only``: the encoder maps at ``out_indices`` (the same tensors as ``forward_encoder``),
    the decoder and head pruned away; the specialist nets refuse it with a clear error."""
    full = timm.create_model("e2aunet", **TINY).eval()
    features = timm.create_model("e2aunet", features_only=True, out_indices=(0, 2), **TINY).eval()
    features.model.load_state_dict(full.state_dict(), strict=False)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        want = full.forward_encoder(x)
        got = features(x)
    assert features.feature_info.channels() == [want[0].shape[1], want[2].shape[1]]
    assert features.feature_info.reduction() == [1, 4]
    for a, b in zip(got, [want[0], want[2]], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not any(k.startswith(("decoder", "head")) for k in features.model.state_dict())
    with torch.no_grad():
        logits, maps = full.forward_intermediates(x, indices=2)
        torch.testing.assert_close(logits, full(x), rtol=0, atol=0)
    assert [m.shape[1] for m in maps] == [w.shape[1] for w in want[-2:]]
    with pytest.raises(ValueError, match="features_only is for the E2AUNet models"):
        timm.create_model("crocnet_specialists", features_only=True, **TINY)
    with pytest.raises(ValueError, match="no global pooling"):
        full.reset_classifier(2, "avg")
    full.reset_classifier(2, "")
    assert full.num_classes == 2


@pytest.mark.parametrize("streams", [2, 4])
def test_specialists_take_one_image_channel_and_a_mask_per_stream_by_default(streams):
    model = timm.create_model("crocnet_specialists", streams=streams, **TINY)
    assert (model.in_chans, model.image_chans) == (streams + 1, 1)
    assert model.get_classifier() is model.net.head


def test_models_module_exports():
    for name in crocnet.models.__all__:
        assert hasattr(crocnet.models, name), name
