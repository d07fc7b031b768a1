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
    assert crocnet.unpatch_timm_swiftformer(torch.nn.Linear(2, 2)) == []  # never patched: nothing to restore
    with pytest.raises(TypeError, match="unpatch_timm_swiftformer expects a model patched by patch_timm_swiftformer, got str"):
        crocnet.unpatch_timm_swiftformer("swiftformer_xs")


@pytest.mark.parametrize("make, message", [
    (lambda: EfficientAdditiveAttention(16, 0), "EfficientAdditiveAttention: token_dim must be an int >= 1, got 0"),
    (lambda: EfficientAdditiveAttention(0, 16), "EfficientAdditiveAttention: in_dims must be an int >= 1, got 0"),
    (lambda: EfficientAdditiveAttention2d(16, 16, num_heads=0), "EfficientAdditiveAttention2d: num_heads must be an int >= 1, got 0"),
    (lambda: E2ABlock2d(0), "E2ABlock2d: dim must be an int >= 1, got 0"),
    (lambda: E2ABlock2d(16, mlp_ratio=0), r"E2ABlock2d: mlp_ratio must be a number with int\(dim · mlp_ratio\) >= 1 \(dim = 16\), got 0"),
    (lambda: E2ABlock2d(16, mlp_ratio=float("nan")), "E2ABlock2d: mlp_ratio must be a number .* got nan"),
    (lambda: E2ABlock2d(16, drop_path=1.5), r"E2ABlock2d: drop_path must be a rate in \[0, 1\), got 1.5"),
    (lambda: E2A2d(0), "E2A2d: channels must be an int >= 1, got 0"),
])
def test_bad_constructor_arguments_are_clear_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_input_dtype_must_match_the_parameters():
    tokens = torch.randn(2, 5, 16)
    with pytest.raises(TypeError, match=r"tokens must have the parameters' dtype torch.float32 \(outside autocast\), got torch.float64"):
        EfficientAdditiveAttention(16, 16)(tokens.double())
    with pytest.raises(TypeError, match="the feature map must be a floating-point tensor, got torch.int64"):
        E2ABlock2d(16)(torch.zeros(1, 16, 3, 3, dtype=torch.long))
    with pytest.raises(TypeError, match=r"the feature map must have the parameters' dtype torch.float32 \(outside autocast\), got torch.float16"):
        E2ABlock2d(16)(torch.zeros(1, 16, 3, 3, dtype=torch.float16))
    assert EfficientAdditiveAttention(16, 16, backend="torch").double()(tokens.double()).dtype == torch.float64


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


def _timm_block_to_ours(state_dict: dict) -> dict:
    """timm's ``swiftformer.Block`` names → :class:`E2ABlock2d`'s (``linear`` is our ``mlp``, LayerScale2d's
    ``gamma`` our bare ``layer_scale`` parameters)."""
    renames = [("linear.norm1.", "mlp.norm."), ("linear.", "mlp."), ("layer_scale.gamma", "layer_scale"),
               ("layer_scale_1.gamma", "layer_scale_1"), ("layer_scale_2.gamma", "layer_scale_2")]
    out = {}
    for name, value in state_dict.items():
        for old, new in renames:
            if name.startswith(old) or name.endswith(old):
                name = name.replace(old, new)
                break
        out[name] = value
    return out


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_e2a_block_matches_timms_swiftformer_block(backend):
    """:class:`E2ABlock2d` is timm's SwiftFormer ``Block``: the same output and every gradient, float64, with
    random BatchNorm statistics and layer scales (eval mode: BatchNorm uses them)."""
    from timm.models.swiftformer import Block

    torch.manual_seed(0)
    dim, device = 16, triton_device() if backend == "triton" else "cpu"
    ref = Block(dim, mlp_ratio=2.0).double()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "gamma" in name:
                p.uniform_(0.5, 1.5)  # the 1e-5 init would hide the attention and MLP branches
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    ref = ref.eval().to(device)
    ours = E2ABlock2d(dim, mlp_ratio=2.0, backend=backend).double().eval().to(device)
    ours.load_state_dict(_timm_block_to_ours(ref.state_dict()))
    x = torch.randn(2, dim, 5, 7, dtype=torch.float64, device=device)
    dy = torch.randn_like(x)

    def run(module):
        leaf = x.clone().requires_grad_(True)
        out = module(leaf)
        out.backward(dy)
        grads = {name: p.grad for name, p in module.named_parameters()}
        return out.detach(), leaf.grad, _timm_block_to_ours(grads)

    out_ref, dx_ref, g_ref = run(ref)
    out, dx, g = run(ours)
    torch.testing.assert_close(out, out_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dx, dx_ref, rtol=1e-12, atol=1e-12)
    assert g.keys() == g_ref.keys()
    for name in g_ref:
        torch.testing.assert_close(g[name], g_ref[name], rtol=1e-12, atol=1e-12, msg=lambda m: f"grad {name}: {m}")


@pytest.mark.parametrize("backend, fuse_qk, recompute_qk, expected", [
    ("triton", True, True, "kernels from the tokens"), ("triton", True, False, "kernels from the tokens"),
    ("triton", False, True, "kernels, q and k"), ("torch", True, True, "e2a"), ("torch", False, False, "e2a"),
])
def test_module_packs_q_and_k_only_for_the_kernels(monkeypatch, backend, fuse_qk, recompute_qk, expected):
    """``fuse_qk`` runs one GEMM into a packed qk inside the op where the Triton kernels run (made again in
    the backward with ``recompute_qk``, kept without); the PyTorch backend keeps timm's two linears."""
    import crocnet.nn.attention as attention

    called = []

    def kernels(q, k, *args, _real=attention.single_stream_kernels):
        called.append("kernels, packed qk" if k is None else "kernels, q and k")
        return _real(q, k, *args)

    def from_tokens(*args, _real=attention.tokens_kernels, **kwargs):
        called.append("kernels from the tokens")
        return _real(*args, **kwargs)

    def spec(*args, _real=attention.e2a, **kwargs):
        called.append("e2a")
        return _real(*args, **kwargs)

    monkeypatch.setattr(attention, "single_stream_kernels", kernels)
    monkeypatch.setattr(attention, "tokens_kernels", from_tokens)
    monkeypatch.setattr(attention, "e2a", spec)
    device = triton_device() if backend == "triton" else "cpu"
    module = EfficientAdditiveAttention(16, 24, backend=backend, fuse_qk=fuse_qk, recompute_qk=recompute_qk).to(device)
    assert f"fuse_qk={fuse_qk}, recompute_qk={recompute_qk}" in repr(module)
    module(torch.randn(2, 5, 16, device=device))
    assert called == [expected]


def test_recompute_qk_keeps_no_qk_for_the_backward_and_changes_no_gradient():
    """``recompute_qk`` (the default): the packed qk, 2 BND, is made again in the backward instead of being
    saved, and the output and every gradient are those of the module that keeps it (float64; the kernels in
    the interpreter, or on a GPU in float32)."""
    device = triton_device()
    dtype = torch.float64 if device == "cpu" else torch.float32
    B, C, side, D = 2, 12, 5, 16
    x = torch.randn(B, C, side, side, dtype=dtype, device=device)
    runs = {}
    for recompute in (True, False):
        torch.manual_seed(0)
        module = EfficientAdditiveAttention2d(C, D, backend="triton", recompute_qk=recompute).to(device, dtype)
        leaf = x.clone().requires_grad_(True)
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            out = module(leaf)
        out.backward(torch.ones_like(out))
        qk_shaped = [t for t in saved if tuple(t.shape) in ((B, side * side, 2 * D), (1, B, side * side, 2 * D))]
        runs[recompute] = (out.detach(), leaf.grad, {n: p.grad for n, p in module.named_parameters()}, qk_shaped)
    assert runs[True][3] == [] and len(runs[False][3]) == 1  # only the module that keeps qk saves it
    for name, want, got in [("out", runs[False][0], runs[True][0]), ("dx", runs[False][1], runs[True][1])] + [
            (n, runs[False][2][n], runs[True][2][n]) for n in runs[False][2]]:
        torch.testing.assert_close(got, want, rtol=1e-6 if dtype == torch.float32 else 1e-12, atol=1e-12, msg=name)


@pytest.mark.parametrize("token_norm", ["l2", "softmax", "none"])
@pytest.mark.parametrize("num_heads", [1, 2])
def test_inference_folds_final_where_it_can(monkeypatch, token_norm, num_heads):
    """Grad mode off, the Triton path with ``fuse_qk`` and one head: ``final`` folded into the kernels
    (``folded_tokens_kernels``); with two heads (``final`` maps 2D to D), grad mode on or ``fold_final=False``,
    the linear runs apart. Every case gives the PyTorch backend's output (float64 in the interpreter,
    float32 on a GPU)."""
    import crocnet.nn.attention as attention

    folded = []
    monkeypatch.setattr(attention, "folded_tokens_kernels",
                        lambda *a, _real=attention.folded_tokens_kernels: folded.append(1) or _real(*a))
    device = triton_device()
    dtype = torch.float64 if device == "cpu" else torch.float32
    torch.manual_seed(21)
    ref = EfficientAdditiveAttention2d(12, 16, num_heads=num_heads, token_norm=token_norm, backend="torch").to(device, dtype)
    x = torch.randn(2, 12, 5, 6, device=device, dtype=dtype)
    with torch.no_grad():
        want = ref(x)
    for fold, grad in ((True, False), (False, False), (True, True)):
        ours = EfficientAdditiveAttention2d(12, 16, num_heads=num_heads, token_norm=token_norm, backend="triton",
                                            fold_final=fold).to(device, dtype)
        ours.load_state_dict(ref.state_dict())
        assert f"fold_final={fold}" in repr(ours)
        folded.clear()
        with torch.set_grad_enabled(grad):
            out = ours(x)
        assert folded == ([1] if fold and not grad and num_heads == 1 else []), (fold, grad)
        torch.testing.assert_close(out.detach(), want, rtol=1e-10 if dtype == torch.float64 else 1e-5, atol=1e-12)


def test_folded_op_refuses_grad_mode():
    """The folded op is not differentiable: called with grad mode on it says so instead of returning an
    output that silently carries no gradient."""
    from crocnet.ops.e2a import folded_tokens_kernels

    m = EfficientAdditiveAttention(8, 8, backend="triton")
    params = ([torch.randn(2, 3, 8)], [m.to_query.weight, m.to_key.weight], [m.to_query.bias, m.to_key.bias], [m.w_g],
              [m.proj.weight], [m.proj.bias], [m.final.weight], [m.final.bias])
    with pytest.raises(RuntimeError, match=r"for inference: call it under torch.no_grad\(\)"):
        folded_tokens_kernels(*params, 8**-0.5, "l2", 1e-12)
