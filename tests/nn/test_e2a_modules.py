"""The E2A modules are drop-in for timm's: state dicts, patched SwiftFormer models, the 2D layers."""

from __future__ import annotations

import pytest
import timm
import torch
from e2a_reference import timm_e2a
from torch import nn
from kernel_env import skip_fp64_on_gpu, triton_device

import crocnet
from crocnet.nn import (
    CrossEfficientAdditiveAttention,
    E2A2d,
    E2ABlock2d,
    EfficientAdditiveAttention,
    EfficientAdditiveAttention2d,
)


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


def _swiftformer(dtype=torch.float64, device="cpu", **kwargs) -> torch.nn.Module:
    """A timm SwiftFormer whose layer scales are around 1 (``uniform_(0.5, 1.5)``): fresh ones are 1e-5, which
    would leave the attention's part of the logits below any tolerance, so a broken layer would pass."""
    model = timm.create_model("swiftformer_xs", **kwargs)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_scale" in name:
                p.uniform_(0.5, 1.5)
    return model.eval().to(device, dtype)


def _logits(out) -> list[torch.Tensor]:
    return out if isinstance(out, list) else [out]


def _assert_patched_matches(model, names, x, before, rtol, atol):
    """The patched model's outputs equal ``before`` within the tolerance, and zeroing one patched layer's
    output moves them far outside it (the comparison can see the attention)."""
    with torch.no_grad():
        after = model(x)
        hook = model.get_submodule(names[-1]).register_forward_hook(lambda m, i, out: torch.zeros_like(out))
        broken = model(x)
        hook.remove()
    for a, b, c in zip(_logits(after), _logits(before), _logits(broken), strict=True):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)
    assert max((c - b).abs().max().item() for b, c in zip(_logits(before), _logits(broken))) > 1e3 * (atol + rtol)


def test_patched_swiftformer_gives_timm_logits():
    """float64, layer scales around 1: the PyTorch path is timm's computation (1e-10)."""
    torch.manual_seed(0)
    model = _swiftformer(num_classes=10)
    x = torch.randn(2, 3, 96, 96, dtype=torch.float64)
    with torch.no_grad():
        before = model(x)
    names = crocnet.patch_timm_swiftformer(model, backend="torch")
    assert len(names) == 4  # one E2A per stage
    assert crocnet.patch_timm_swiftformer(model, backend="torch") == []  # idempotent
    _assert_patched_matches(model, names, x, before, rtol=1e-10, atol=1e-10)
    assert len(crocnet.unpatch_timm_swiftformer(model)) == 4
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=0, atol=0)


@pytest.mark.parametrize("wrap", ["features_only", "wrapped"])
def test_patch_reaches_swiftformer_attention_inside_other_models(wrap):
    """A ``features_only`` backbone (what segmentation and detection networks hold) and a model wrapped in
    another module get the same four layers replaced, with the same outputs (float64, 1e-10)."""
    torch.manual_seed(0)
    if wrap == "features_only":
        model = _swiftformer(features_only=True)
    else:
        model = torch.nn.Sequential(_swiftformer(num_classes=3))
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        before = model(x)
    names = crocnet.patch_timm_swiftformer(model, backend="torch")
    assert len(names) == 4 and all(isinstance(model.get_submodule(n), EfficientAdditiveAttention2d) for n in names)
    assert crocnet.patch_timm_swiftformer(model, backend="torch") == []
    _assert_patched_matches(model, names, x, before, rtol=1e-10, atol=1e-10)


def test_patched_swiftformer_with_the_triton_kernels():
    """The kernels inside a patched SwiftFormer: float64 in the interpreter (1e-10), float32 on a GPU (1e-4:
    five stages of float32 rounding, timm's and ours)."""
    dev = triton_device()
    dtype = torch.float64 if dev == "cpu" else torch.float32
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    torch.manual_seed(0)
    model = _swiftformer(dtype, dev, num_classes=5)
    x = torch.randn(1, 3, 64, 64, device=dev, dtype=dtype)
    with torch.no_grad():
        before = model(x)
    names = crocnet.patch_timm_swiftformer(model, backend="triton")
    _assert_patched_matches(model, names, x, before, rtol=tol, atol=tol)


def test_unpatch_keeps_what_the_model_holds_now_and_hooks_carry_across():
    """Weights loaded into a patched model with ``assign=True`` (new Parameter objects) survive ``unpatch`` (the
    restored layers had kept the old ``w_g``: other logits, silently), as does the train/eval mode; a hook on a
    timm attention layer fires while it is patched and after."""
    torch.manual_seed(0)
    model = _swiftformer(num_classes=3)
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    calls, backward = [], []
    model.get_submodule("stages.1.blocks.2.attn").register_forward_hook(lambda *a: calls.append(1))
    model.get_submodule("stages.1.blocks.2.attn").register_full_backward_hook(lambda *a: backward.append(1))
    crocnet.patch_timm_swiftformer(model, backend="torch")
    model(x.requires_grad_(True)).sum().backward()
    assert len(backward) == 1  # a full backward hook fires on the patched layer (its flag travels with the dicts)
    calls.clear()
    state = {k: torch.randn_like(v) if k.endswith("w_g") else v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(state, assign=True)
    model.train()
    with torch.no_grad():
        patched = model(x)
    assert len(calls) == 1
    crocnet.unpatch_timm_swiftformer(model)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(m.training for m in model.modules())
    with torch.no_grad():
        torch.testing.assert_close(model(x), patched, rtol=1e-10, atol=1e-10)
    assert len(calls) == 2
    model(x).sum().backward()
    assert len(backward) == 2


def test_a_layer_that_cannot_be_patched_leaves_the_model_unpatched():
    from torch.nn.utils import parametrize

    class Scaled(torch.nn.Module):
        def forward(self, w):
            return 2 * w

    model = _swiftformer(num_classes=3)
    parametrize.register_parametrization(model.get_submodule("stages.2.blocks.5.attn"), "w_g", Scaled())
    with pytest.raises(TypeError, match=r"stages.2.blocks.5.attn.w_g is not a plain parameter \(parametrized\?\): "
                                        r"remove its parametrization first; nothing was patched"):
        crocnet.patch_timm_swiftformer(model, backend="torch")
    assert not any(isinstance(m, EfficientAdditiveAttention2d) for m in model.modules())


def test_patch_rejects_other_models():
    with pytest.raises(ValueError, match="found no timm EfficientAdditiveAttention in Linear"):
        crocnet.patch_timm_swiftformer(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="expects a torch.nn.Module .* got str"):
        crocnet.patch_timm_swiftformer("swiftformer_xs")
    with pytest.raises(TypeError, match="not the one it is given"):
        crocnet.patch_timm_swiftformer(timm.models.swiftformer.EfficientAdditiveAttention(16, 16))
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


def test_all_zero_scores_under_float16_autocast_give_finite_gradients():
    """``w_g = 0`` under CPU float16 autocast on the PyTorch path: the scores' gradient (1/eps) had overflowed
    float16 when autocast cast the float32 scores back, so every input gradient was NaN."""
    torch.manual_seed(0)
    module = EfficientAdditiveAttention(16, 16, backend="torch")
    with torch.no_grad():
        module.w_g.zero_()
    x = torch.randn(2, 9, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.float16):
        y = module(x)
    y.float().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().max() > 0


def test_an_input_that_is_not_a_tensor_is_a_clear_type_error():
    with pytest.raises(TypeError, match=r"expected tokens as a tensor \(B, N, 16\), got list"):
        EfficientAdditiveAttention(16, 16)([torch.randn(2, 5, 16)])
    with pytest.raises(TypeError, match=r"expected a feature map as a tensor \(B, 16, H, W\), got ndarray"):
        EfficientAdditiveAttention2d(16, 16)(torch.randn(1, 16, 3, 3).numpy())


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


@pytest.mark.parametrize("make, streams", [
    (lambda backend: EfficientAdditiveAttention(8, 16, backend=backend), 1),
    (lambda backend: EfficientAdditiveAttention(8, 16, recompute_qk=False, backend=backend), 1),
    (lambda backend: EfficientAdditiveAttention(8, 16, fuse_qk=False, token_norm="softmax", backend=backend), 1),
    (lambda backend: CrossEfficientAdditiveAttention(8, 16, streams=3, backend=backend), 3),
], ids=["default", "keep_qk", "two_linears", "cross3"])
def test_gradient_penalty_matches_the_torch_backend(make, streams):
    """A loss on the input gradient (``create_graph=True``): every parameter's and input's gradient on the
    Triton path equals the PyTorch path's (float64), where the kernels' gradients, carrying no graph, would
    silently drop the penalty's part."""
    skip_fp64_on_gpu("triton", torch.float64)
    grads = {}
    for backend in ("torch", "triton"):
        torch.manual_seed(0)
        m = make(backend).double()
        g = torch.Generator().manual_seed(1)
        xs = [torch.randn(2, 5, 8, dtype=torch.float64, generator=g).requires_grad_(True) for _ in range(streams)]
        y = m(*xs)
        y = torch.stack(y) if isinstance(y, tuple) else y
        dxs = torch.autograd.grad(y.square().sum(), xs, create_graph=True)
        (y.mean() + sum(dx.square().sum() for dx in dxs)).backward()
        grads[backend] = [p.grad for p in m.parameters()] + [x.grad for x in xs]
    for ours, ref in zip(grads["triton"], grads["torch"], strict=True):
        torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-12)  # float64


def test_second_derivative_of_the_kept_qk_path_under_autocast_is_a_clear_error():
    m = EfficientAdditiveAttention(16, 16, recompute_qk=False, backend="triton").to(triton_device())
    x = torch.randn(2, 9, 16, device=triton_device(), requires_grad=True)
    with torch.autocast(x.device.type, dtype=torch.bfloat16):
        y = m(x)
    with pytest.raises(RuntimeError, match="recompute_qk=True"):
        torch.autograd.grad(y.float().sum(), x, create_graph=True)
    (dx,) = torch.autograd.grad(y.float().sum(), x)  # first order as always
    assert dx.shape == x.shape and torch.isfinite(dx).all()


class _LoRALinear(nn.Linear):
    """A linear with a forward of its own (as peft's adapters): ``W x + b + B A x``."""

    def __init__(self, base: nn.Linear, rank: int = 2):
        super().__init__(base.in_features, base.out_features, dtype=base.weight.dtype, device=base.weight.device)
        self.load_state_dict(base.state_dict())
        g = torch.Generator().manual_seed(5)
        self.A = nn.Parameter(torch.randn(rank, base.in_features, generator=g, dtype=base.weight.dtype))
        self.B = nn.Parameter(torch.randn(base.out_features, rank, generator=g, dtype=base.weight.dtype))

    def forward(self, x):
        return super().forward(x) + x @ self.A.t() @ self.B.t()


def _adapted(module, how: str, seen: list):
    """Change ``module``'s input linear (and hook its ``final``) as ``how`` says."""
    if how == "lora":
        module.to_query = _LoRALinear(module.to_query)
    elif how == "hooks":
        module.to_key.register_forward_hook(lambda *a: seen.append("to_key"))
        module.final.register_forward_hook(lambda *a: seen.append("final"))
    elif how == "weight_norm":  # the old hook-based form: a pre-hook makes .weight on each call
        torch.nn.utils.weight_norm(module.to_query)
    elif how == "parametrize":  # reading .weight applies it: the kernels may still read the linear
        torch.nn.utils.parametrizations.weight_norm(module.to_query)
    return module


@pytest.mark.filterwarnings("ignore:.*torch.nn.utils.weight_norm.*is deprecated:FutureWarning")
@pytest.mark.parametrize("how", ["lora", "hooks", "weight_norm", "parametrize"])
def test_adapted_or_hooked_linears_run_as_on_the_torch_path(monkeypatch, how):
    """The Triton path reads ``to_query``/``to_key``/``final`` as weight and bias only where that is what
    calling them would do: a linear with a forward of its own (an adapter), hooks or the hook-based
    ``weight_norm`` is called (hooks fire, the adapter counts, two training steps run), a
    ``parametrize``-d one still takes the fused kernels; outputs and every gradient equal the PyTorch
    path's, in training and at inference (float64 in the interpreter)."""
    import crocnet.nn.attention as attention

    skip_fp64_on_gpu("triton", torch.float64)
    fused = []
    monkeypatch.setattr(attention, "tokens_kernels", lambda *a, _real=attention.tokens_kernels, **k: fused.append(1)
                        or _real(*a, **k))
    runs = {}
    for backend in ("torch", "triton"):
        torch.manual_seed(0)
        seen = []
        m = _adapted(EfficientAdditiveAttention(8, 16, backend=backend).double(), how, seen)
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        x = torch.randn(2, 5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        for _ in range(2):
            opt.zero_grad()
            m(x).square().sum().backward()
            opt.step()
        grads = [p.grad.clone() for p in m.parameters()]
        with torch.no_grad():
            out = m(x)
        runs[backend] = out, grads, seen
    torch.testing.assert_close(runs["triton"][0], runs["torch"][0], rtol=1e-10, atol=1e-12)
    for ours, ref in zip(runs["triton"][1], runs["torch"][1], strict=True):
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    assert runs["triton"][2] == runs["torch"][2] == (["to_key", "final"] * 3 if how == "hooks" else [])
    assert fused == ([1, 1] if how == "parametrize" else [])  # the two training steps


def test_proj_that_would_have_to_be_called_is_a_clear_error():
    m = EfficientAdditiveAttention(8, 16, backend="torch")
    m.proj = _LoRALinear(m.proj)
    with pytest.raises(TypeError, match="proj enters the attention op as its weight and bias.*_LoRALinear"):
        m(torch.randn(1, 3, 8))
