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


def test_models_module_exports():
    for name in crocnet.models.__all__:
        assert hasattr(crocnet.models, name), name
