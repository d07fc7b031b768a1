"""Drop-in E2A in a segmentation_models_pytorch Unet decoder (optional extra)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

smp = pytest.importorskip("segmentation_models_pytorch")

from crocnet.models import add_e2a_to_smp_unet  # noqa: E402
from crocnet.nn import E2A2d  # noqa: E402


def tiny_unet():
    return smp.Unet(
        encoder_name="resnet18",
        encoder_weights=None,  # no download
        encoder_depth=3,
        decoder_channels=(32, 16, 8),
        in_channels=1,
        classes=2,
    )


def test_patch_adds_one_layer_per_decoder_block():
    model = tiny_unet()
    keys = set(model.state_dict())
    added = add_e2a_to_smp_unet(model)
    assert added == ["decoder.blocks.0.e2a", "decoder.blocks.1.e2a", "decoder.blocks.2.e2a"]
    assert [model.get_submodule(n).attn.in_dims for n in added] == [32, 16, 8]
    assert all(isinstance(model.get_submodule(n), E2A2d) for n in added)
    assert keys < set(model.state_dict())  # old keys untouched, new ones added
    assert add_e2a_to_smp_unet(model) == []  # idempotent


def test_patched_unet_starts_close_to_the_original():
    model = tiny_unet().eval()
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        before = model(x)
        add_e2a_to_smp_unet(model)
        after = model(x)
    assert not torch.equal(before, after)  # the layers run
    torch.testing.assert_close(after, before, rtol=1e-3, atol=1e-3)


def test_one_training_step(assert_every_grad):
    model = tiny_unet()
    added = add_e2a_to_smp_unet(model)
    x = torch.randn(2, 1, 32, 32)
    target = (x[:, 0] > 0).long()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss = F.cross_entropy(model(x), target)
    loss.backward()
    assert_every_grad(model.decoder)  # (smp keeps the unused deeper resnet layers in the encoder)
    e2a_params = {n: p.detach().clone() for name in added for n, p in model.get_submodule(name).named_parameters()}
    assert all(model.get_submodule(name).layer_scale.grad.abs().sum() > 0 for name in added)
    optimizer.step()
    optimizer.zero_grad()
    after = F.cross_entropy(model(x), target)
    assert after < loss
    moved = {n: p for name in added for n, p in model.get_submodule(name).named_parameters()}
    assert all(not torch.equal(e2a_params[n], p) for n, p in moved.items())


def test_rejects_other_models():
    with pytest.raises(TypeError, match="segmentation_models_pytorch.Unet"):
        add_e2a_to_smp_unet(torch.nn.Conv2d(1, 1, 1))
