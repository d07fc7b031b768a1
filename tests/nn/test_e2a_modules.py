"""The E2A modules are drop-in for timm's: state dicts, patched SwiftFormer models, the 2D layers."""

from __future__ import annotations

import pytest
import timm
import torch
from e2a_reference import timm_e2a
from kernel_env import triton_device

import crocnet
from crocnet.nn import E2A2d, E2ABlock2d, EfficientAdditiveAttention, EfficientAdditiveAttention2d


def test_timm_state_dict_loads_both_ways_and_official_proj_key():
    ref = timm_e2a(16, 32)
    ours = EfficientAdditiveAttention2d(16, 32, backend="torch")
    ours.load_state_dict(ref.state_dict())
    ref.load_state_dict(ours.state_dict())
    official = {k.replace("proj.", "Proj."): v for k, v in ref.state_dict().items()}
    fresh = EfficientAdditiveAttention(16, 32)
    fresh.load_state_dict(official)
    torch.testing.assert_close(fresh.proj.weight, ref.proj.weight, rtol=0, atol=0)
    x = torch.randn(2, 16, 3, 5)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-6, atol=1e-6)


def test_patched_swiftformer_gives_timm_logits():
    torch.manual_seed(0)
    model = timm.create_model("swiftformer_xs", num_classes=10).eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        before = model(x)
        names = crocnet.patch_timm_swiftformer(model, backend="torch")
        after = model(x)
    assert len(names) == 4  # one E2A per stage
    assert crocnet.patch_timm_swiftformer(model, backend="torch") == []  # idempotent
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    assert len(crocnet.unpatch_timm_swiftformer(model)) == 4
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=0, atol=0)


def test_patched_swiftformer_with_the_triton_kernels():
    dev = triton_device()
    torch.manual_seed(0)
    model = timm.create_model("swiftformer_xs", num_classes=5).eval().to(dev)
    x = torch.randn(1, 3, 64, 64, device=dev)
    with torch.no_grad():
        before = model(x)
        crocnet.patch_timm_swiftformer(model, backend="triton")
        after = model(x)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)


def test_patch_rejects_other_models():
    with pytest.raises(TypeError, match="SwiftFormer"):
        crocnet.patch_timm_swiftformer(torch.nn.Linear(2, 2))


def test_e2a2d_starts_near_identity_and_trains():
    layer = E2A2d(8, backend="torch")
    x = torch.randn(2, 8, 5, 7, requires_grad=True)
    y = layer(x)
    assert y.shape == x.shape and (y - x).abs().max() < 1e-3
    y.square().mean().backward()
    assert all(p.grad is not None for p in layer.parameters())


def test_e2a_block_shapes():
    block = E2ABlock2d(16, backend="torch")
    x = torch.randn(2, 16, 6, 9)
    assert block(x).shape == x.shape
    with pytest.raises(ValueError, match=r"expected a feature map of shape \(B, 16, H, W\), got \(2, 8, 6, 9\)"):
        block(torch.randn(2, 8, 6, 9))
