"""SpecialistNets: shapes, the stream layout, real weight sharing, coupling, gradients, state dicts."""

from __future__ import annotations

import pytest
import torch

from crocnet.models import E2AUNet, SpecialistNets
from crocnet.nn import CrossE2ABlock2d


def tiny(**kwargs) -> SpecialistNets:
    return SpecialistNets(**{"base_width": 8, "depth": 2, **kwargs})


@pytest.mark.parametrize("size", [(16, 16), (32, 16), (12, 40)])
@pytest.mark.parametrize("cross_attention", [True, False])
def test_output_shape(size, cross_attention):
    model = tiny(cross_attention=cross_attention)
    assert model(torch.randn(2, 4, *size)).shape == (2, 3, *size)


def test_paper_widths_and_cross_blocks():
    model = SpecialistNets()
    assert model.net.widths == (16, 32, 64, 128, 256)
    assert len(model.cross) == 5 and all(isinstance(b, CrossE2ABlock2d) for b in model.cross)
    assert [b.attn.in_dims for b in model.cross] == [16, 32, 64, 128, 256]
    assert model.net.in_chans == 2 and model.net.num_classes == 1
    assert SpecialistNets(base_width=32).net.widths[-1] == 512


def test_stream_inputs_layout():
    model = tiny()
    x = torch.randn(2, 4, 8, 8)
    z = model.stream_inputs(x)
    assert z.shape == (6, 2, 8, 8)
    for s in range(3):
        for b in range(2):
            torch.testing.assert_close(z[s * 2 + b, 0], x[b, 0])
            torch.testing.assert_close(z[s * 2 + b, 1], x[b, 1 + s])


def test_input_errors():
    with pytest.raises(ValueError, match="in_chans > streams"):
        SpecialistNets(in_chans=3, streams=3)
    with pytest.raises(ValueError, match=r"expects \(B, 4, H, W\)"):
        tiny()(torch.randn(1, 2, 16, 16))
    with pytest.raises(ValueError, match="divisible"):
        tiny()(torch.randn(1, 4, 10, 16))
    with pytest.raises(ValueError, match=r"SpecialistNets expects a non-empty \(B, 4, H, W\), got \(0, 4, 16, 16\)"):
        tiny()(torch.randn(0, 4, 16, 16))
    with pytest.raises(TypeError, match="the input of SpecialistNets must be a floating-point tensor, got torch.uint8"):
        tiny()(torch.zeros(1, 4, 16, 16, dtype=torch.uint8))
    with pytest.raises(TypeError, match=r"SpecialistNets must have the parameters' dtype torch.float32 \(outside autocast\), got torch.float16"):
        tiny()(torch.zeros(1, 4, 16, 16, dtype=torch.float16))
    with pytest.raises(ValueError, match="SpecialistNets: streams must be an int >= 1, got 1.5"):
        SpecialistNets(in_chans=4, streams=1.5)
    with pytest.raises(ValueError, match=r"token_norm must be one of .*, got 'x'"):
        tiny(cross_attention=False, token_norm="x")


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_one_parameter_set_for_all_streams():
    model = tiny()
    one_stream = E2AUNet(in_chans=2, num_classes=1, base_width=8, depth=2)
    assert count(model) == count(one_stream) + count(model.cross)
    assert count(tiny(cross_attention=False)) == count(one_stream)


@pytest.mark.parametrize("cross_attention", [True, False])
def test_a_shared_weight_moves_every_stream(cross_attention):
    model = tiny(cross_attention=cross_attention).eval()
    x = torch.randn(2, 4, 16, 16)
    with torch.no_grad():
        before = model(x)
        model.net.decoder[-1].conv.conv2.weight.mul_(1.5)  # one tensor of the shared decoder
        after = model(x)
    changed = (after - before).abs().flatten(2).amax(-1)  # (B, S)
    assert (changed > 1e-6).all(), changed


def test_uncoupled_streams_are_the_shared_network_run_per_stream():
    model = tiny(cross_attention=False).eval()
    x = torch.randn(2, 4, 16, 16)
    with torch.no_grad():
        out = model(x)
        for s in range(3):
            alone = model.net(torch.cat([x[:, :1], x[:, 1 + s : 2 + s]], dim=1))[:, 0]
            torch.testing.assert_close(out[:, s], alone, rtol=1e-5, atol=1e-5)


def test_cross_attention_couples_the_streams():
    x = torch.randn(1, 4, 16, 16)
    y = x.clone()
    y[:, 1] = torch.randn(16, 16)  # change only the LV mask
    for cross_attention, others_move in ((True, True), (False, False)):
        model = tiny(cross_attention=cross_attention).eval()
        for block in model.cross or []:  # make the coupling visible above float noise
            for scale in [*block.layer_scale_1, *block.layer_scale_2]:
                scale.data.fill_(1.0)
        with torch.no_grad():
            delta = (model(y) - model(x)).abs().flatten(2).amax(-1)[0]
        assert delta[0] > 1e-4
        assert bool((delta[1:] > 1e-6).all()) == others_move, delta


@pytest.mark.parametrize("cross_attention", [True, False])
def test_gradients_reach_every_parameter(cross_attention, assert_every_grad):
    model = tiny(cross_attention=cross_attention, drop_path_rate=0.1)
    model(torch.randn(2, 4, 16, 16)).square().mean().backward()
    assert_every_grad(model)


def test_state_dict_round_trip():
    model = tiny()
    model(torch.randn(2, 4, 16, 16))
    other = tiny()
    other.load_state_dict(model.state_dict())
    x = torch.randn(1, 4, 16, 16)
    torch.testing.assert_close(other.eval()(x), model.eval()(x), rtol=0, atol=0)
    assert any(k.startswith("cross.0.attn.proj.0.1.") for k in model.state_dict())


def test_triton_backend_matches_torch():
    """The models hand ``backend`` to every E2A and cross-E2A: same outputs and gradients either way, and
    the same outputs at inference (CUDA when present, else Triton's interpreter, which tests/conftest.py
    turns on)."""
    from crocnet.ops._checks import interpreting

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not interpreting():
        pytest.skip("no CUDA and TRITON_INTERPRET is off")
    reference = tiny(depth=1, base_width=4, backend="torch").to(device)
    for name, p in reference.named_parameters():
        if "layer_scale" in name:
            p.data.fill_(1.0)  # let attention dominate the outputs
    model = tiny(depth=1, base_width=4, backend="triton").to(device)
    model.load_state_dict(reference.state_dict())
    x = torch.randn(2, 4, 8, 12, device=device)
    out, ref = model(x), reference(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    with torch.inference_mode():  # every E2A and cross-E2A with its output linear folded into the kernels
        torch.testing.assert_close(model(x), ref.detach(), rtol=1e-4, atol=1e-4)
    out.square().mean().backward()
    ref.square().mean().backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=name)  # float32 gradients (see e2a_reference)
