"""E2AUNet and its baselines (attention="mhsa" / "none"): shapes, errors, gradients, state dicts, compile."""

from __future__ import annotations

import pytest
import torch
from timm.layers import DropPath

from crocnet.models import E2AUNet, MHSABlock2d
from crocnet.nn import E2ABlock2d

ATTENTIONS = ("e2a", "mhsa", "none")


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("depth, size", [(2, (32, 32)), (3, (16, 40)), (1, (6, 10))])
def test_output_shape(attention, depth, size):
    model = E2AUNet(in_chans=2, num_classes=3, base_width=8, depth=depth, attention=attention)
    y = model(torch.randn(2, 2, *size))
    assert y.shape == (2, 3, *size)
    assert y.dtype == torch.float32


def test_structure_follows_the_paper():
    model = E2AUNet()
    assert model.widths == (32, 64, 128, 256, 512)
    assert model.size_divisor == 16
    assert len(model.encoder) == 5 and len(model.decoder) == 4
    assert all(isinstance(stage.attn, E2ABlock2d) for stage in [*model.encoder, *model.decoder])
    assert model.head.out_channels == 4 and model.head.kernel_size == (1, 1)
    assert [info["num_chs"] for info in model.feature_info] == [32, 64, 128, 256, 512]


def test_baseline_blocks():
    mhsa = E2AUNet(base_width=8, depth=2, attention="mhsa", head_dim=8)
    assert all(isinstance(stage.attn, MHSABlock2d) for stage in mhsa.encoder)
    assert [stage.attn.attn.num_heads for stage in mhsa.encoder] == [1, 2, 4]
    plain = E2AUNet(base_width=8, depth=2, attention="none")
    assert not any(isinstance(m, (E2ABlock2d, MHSABlock2d)) for m in plain.modules())


@pytest.mark.parametrize("attention, block", [("e2a", E2ABlock2d), ("mhsa", MHSABlock2d)])
def test_attention_levels_place_blocks_only_on_those_levels(attention, block):
    model = E2AUNet(base_width=8, depth=3, attention=attention, attention_levels=[3, 2])
    assert model.attention_levels == (2, 3)
    encoder = [isinstance(stage.attn, block) for stage in model.encoder]
    decoder = [isinstance(stage.attn, block) for stage in model.decoder]  # levels depth-1 … 0
    assert encoder == [False, False, True, True] and decoder == [True, False, False]
    assert model.encoder[2].attn.local_representation.dwconv.in_channels == 32  # the level's own width
    full = E2AUNet(base_width=8, depth=3, attention=attention)
    assert full.attention_levels == (0, 1, 2, 3)
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in full.parameters())
    assert model(torch.randn(2, 1, 16, 24)).shape == (2, 4, 16, 24)
    none = E2AUNet(base_width=8, depth=3, attention=attention, attention_levels=[])
    plain = E2AUNet(base_width=8, depth=3, attention="none")
    assert none.state_dict().keys() == plain.state_dict().keys()


@pytest.mark.parametrize("levels", [[4], [-1], [0, 1.5]])
def test_attention_levels_out_of_range(levels):
    with pytest.raises(ValueError, match=r"attention_levels must be integers in 0..depth = 0..3"):
        E2AUNet(base_width=8, depth=3, attention_levels=levels)


def test_encoder_maps():
    model = E2AUNet(base_width=8, depth=3)
    features = model.forward_encoder(torch.randn(1, 1, 32, 16))
    assert [tuple(f.shape) for f in features] == [(1, 8, 32, 16), (1, 16, 16, 8), (1, 32, 8, 4), (1, 64, 4, 2)]
    assert model.forward_features(torch.randn(1, 1, 32, 16)).shape == (1, 8, 32, 16)


def test_input_errors():
    model = E2AUNet(base_width=8, depth=3)
    with pytest.raises(ValueError, match=r"divisible by 2\*\*depth = 8, got 20×16"):
        model(torch.randn(1, 1, 20, 16))
    with pytest.raises(ValueError, match=r"expects \(B, 1, H, W\)"):
        model(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match="head_activation"):
        E2AUNet(head_activation="relu")
    with pytest.raises(ValueError, match="attention"):
        E2AUNet(attention="linear")


@pytest.mark.parametrize("kwargs, message", [
    (dict(in_chans=0), "E2AUNet: in_chans must be an int >= 1, got 0"),
    (dict(in_chans=1.5), "E2AUNet: in_chans must be an int >= 1, got 1.5"),
    (dict(num_classes=0), r"E2AUNet: num_classes must be an int >= 1 \(the logit maps; for the features use forward_features\), got 0"),
    (dict(depth=2.5), "need depth >= 0 and base_width >= 2, got depth=2.5, base_width=8"),
    (dict(depth=10), r"depth=10 with base_width=8 makes the deepest level 8192 wide and 2.77e\+09 parameters in the "
                     r"conv layers alone, over the 2.15e\+09 this model allows \(the paper's network: base_width=32, "
                     r"depth=4, 512 wide\); lower depth or base_width"),
    (dict(head_dim=0, attention="mhsa"), "E2AUNet: head_dim must be an int >= 1, got 0"),
    (dict(base_width=50, attention="mhsa"), r"level 1 has width 100, which does not split into max\(1, 100 // head_dim\) = 3 heads"),
    (dict(drop_path_rate=1.0), r"drop_path_rate must be a rate in \[0, 1\), got 1.0"),
    (dict(drop_path_rate=-0.1), r"drop_path_rate must be a rate in \[0, 1\), got -0.1"),
    (dict(mlp_ratio=0.1), r"E2AUNet: mlp_ratio must be a number with int\(dim · mlp_ratio\) >= 1 \(dim = 8\), got 0.1"),
    (dict(attention_levels=2), r"attention_levels must be integers in 0..depth = 0..2, got 2$"),
    (dict(attention_levels=(True,)), r"attention_levels must be integers in 0..depth = 0..2, got \(True,\)"),
    (dict(attention="none", token_norm="L2"), r"token_norm must be one of \('l2', 'softmax', 'none'\), got 'L2'"),
    (dict(attention="mhsa", backend="cuda"), r"backend must be one of \('auto', 'triton', 'torch'\), got 'cuda'"),
    (dict(attention="E2A", attention_levels=()), r"attention must be one of \('e2a', 'mhsa', 'none'\), got 'E2A'"),
])
def test_bad_constructor_arguments_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        E2AUNet(**{"base_width": 8, "depth": 2, **kwargs})


@pytest.mark.parametrize("attention", ["none", "e2a"])
def test_the_size_check_counts_the_conv_layers_within_two_percent(attention):
    """The refusal of huge networks rests on ``31 · Σ width²``: the conv layers' parameters, attention on top."""
    for base_width, depth in ((8, 3), (32, 4), (16, 6)):
        with torch.device("meta"):
            model = E2AUNet(base_width=base_width, depth=depth, attention=attention)
        count = sum(p.numel() for p in model.parameters())
        convs = 31 * sum(w * w for w in model.widths)
        assert convs <= count and (attention != "none" or count <= 1.02 * convs), (base_width, depth, count, convs)


def test_attention_levels_from_a_generator():
    model = E2AUNet(base_width=8, depth=2, attention_levels=(lv for lv in (2, 1)))
    assert model.attention_levels == (1, 2)


def test_reset_classifier_refuses_zero_classes():
    model = E2AUNet(base_width=8, depth=2)
    with pytest.raises(ValueError, match="num_classes must be an int >= 1"):
        model.reset_classifier(0)
    assert model.num_classes == 4 and model.head.out_channels == 4


@pytest.mark.parametrize("x, error, message", [
    (torch.zeros(1, 1, 16, 16, dtype=torch.long), TypeError, "the input of E2AUNet must be a floating-point tensor, got torch.int64"),
    (torch.zeros(1, 1, 16, 16, dtype=torch.float64), TypeError,
     r"the input of E2AUNet must have the parameters' dtype torch.float32 \(outside autocast\), got torch.float64"),
    (torch.zeros(0, 1, 16, 16), ValueError, r"E2AUNet expects a non-empty \(B, 1, H, W\), got \(0, 1, 16, 16\)"),
    (torch.zeros(1, 1, 0, 16), ValueError, r"E2AUNet expects a non-empty \(B, 1, H, W\), got \(1, 1, 0, 16\)"),
    (torch.zeros(1, 16, 16), ValueError, r"E2AUNet expects \(B, 1, H, W\), got \(1, 16, 16\)"),
])
@pytest.mark.parametrize("attention", ATTENTIONS)
def test_bad_inputs_say_what_was_expected(attention, x, error, message):
    model = E2AUNet(base_width=4, depth=2, attention=attention)
    with pytest.raises(error, match=message):
        model(x)


def test_autocast_takes_inputs_of_the_dtypes_it_casts():
    model = E2AUNet(base_width=4, depth=2).eval()
    x = torch.randn(1, 1, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(x.half()).dtype == torch.bfloat16
        with pytest.raises(TypeError, match=r"dtype torch.float32 \(autocast casts only float16, bfloat16 and float32\), got torch.float64"):
            model(x.double())


def test_activation():
    x = torch.randn(2, 1, 16, 16)
    sig = E2AUNet(base_width=8, depth=2).eval()
    logits = sig(x)
    torch.testing.assert_close(sig.predict(x), torch.sigmoid(logits))
    soft = E2AUNet(base_width=8, depth=2, head_activation="softmax").eval()
    torch.testing.assert_close(soft.predict(x).sum(1), torch.ones(2, 16, 16))


def test_drop_path_rates_increase():
    model = E2AUNet(base_width=8, depth=2, drop_path_rate=0.2)
    stages = [*model.encoder, *model.decoder]
    rates = [s.attn.drop_path.drop_prob if isinstance(s.attn.drop_path, DropPath) else 0.0 for s in stages]
    assert rates == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_gradients_reach_every_parameter(attention, assert_every_grad):
    model = E2AUNet(base_width=8, depth=2, attention=attention, drop_path_rate=0.1)
    model(torch.randn(2, 1, 16, 24)).square().mean().backward()
    assert_every_grad(model)


def test_state_dict_round_trip(tmp_path):
    model = E2AUNet(base_width=8, depth=2)
    model(torch.randn(4, 1, 16, 16))  # move the BatchNorm running statistics off their defaults
    torch.save(model.state_dict(), tmp_path / "w.pth")
    torch.manual_seed(1)
    other = E2AUNet(base_width=8, depth=2)
    other.load_state_dict(torch.load(tmp_path / "w.pth", weights_only=True))
    x = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(other.eval()(x), model.eval()(x), rtol=0, atol=0)


def test_reset_classifier():
    model = E2AUNet(base_width=8, depth=2)
    model.reset_classifier(2)
    assert model.num_classes == 2 and model.get_classifier().out_channels == 2
    assert model(torch.randn(1, 1, 16, 16)).shape == (1, 2, 16, 16)


def test_torch_compile_fullgraph_training_step():
    """Dynamo traces forward and backward without a graph break (aot_eager: no code generation, fast)."""
    torch._dynamo.reset()
    model = E2AUNet(base_width=4, depth=2)
    x = torch.randn(2, 1, 16, 16)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    compiled(x).square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model(x).square().mean().backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_torch_compile_fullgraph_inductor():
    """The default backend (Inductor, C++ on CPU) compiles the eval forward whole (~25 s with a cold cache)."""
    torch._dynamo.reset()
    model = E2AUNet(base_width=4, depth=2).eval()
    x = torch.randn(1, 1, 16, 16)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name, chans", [("e2aunet", 1), ("crocnet_specialists", 4)])
def test_grad_checkpointing_gives_the_same_gradients(name, chans):
    """timm's ``set_grad_checkpointing`` (its train.py's ``--grad-checkpointing``): every stage recomputed in the
    backward, the same loss and gradients (float64; BatchNorm in eval mode, whose recompute would otherwise
    count its batch twice in the running statistics)."""
    import timm  # the models are registered: crocnet.models is imported above

    torch.manual_seed(0)
    model = timm.create_model(name, base_width=4, depth=2, backend="torch").double().eval()
    x = torch.randn(2, chans, 32, 32, dtype=torch.float64)
    net = model.net if name == "crocnet_specialists" else model
    calls, stage = [], net.decoder[0]
    forward = stage.forward
    stage.forward = lambda *a: calls.append(1) or forward(*a)  # counted here: hooks do not fire on the recompute
    grads = []
    for enable in (False, True):
        model.set_grad_checkpointing(enable)
        model.zero_grad()
        calls.clear()
        model(x).square().mean().backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters()})
        assert len(calls) == (2 if enable else 1)  # recomputed in the backward
    assert model.no_weight_decay() == set()
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], rtol=1e-12, atol=1e-14, msg=k)
