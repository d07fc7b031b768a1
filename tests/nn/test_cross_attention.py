"""Cross-E2A against a transcription of the CroCNet authors' code: outputs and every gradient."""

from __future__ import annotations

import pytest
import torch
from e2a_reference import AuthorsCrossAttention, assert_matches, authors_to_ours_names, grads
from kernel_env import interpreting

from crocnet.nn import CrossE2ABlock2d, CrossEfficientAdditiveAttention
from crocnet.ops import cross_e2a


def _device(backend):
    return "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"


def _run(module, xs, dys):
    xs = [x.detach().clone().requires_grad_(True) for x in xs]
    outs = module(*xs)
    torch.autograd.backward(outs, dys)
    return [o.detach() for o in outs], grads(module, xs)


@pytest.mark.parametrize("backend", ["torch", "triton", "triton-keep-qk", "triton-two-linears"])
@pytest.mark.parametrize("final_bug", [True, False], ids=["authors-final-bug", "per-stream-final"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_matches_the_authors_formulation(backend, final_bug, dtype):
    """Outputs and every gradient against the authors' form; "triton" packs each stream's q and k into one
    GEMM (``fuse_qk``, the default) made again in the backward (``recompute_qk``, the default),
    "triton-keep-qk" keeps it for the backward, "triton-two-linears" does not pack."""
    backend, fuse_qk, recompute_qk = backend.split("-")[0], not backend.endswith("two-linears"), not backend.endswith("keep-qk")
    if backend == "triton" and dtype == torch.float64 and not interpreting():
        pytest.skip("float64 kernels run in the interpreter only")
    dev = _device(backend)
    torch.manual_seed(3)
    ref = AuthorsCrossAttention(12, 24, final_bug=final_bug).double()
    xs = [torch.randn(2, 29, 12, dtype=torch.float64) for _ in range(3)]
    dys = [torch.randn(2, 29, 24, dtype=torch.float64) for _ in range(3)]
    out64, g64 = _run(ref, xs, dys)

    ours = CrossEfficientAdditiveAttention(12, 24, streams=3, backend=backend, authors_final_bug=final_bug, fuse_qk=fuse_qk,
                                           recompute_qk=recompute_qk)
    ours.load_crocnet_state_dict(ref.state_dict())
    ours = ours.to(dev, dtype)
    out, g = _run(ours, [x.to(dev, dtype) for x in xs], [d.to(dev, dtype) for d in dys])
    for s in range(3):
        assert_matches(f"output {s}", out[s], out64[s], dtype)
    names = authors_to_ours_names()
    assert set(names) == set(g64)
    for theirs, mine in names.items():
        if g64[theirs] is None:  # final_rv is unused under the authors' bug
            assert theirs.startswith("final_rv") and final_bug
            assert g[mine] is None or not g[mine].any()
            continue
        assert_matches(f"grad {theirs}", g[mine], g64[theirs], dtype, grad=True)


def test_final_bug_changes_only_the_rv_stream():
    torch.manual_seed(0)
    m = CrossEfficientAdditiveAttention(8, 16, backend="torch")
    xs = [torch.randn(1, 10, 8) for _ in range(3)]
    a = m(*xs)
    m.authors_final_bug = True
    b = m(*xs)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.allclose(a[2], b[2])


@pytest.mark.parametrize("streams", [2, 4])
def test_other_stream_counts(streams):
    """S = 2 and S = 4: the kernels against the PyTorch path, forward and every gradient."""
    dev = _device("triton")
    dtype = torch.float64 if interpreting() else torch.float32
    torch.manual_seed(streams)
    q, k = torch.randn(2, streams, 2, 21, 16, dtype=dtype).unbind(0)
    args = [q, k, torch.randn(streams, 16, dtype=dtype), torch.randn(streams, streams, 16, 16, dtype=dtype) / 4,
            torch.randn(streams, streams, 16, dtype=dtype)]
    dy = torch.randn(streams, 2, 21, 16, dtype=dtype)
    res = {}
    for backend, device in (("torch", "cpu"), ("triton", dev)):
        leaves = [a.clone().to(device).requires_grad_(True) for a in args]
        y = cross_e2a(*leaves, backend=backend)
        y.backward(dy.to(device))
        res[backend] = [y] + [a.grad for a in leaves]
    for name, a, ref in zip(["y", "dq", "dk", "dw_g", "dW", "db"], res["triton"], res["torch"]):
        assert_matches(name, a, ref, dtype, grad=name != "y")
    m = CrossEfficientAdditiveAttention(8, 16, streams=streams, backend="torch")
    outs = m(*[torch.randn(2, 5, 8) for _ in range(streams)])
    assert len(outs) == streams and all(o.shape == (2, 5, 16) for o in outs)


@pytest.mark.parametrize(
    "shapes, dtype, error, message",
    [
        ([(0, 4, 8)] * 3, torch.float32, ValueError, r"non-empty in every axis \(batch, tokens, 8\), got \(0, 4, 8\)"),
        ([(2, 0, 8)] * 3, torch.float32, ValueError, r"non-empty .* got \(2, 0, 8\)"),
        ([(2, 4, 8), (2, 4, 8), (2, 5, 8)], torch.float32, ValueError, r"shape of stream 0 \(2, 4, 8\), got \(2, 5, 8\) for stream 2"),
        ([(2, 4, 7)] * 3, torch.float32, ValueError, r"\(B, N, 8\), got \(2, 4, 7\)"),
        ([(2, 4, 8)] * 2, torch.float32, ValueError, "expected 3 streams, got 2"),
        ([(2, 4, 8)] * 3, torch.int64, TypeError, "floating-point tensors, got torch.int64 for stream 0"),
        ([(2, 4, 8)] * 3, torch.float64, TypeError, r"stream 0 must have the parameters' dtype torch.float32 \(outside autocast\), got torch.float64"),
    ],
)
def test_module_bad_inputs_are_clear_errors(shapes, dtype, error, message):
    m = CrossEfficientAdditiveAttention(8, 16)
    with pytest.raises(error, match=message):
        m(*[torch.zeros(s, dtype=dtype) for s in shapes])


def test_module_names_the_stream_of_another_dtype_and_bad_arguments():
    m = CrossEfficientAdditiveAttention(8, 16, backend="torch")
    xs = [torch.zeros(2, 4, 8) for _ in range(3)]
    with pytest.raises(TypeError, match=r"stream 2 must have the parameters' dtype torch.float32 \(outside autocast\), got torch.float16"):
        m(*xs[:2], xs[2].half())
    with pytest.raises(TypeError, match=r"streams must be tensors \(B, N, 8\), got list for stream 0"):
        m(xs, xs, xs)
    for kwargs, message in ((dict(streams=0), "streams must be an int >= 1, got 0"), (dict(streams=1.5), "streams must be an int >= 1, got 1.5"),
                            (dict(token_dim=0), "token_dim must be an int >= 1, got 0")):
        with pytest.raises(ValueError, match=f"CrossEfficientAdditiveAttention: {message}"):
            CrossEfficientAdditiveAttention(**{"in_dims": 8, "token_dim": 16, **kwargs})
    with pytest.raises(TypeError, match="stream 1 must be a floating-point tensor, got torch.int64"):
        CrossE2ABlock2d(8)(torch.zeros(1, 8, 4, 4), torch.zeros(1, 8, 4, 4, dtype=torch.long), torch.zeros(1, 8, 4, 4))


def test_loader_names_the_missing_key():
    ref = AuthorsCrossAttention(8, 16)
    sd = ref.state_dict()
    del sd["Proj_myo3.weight"]
    with pytest.raises(KeyError, match="Proj_myo3.weight"):
        CrossEfficientAdditiveAttention(8, 16).load_crocnet_state_dict(sd)
    with pytest.raises(ValueError, match="has 3 streams"):
        CrossEfficientAdditiveAttention(8, 16, streams=2).load_crocnet_state_dict(ref.state_dict())


def _authors_block_state_dict(dim: int) -> dict:
    """The keys of the authors' ``My_NetXd`` (attn_X, layer scales, per-stream ``linear_2d`` MLPs)."""
    attn = AuthorsCrossAttention(dim, dim)
    sd = {f"attn_X.{k}": v for k, v in attn.state_dict().items()}
    hidden = 4 * dim
    for st in ("lv", "myo", "rv"):
        sd[f"layer_scale_1_{st}"] = torch.randn(dim, 1, 1)
        sd[f"layer_scale_2_{st}"] = torch.randn(dim, 1, 1)
        bn = torch.nn.BatchNorm2d(dim).state_dict()
        for k in ("weight", "bias", "running_mean"):
            bn[k] = torch.randn(dim)
        bn["running_var"] = torch.rand(dim) + 0.5
        sd.update({f"linear_2d_{st}.norm1.{k}": v for k, v in bn.items()})
        sd[f"linear_2d_{st}.fc1.weight"] = torch.randn(hidden, dim, 1, 1)
        sd[f"linear_2d_{st}.fc1.bias"] = torch.randn(hidden)
        sd[f"linear_2d_{st}.fc2.weight"] = torch.randn(dim, hidden, 1, 1)
        sd[f"linear_2d_{st}.fc2.bias"] = torch.randn(dim)
    return sd


def test_cross_block_loads_the_authors_block_and_keeps_shapes():
    block = CrossE2ABlock2d(16, streams=3, backend="torch")
    sd = _authors_block_state_dict(16)
    result = block.load_crocnet_state_dict(sd)
    assert not result.missing_keys and not result.unexpected_keys
    torch.testing.assert_close(block.layer_scale_1[2], sd["layer_scale_1_rv"])
    torch.testing.assert_close(block.attn.proj[0][2].weight, sd["attn_X.Proj_lv3.weight"])
    xs = [torch.randn(2, 16, 6, 5) for _ in range(3)]
    outs = block(*xs)
    assert [o.shape for o in outs] == [x.shape for x in xs]


@pytest.mark.parametrize("final_bug", [True, False], ids=["authors-final-bug", "per-stream-final"])
def test_cross_block_matches_the_authors_block(final_bug):
    """The authors' ``My_NetXd`` per stream: ``x + γ₁ · X_attn(x)_s``, then ``x + γ₂ · linear_2d(x)``, with
    SwiftFormer's ``Mlp`` (timm's ``swiftformer.Mlp``, the same keys) and the attention transcription."""
    from timm.models.swiftformer import Mlp

    torch.manual_seed(0)
    dim, B, H, W = 16, 2, 6, 5
    sd = {k: v.double() if v.is_floating_point() else v for k, v in _authors_block_state_dict(dim).items()}
    block = CrossE2ABlock2d(dim, streams=3, backend="torch", authors_final_bug=final_bug).double()
    block.load_crocnet_state_dict(sd)
    block.eval()
    xs = [torch.randn(B, dim, H, W, dtype=torch.float64) for _ in range(3)]

    attn = AuthorsCrossAttention(dim, dim, final_bug=final_bug).double()
    attn.load_state_dict({k[len("attn_X."):]: v for k, v in sd.items() if k.startswith("attn_X.")})
    a = attn(*(x.flatten(2).transpose(1, 2) for x in xs))
    for s, st in enumerate(("lv", "myo", "rv")):
        mlp = Mlp(dim, 4 * dim).double().eval()
        mlp.load_state_dict({k[len(f"linear_2d_{st}."):]: v for k, v in sd.items() if k.startswith(f"linear_2d_{st}.")})
        x = xs[s] + sd[f"layer_scale_1_{st}"] * a[s].transpose(1, 2).reshape(B, dim, H, W)
        expected = x + sd[f"layer_scale_2_{st}"] * mlp(x)
        torch.testing.assert_close(block(*xs)[s], expected, rtol=1e-12, atol=1e-12)


def test_cross_block_names_the_feature_map_it_expected():
    block = CrossE2ABlock2d(8, backend="torch")
    with pytest.raises(ValueError, match=r"expected feature maps of shape \(B, 8, H, W\), got \(1, 6, 4, 4\) for stream 0"):
        block(*[torch.randn(1, 6, 4, 4)] * 3)
    with pytest.raises(ValueError, match=r"expected feature maps of shape \(B, 8, H, W\), got \(1, 16, 8\) for stream 0"):
        block(*[torch.randn(1, 16, 8)] * 3)


def test_cross_module_creates_parameters_on_the_given_dtype():
    m = CrossEfficientAdditiveAttention(8, 16, dtype=torch.float64, device="cpu")
    assert {p.dtype for p in m.parameters()} == {torch.float64}


def test_cross_block_layer_scales_start_small():
    """Fresh block ≈ identity (layer scales 1e-5)."""
    block = CrossE2ABlock2d(8, backend="torch").eval()
    xs = [torch.randn(1, 8, 4, 4) for _ in range(3)]
    outs = block(*xs)
    for x, o in zip(xs, outs):
        assert (o - x).abs().max() < 1e-3


@pytest.mark.parametrize("backend, fuse_qk, recompute_qk, expected", [
    ("triton", True, True, "tokens_kernels"), ("triton", True, False, "tokens_kernels"),
    ("triton", False, True, "cross_e2a"), ("torch", True, True, "cross_e2a_streams"),
])
def test_module_packs_q_and_k_only_for_the_kernels(monkeypatch, backend, fuse_qk, recompute_qk, expected):
    """``fuse_qk``: one GEMM per stream into a packed qk where the Triton kernels run (inside the op, made
    again in the backward, with ``recompute_qk``); the PyTorch backend keeps two linears per stream and its
    per-stream form."""
    import crocnet.nn.cross_attention as cross

    called = []
    for name in ("cross_e2a", "cross_e2a_streams", "tokens_kernels"):
        def spy(*args, _real=getattr(cross, name), _name=name, **kwargs):
            called.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(cross, name, spy)
    dev = _device(backend)
    module = CrossEfficientAdditiveAttention(8, 16, backend=backend, fuse_qk=fuse_qk, recompute_qk=recompute_qk).to(dev)
    assert f"fuse_qk={fuse_qk}, recompute_qk={recompute_qk}" in repr(module)
    module(*(torch.randn(2, 5, 8, device=dev) for _ in range(3)))
    assert called == [expected]


def test_recompute_qk_keeps_no_stream_qk_for_the_backward():
    """With ``recompute_qk`` (the default) the three streams' packed qk (2 BND each) is made again in the
    backward, not saved; the module that keeps it saves the stacked ``(3, B, N, 2D)``."""
    dev = _device("triton")
    xs = [torch.randn(2, 7, 8, device=dev, requires_grad=True) for _ in range(3)]
    for recompute, want in ((True, 0), (False, 1)):
        module = CrossEfficientAdditiveAttention(8, 16, backend="triton", recompute_qk=recompute).to(dev)
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t, lambda t: t):
            outs = module(*xs)
        torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])
        assert saved.count((3, 2, 7, 32)) == want, saved


@pytest.mark.parametrize("recompute_qk", [True, False], ids=["recompute-qk", "keep-qk"])
def test_cross_module_under_autocast_matches_the_authors(recompute_qk):
    """Mixed precision as training runs it: float32 parameters under bfloat16 autocast on the Triton path (the
    packed GEMMs in bfloat16, the kernels on bfloat16 operands); outputs and every gradient held to the
    authors' module under the same autocast by the table's bfloat16 rule, against the authors' in float64."""
    dev = _device("triton")
    torch.manual_seed(11)
    ref = AuthorsCrossAttention(12, 24, final_bug=False).double()
    xs = [torch.randn(2, 29, 12, dtype=torch.float64) for _ in range(3)]
    dys = [torch.randn(2, 29, 24, dtype=torch.float64) for _ in range(3)]
    out64, g64 = _run(ref, xs, dys)
    ours = CrossEfficientAdditiveAttention(12, 24, backend="triton", recompute_qk=recompute_qk)
    ours.load_crocnet_state_dict(ref.state_dict())
    ours, low = ours.to(dev), AuthorsCrossAttention(12, 24, final_bug=False).to(dev)
    low.load_state_dict(ref.state_dict())
    xs32, dys32 = [x.float().to(dev) for x in xs], [d.float().to(dev) for d in dys]
    with torch.autocast(device_type=dev, dtype=torch.bfloat16):
        out, g = _run(ours, xs32, dys32)
        base_out, base_g = _run(low, xs32, dys32)
    for s in range(3):
        assert out[s].dtype == torch.bfloat16
        assert_matches(f"output {s}", out[s], out64[s], torch.bfloat16, baseline=base_out[s])
    for theirs, mine in authors_to_ours_names().items():
        assert g[mine].dtype == torch.float32, mine  # the parameters' dtype
        assert_matches(f"grad {theirs}", g[mine], g64[theirs], torch.bfloat16, grad=True, baseline=base_g[theirs])


@pytest.mark.parametrize("recompute_qk", [True, False], ids=["recompute-qk", "keep-qk"])
@pytest.mark.parametrize("streams", [1, 3])
def test_kernels_from_the_tokens_take_frozen_parameters_and_accumulate(streams, recompute_qk):
    """The tokens op takes each parameter as its own tensor and hands back views of its stacked gradients:
    a frozen parameter gets none and changes no other gradient, and two backward passes accumulate twice
    the gradient of one (float64 in the interpreter, float32 on a GPU, against the two-linear module, which
    stacks its parameters through autograd)."""
    from crocnet.nn import EfficientAdditiveAttention

    dev = _device("triton")
    dtype = torch.float64 if dev == "cpu" else torch.float32
    torch.manual_seed(5)
    make = ((lambda **kw: EfficientAdditiveAttention(12, 16, backend="triton", **kw)) if streams == 1 else
            (lambda **kw: CrossEfficientAdditiveAttention(12, 16, streams=streams, backend="triton", **kw)))
    keep = make(fuse_qk=False).to(dev, dtype)
    ours = make(recompute_qk=recompute_qk).to(dev, dtype)
    ours.load_state_dict(keep.state_dict())
    frozen = {"to_key.weight", "final.bias"} if streams == 1 else {"to_key.1.weight", "proj.0.2.bias", "w_g.2", "final.0.weight"}
    for module in (keep, ours):
        for name, p in module.named_parameters():
            p.requires_grad_(name not in frozen)
    xs = [torch.randn(2, 9, 12, device=dev, dtype=dtype, requires_grad=True) for _ in range(streams)]
    dys = [torch.randn(2, 9, 16, device=dev, dtype=dtype) for _ in range(streams)]
    torch.autograd.backward(keep(*xs), dys)
    want = {name: p.grad.clone() for name, p in keep.named_parameters() if name not in frozen}
    for x in xs:
        x.grad = None
    for _ in range(2):
        torch.autograd.backward(ours(*xs), dys)
    for name, p in ours.named_parameters():
        if name in frozen:
            assert p.grad is None, name
            continue
        assert p.grad.shape == p.shape and p.grad.dtype == p.dtype, name
        torch.testing.assert_close(p.grad, 2 * want[name], rtol=1e-10 if dtype == torch.float64 else 1e-5, atol=0, msg=name)


@pytest.mark.parametrize("recompute_qk", [True, False], ids=["recompute-qk", "keep-qk"])
def test_a_stream_whose_output_is_unused_gets_zero_gradient(recompute_qk):
    """Backward from one stream's output alone: the tokens op gives the gradients of the two-linear module,
    the other streams' ``final`` linears none (None, which optimisers skip; float64 in the interpreter,
    float32 on a GPU)."""
    dev = _device("triton")
    dtype = torch.float64 if dev == "cpu" else torch.float32
    torch.manual_seed(9)
    keep = CrossEfficientAdditiveAttention(12, 16, backend="triton", fuse_qk=False).to(dev, dtype)
    ours = CrossEfficientAdditiveAttention(12, 16, backend="triton", recompute_qk=recompute_qk).to(dev, dtype)
    ours.load_state_dict(keep.state_dict())
    xs = [torch.randn(2, 9, 12, device=dev, dtype=dtype, requires_grad=True) for _ in range(3)]
    dy = torch.randn(2, 9, 16, device=dev, dtype=dtype)
    runs = []
    for module in (keep, ours):
        torch.autograd.backward(module(*xs)[1], dy)
        runs.append({name: p.grad for name, p in module.named_parameters()} | {f"x{s}": x.grad for s, x in enumerate(xs)})
        for x in xs:
            x.grad = None
    for name, want in runs[0].items():
        got = runs[1][name]
        if want is None:  # only final.1 reads stream 1's output: the other finals take no part
            assert got is None, name
            continue
        torch.testing.assert_close(got, want, rtol=1e-10 if dtype == torch.float64 else 1e-5, atol=1e-12, msg=name)


@pytest.mark.parametrize("final_bug", [False, True], ids=["per-stream-final", "authors-final-bug"])
def test_inference_folds_each_final_and_matches_the_authors(monkeypatch, final_bug):
    """Grad mode off (``torch.inference_mode``): the Triton path folds each stream's ``final`` (the authors'
    ``final_myo`` for RV with the flag) into the key interaction's GEMM; outputs held to the authors' form by
    the float64 rule (float32 on a GPU); with grad mode on, or ``fold_final=False``, the linears run apart."""
    import crocnet.nn.cross_attention as cross

    folded = []
    monkeypatch.setattr(cross, "folded_tokens_kernels",
                        lambda *a, _real=cross.folded_tokens_kernels: folded.append(1) or _real(*a))
    dev = _device("triton")
    dtype = torch.float64 if dev == "cpu" else torch.float32
    torch.manual_seed(13)
    ref = AuthorsCrossAttention(12, 24, final_bug=final_bug).double()
    xs = [torch.randn(2, 29, 12, dtype=torch.float64) for _ in range(3)]
    with torch.no_grad():
        out64 = ref(*xs)
    for fold in (True, False):
        ours = CrossEfficientAdditiveAttention(12, 24, backend="triton", authors_final_bug=final_bug, fold_final=fold)
        ours.load_crocnet_state_dict(ref.state_dict())
        ours = ours.to(dev, dtype)
        folded.clear()
        with torch.inference_mode():
            out = ours(*(x.to(dev, dtype) for x in xs))
        assert folded == ([1] if fold else []), f"fold_final={fold}: folded {len(folded)} times"
        for s in range(3):
            assert_matches(f"output {s}", out[s], out64[s], dtype)
    folded.clear()
    ours.fold_final = True
    ours(*(x.to(dev, dtype) for x in xs))  # grad mode on: not folded
    assert folded == []


@pytest.mark.parametrize("path", ["packed-qk", "keep-qk", "two-linears", "folded"])
def test_one_stream_gives_one_output_of_the_batch_shape(path):
    """``streams=1`` on the Triton path: one output ``(B, N, token_dim)`` equal to the PyTorch backend's (the
    tokens op returns one stream's output without a stream axis; unbinding it had split the batch)."""
    dev = _device("triton")
    dtype = torch.float64 if dev == "cpu" else torch.float32
    options = {"packed-qk": {}, "keep-qk": {"recompute_qk": False}, "two-linears": {"fuse_qk": False}, "folded": {}}[path]
    torch.manual_seed(17)
    ours = CrossEfficientAdditiveAttention(8, 16, streams=1, backend="triton", **options).to(dev, dtype)
    ref = CrossEfficientAdditiveAttention(8, 16, streams=1, backend="torch").to(dev, dtype)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(3, 5, 8, device=dev, dtype=dtype)
    with torch.set_grad_enabled(path != "folded"):
        out = ours(x)
    assert isinstance(out, tuple) and len(out) == 1 and out[0].shape == (3, 5, 16)
    torch.testing.assert_close(out[0], ref(x)[0], rtol=1e-10 if dtype == torch.float64 else 1e-5, atol=1e-12)


def test_adapted_or_hooked_linears_run_as_on_the_torch_path():
    """As for the E2A module: a stream's input linear with a forward of its own (an adapter) is called, and a
    hook on a ``final`` fires at inference instead of the linear being folded away; outputs and every
    gradient equal the PyTorch path's (float64 in the interpreter)."""
    if not interpreting():
        pytest.skip("float64 kernels run in the interpreter only")

    class Scaled(torch.nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    runs = {}
    for backend in ("torch", "triton"):
        torch.manual_seed(0)
        m = CrossEfficientAdditiveAttention(8, 16, streams=3, backend=backend).double()
        scaled = Scaled(8, 16, dtype=torch.float64)
        scaled.load_state_dict(m.to_key[1].state_dict())
        m.to_key[1] = scaled
        seen = []
        m.final[2].register_forward_hook(lambda *a: seen.append("final 2"))
        xs = [torch.randn(2, 5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(s)) for s in range(3)]
        out, g = _run(m, xs, [torch.ones(2, 5, 16, dtype=torch.float64)] * 3)
        with torch.no_grad():
            inference = m(*xs)
        runs[backend] = out, g, inference, seen
    (out, g, inference, seen), (out_ref, g_ref, inference_ref, seen_ref) = runs["triton"], runs["torch"]
    assert seen == seen_ref == ["final 2"] * 2
    for a, b in zip([*out, *inference], [*out_ref, *inference_ref], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert g.keys() == g_ref.keys()
    for name in g_ref:
        torch.testing.assert_close(g[name], g_ref[name], rtol=1e-10, atol=1e-12, msg=lambda m: f"grad {name}: {m}")


@pytest.mark.parametrize("streams", [2, 3])
def test_attention_width_one_trains_on_both_paths(streams):
    """``token_dim = 1``: the qk bias gradient of several streams is a non-contiguous view of the kernels'
    sums (strides (1, S)), which the gradient split had refused to view. Every gradient equals the PyTorch
    path's (float64 in the interpreter, float32 on a GPU)."""
    dev = _device("triton")
    dtype = torch.float64 if dev == "cpu" else torch.float32
    torch.manual_seed(3)
    ours = CrossEfficientAdditiveAttention(3, 1, streams=streams, backend="triton").to(dev, dtype)
    ref = CrossEfficientAdditiveAttention(3, 1, streams=streams, backend="torch").to(dev, dtype)
    ref.load_state_dict(ours.state_dict())
    xs = [torch.randn(2, 5, 3, device=dev, dtype=dtype) for _ in range(streams)]
    dys = [torch.randn(2, 5, 1, device=dev, dtype=dtype) for _ in range(streams)]

    def run(module):
        leaves = [x.clone().requires_grad_(True) for x in xs]
        torch.autograd.backward(module(*leaves), dys)
        return grads(module, leaves)

    got, want = run(ours), run(ref)
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-10 if dtype == torch.float64 else 1e-5, atol=1e-12,
                                   msg=name)
