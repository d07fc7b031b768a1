"""E2A against timm's ``EfficientAdditiveAttention``: outputs and every gradient, by dtype and backend.

Our 2D module loads timm's state dict; both get the same input and the same upstream gradient. The float64
timm run is the reference; tolerances are in ``tests/e2a_reference.py``. Shapes are small and awkward
(N = 1, tokens not a multiple of any tile, widths that are not powers of two) so the interpreter stays fast.
"""

from __future__ import annotations

import copy

import pytest
import torch
from kernel_env import skip_fp64_on_gpu, triton_device
from e2a_reference import assert_core_matches_timm, assert_matches, grads, softmax_e2a_module_forward, timm_core, timm_e2a

from crocnet.nn import EfficientAdditiveAttention, EfficientAdditiveAttention2d
from crocnet.ops import cross_e2a, cross_e2a_packed, e2a, e2a_naive, e2a_packed


def _run(module, x, dy, forward=None):
    x = x.detach().clone().requires_grad_(True)
    out = (forward or module)(x)
    out.backward(dy)
    return out.detach(), grads(module, [x])


def _compare(backend, dtype, batch, hw, in_dims, token_dim, device="cpu", **options):
    torch.manual_seed(hash((batch, hw, in_dims, token_dim)) % 2**31)
    ref = timm_e2a(in_dims, token_dim).double()
    x = torch.randn(batch, in_dims, *hw, dtype=torch.float64)
    dy = torch.randn(batch, token_dim, *hw, dtype=torch.float64)
    out64, g64 = _run(ref, x, dy)

    ours = EfficientAdditiveAttention2d(in_dims, token_dim, backend=backend, **options).to(device, dtype)
    ours.load_state_dict(ref.state_dict())
    out, g = _run(ours, x.to(device, dtype), dy.to(device, dtype))

    base_out, base_g = None, {}
    if dtype in (torch.float16, torch.bfloat16):
        low = copy.deepcopy(ref).to(dtype)
        base_out, base_g = _run(low, x.to(dtype), dy.to(dtype))
    assert_matches("output", out, out64, dtype, baseline=base_out)
    assert set(g) == set(g64)
    for name in g64:
        assert g[name] is not None, f"no gradient reached {name}"
        assert_matches(f"grad {name}", g[name], g64[name], dtype, grad=True, baseline=base_g.get(name))


SHAPES = [  # (batch, (H, W), in_dims, token_dim): N = 1, 63, 257, 40; D = 48, 64, 100, 56
    (1, (1, 1), 16, 48),
    (3, (7, 9), 24, 64),
    (1, (1, 257), 8, 100),
    (2, (5, 8), 32, 56),
]
#: The issue's grid for the kernels: B in {1, 3} x N in {1, 63, 257} x D in {48, 64, 100}.
GRID = [(b, hw, 16, d) for b in (1, 3) for hw in ((1, 1), (7, 9), (1, 257)) for d in (48, 64, 100)]


def _ids(s):
    return f"B{s[0]}-N{s[1][0] * s[1][1]}-D{s[3]}"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_torch_backend_matches_timm(shape, dtype):
    _compare("torch", dtype, *shape)


#: the module's Triton paths: packed qk made again in the backward (the default), packed qk kept, two linears
PATHS = {"packed-qk": {}, "keep-qk": {"recompute_qk": False}, "two-linears": {"fuse_qk": False}}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_triton_backend_matches_timm_fp64(shape, path):
    skip_fp64_on_gpu("triton", torch.float64)
    _compare("triton", torch.float64, *shape, device=triton_device(), **PATHS[path])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", SHAPES[:2] + [(2, (6, 11), 24, 64)], ids=_ids)
def test_inference_with_final_folded_matches_timm(shape, dtype):
    """Grad mode off: the module's output linear folded into the key interaction's GEMM (``fold_final``), held
    to timm by the dtype's rule (bfloat16: float32 parameters under autocast, against timm under the same
    autocast; float16: the module in float16, against timm in float16)."""
    if dtype == torch.float64:
        skip_fp64_on_gpu("triton", dtype)
    batch, hw, in_dims, token_dim = shape
    dev = triton_device()
    torch.manual_seed(hash(shape) % 2**31)
    ref = timm_e2a(in_dims, token_dim).double()
    x = torch.randn(batch, in_dims, *hw, dtype=torch.float64)
    ours = EfficientAdditiveAttention2d(in_dims, token_dim, backend="triton")
    ours.load_state_dict(ref.state_dict())
    low = copy.deepcopy(ref)
    with torch.no_grad():
        out64 = ref(x)
        if dtype == torch.bfloat16:
            ours, low, x = ours.to(dev), low.float().to(dev), x.float().to(dev)
            with torch.autocast(device_type=dev, dtype=torch.bfloat16):
                out, base = ours(x), low(x)
            assert out.dtype == torch.bfloat16
        elif dtype == torch.float16:
            out, base = ours.to(dev, dtype)(x.to(dev, dtype)), low.to(dev, dtype)(x.to(dev, dtype))
        else:
            out, base = ours.to(dev, dtype)(x.to(dev, dtype)), None
    assert out.shape == out64.shape
    assert_matches("output", out, out64, dtype, baseline=base)


@pytest.mark.parametrize("shape", GRID, ids=_ids)
def test_triton_backend_matches_timm_fp32(shape):
    _compare("triton", torch.float32, *shape, device=triton_device())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("shape", [(2, (6, 11), 24, 64), (3, (1, 257), 16, 100)], ids=_ids)
def test_low_precision_within_timms_own_error(shape, backend, dtype):
    _compare(backend, dtype, *shape, device=triton_device() if backend == "triton" else "cpu")


def test_wide_rows_span_several_output_tiles():
    """D = 200 (> one 128-wide output tile) and 220 (SwiftFormer-L3's width), in the kernels."""
    _compare("triton", torch.float32, 2, (3, 7), 16, 200, device=triton_device())
    _compare("triton", torch.float32, 1, (2, 5), 8, 220, device=triton_device())


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_softmax_token_norm_matches_written_out_softmax(backend):
    """``token_norm="softmax"``: timm's parameters, Fastformer's softmax over tokens written out by hand
    (float64 on CPU, float32 for the compiled kernels on a GPU)."""
    device = triton_device() if backend == "triton" else "cpu"
    dtype = torch.float32 if device == "cuda" else torch.float64
    ref = timm_e2a(16, 48).double()
    with torch.no_grad():
        ref.w_g.mul_(8.0)  # peaky scores: the max subtraction matters
    x = torch.randn(2, 37, 16, dtype=torch.float64)
    dy = torch.randn(2, 37, 48, dtype=torch.float64)
    out64, g64 = _run(ref, x, dy, forward=lambda t: softmax_e2a_module_forward(ref, t))
    ours = EfficientAdditiveAttention(16, 48, token_norm="softmax", backend=backend).to(device, dtype)
    ours.load_state_dict(ref.state_dict())
    out, g = _run(ours, x.to(device, dtype), dy.to(device, dtype))
    assert_matches("output", out, out64, dtype)
    for name in g64:
        assert_matches(f"grad {name}", g[name], g64[name], dtype, grad=True)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("token_norm", ["l2", "softmax", "none"])
def test_op_matches_timm_for_every_token_norm(backend, token_norm):
    """The op itself (no linears) against timm's module on the bare op (``timm_core``), on the three token
    weightings, forward and every gradient: float64 on CPU, float32 for the compiled kernels on a GPU."""
    dev = triton_device() if backend == "triton" else "cpu"
    dtype = torch.float32 if dev == "cuda" else torch.float64
    B, N, D = 2, 45, 40
    q, k = torch.randn(2, B, N, D, dtype=torch.float64).unbind(0)
    w_g, W, b = torch.randn(D, 1, dtype=torch.float64), torch.randn(D, D, dtype=torch.float64) / D, torch.randn(D, dtype=torch.float64)
    dy = torch.randn(B, N, D, dtype=torch.float64)
    assert_core_matches_timm(lambda *a: e2a(*a, token_norm=token_norm, backend=backend), (q, k, w_g, W, b), dy,
                             token_norm, dev, dtype)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("token_norm", ["l2", "softmax", "none"])
@pytest.mark.parametrize("B, N, D", [(2, 45, 40), (1, 1, 24), (3, 70, 16)])
def test_packed_op_matches_timm(backend, token_norm, B, N, D):
    """``e2a_packed`` on ``cat(q, k)`` against timm's module on the bare op: the kernels read q and k from the
    halves of one ``(B, N, 2D)`` tensor (rows 2D apart) and write both gradients into one ``dqk``."""
    dev = triton_device() if backend == "triton" else "cpu"
    dtype = torch.float32 if dev == "cuda" else torch.float64
    torch.manual_seed(B * 1000 + N + D)
    q, k = torch.randn(2, B, N, D, dtype=torch.float64).unbind(0)
    w_g, W, b = torch.randn(D, 1, dtype=torch.float64), torch.randn(D, D, dtype=torch.float64) / D, torch.randn(D, dtype=torch.float64)
    dy = torch.randn(B, N, D, dtype=torch.float64)

    def op(q, k, *rest):
        return e2a_packed(torch.cat([q, k], dim=-1), *rest, token_norm=token_norm, backend=backend)

    assert_core_matches_timm(op, (q, k, w_g, W, b), dy, token_norm, dev, dtype)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("token_norm", ["l2", "softmax", "none"])
@pytest.mark.parametrize("S, B, N, D", [(1, 2, 45, 40), (3, 2, 19, 16)], ids=["e2a", "cross3"])
def test_packed_op_adds_the_qk_bias(backend, token_norm, S, B, N, D):
    """``qk_bias``, added where the kernels load q and k, is ``e2a(q + b_q, k + b_k)``: against timm's module
    on the bare op (E2A) and against the unpacked op on the biased inputs (cross-E2A, whose own parity with
    the authors' form is tested in tests/nn), output and every gradient, the bias's included."""
    dev = triton_device() if backend == "triton" else "cpu"
    dtype = torch.float32 if dev == "cuda" else torch.float64
    torch.manual_seed(S * 100 + N)
    q, k = torch.randn(2, S, B, N, D, dtype=torch.float64).unbind(0)
    w_g, W, b = torch.randn(S, D, dtype=torch.float64), torch.randn(S, S, D, D, dtype=torch.float64) / D, torch.randn(S, S, D, dtype=torch.float64)
    c = torch.randn(S, 2 * D, dtype=torch.float64)
    dy = torch.randn(S, B, N, D, dtype=torch.float64)

    def ours(q, k, w_g, W, b, c):
        if S == 1:
            return e2a_packed(torch.cat([q[0], k[0]], -1), w_g[0], W[0, 0], b[0, 0], qk_bias=c[0], token_norm=token_norm, backend=backend)[None]
        return cross_e2a_packed(torch.cat([q, k], -1), w_g, W, b, qk_bias=c, token_norm=token_norm, backend=backend)

    def reference(q, k, w_g, W, b, c):
        qb, kb = q + c[:, None, None, :D], k + c[:, None, None, D:]
        if S == 1:
            return timm_core(qb[0], kb[0], w_g[0], W[0, 0], b[0, 0], token_norm=token_norm)[None]
        return cross_e2a(qb, kb, w_g, W, b, token_norm=token_norm, backend="torch")

    res = {}
    for name, fn, device, dt in (("ours", ours, dev, dtype), ("ref", reference, "cpu", torch.float64)):
        leaves = [t.detach().to(device, dt, copy=True).requires_grad_(True) for t in (q, k, w_g, W, b, c)]
        y = fn(*leaves)
        y.backward(dy.to(device, dt))
        res[name] = [y] + [t.grad for t in leaves]
    for label, a, r in zip(["y", "dq", "dk", "dw_g", "dW", "db", "d_qk_bias"], res["ours"], res["ref"]):
        if token_norm == "none" and label == "dw_g":
            assert a is None or not a.any(), label
            continue
        assert_matches(label, a, r, dtype, grad=label != "y")


def test_packed_op_gives_one_gradient_for_qk():
    """The Triton backward hands autograd one ``dqk`` for the packed input, equal to the unpacked op's
    ``cat(dq, dk)``; a qk whose last dim is odd is refused."""
    dev = triton_device()
    torch.manual_seed(0)
    qk = torch.randn(2, 33, 48, device=dev, requires_grad=True)
    w_g, W = torch.randn(24, device=dev), torch.randn(24, 24, device=dev)
    dy = torch.randn(2, 33, 24, device=dev)
    y = e2a_packed(qk, w_g, W, backend="triton")
    (dqk,) = torch.autograd.grad(y, qk, dy)
    q, k = qk.detach()[..., :24].clone().requires_grad_(True), qk.detach()[..., 24:].clone().requires_grad_(True)
    y_ref = e2a(q, k, w_g, W, backend="triton")
    dq, dk = torch.autograd.grad(y_ref, (q, k), dy)
    assert torch.equal(y, y_ref)
    assert torch.equal(dqk, torch.cat([dq, dk], dim=-1))
    with pytest.raises(ValueError, match=r"qk must have shape \(B, N, 2D\) .* got \(2, 33, 47\)"):
        e2a_packed(torch.randn(2, 33, 47, device=dev), w_g, W)


@pytest.mark.parametrize("S, B, N, D", [(1, 2, 45, 24), (3, 2, 19, 16)], ids=["e2a", "cross3"])
def test_fused_weight_gradient_equals_the_separate_kernel(monkeypatch, S, B, N, D):
    """At D ≤ 32 the key-gradient kernel also computes the projection's weight gradient; the separate
    ``_proj_weight_grad_kernel`` (forced with ``FUSED_WEIGHT_GRAD_MAX_BLOCK_D = 0``) gives the same numbers,
    and every other output is untouched."""
    import crocnet._triton._config as config

    dev = triton_device()
    dtype = torch.float32 if dev == "cuda" else torch.float64
    torch.manual_seed(S * 100 + D)
    q, k = torch.randn(2, S, B, N, D, device=dev, dtype=dtype).unbind(0)
    args = [q, k, torch.randn(S, D, device=dev, dtype=dtype), torch.randn(S, S, D, D, device=dev, dtype=dtype) / D,
            torch.randn(S, S, D, device=dev, dtype=dtype)]
    dy = torch.randn(S, B, N, D, device=dev, dtype=dtype)
    results = []
    for limit in (config.FUSED_WEIGHT_GRAD_MAX_BLOCK_D, 0):
        monkeypatch.setattr(config, "FUSED_WEIGHT_GRAD_MAX_BLOCK_D", limit)
        leaves = [a.detach().clone().requires_grad_(True) for a in args]
        y = cross_e2a(*leaves, backend="triton")
        y.backward(dy)
        results.append([y] + [a.grad for a in leaves])
    tol = 1e-12 if dtype == torch.float64 else 1e-5  # only the summation order of dW differs
    for name, fused, separate in zip(["y", "dq", "dk", "dw_g", "dW", "db"], *results):
        torch.testing.assert_close(fused, separate, rtol=tol, atol=tol, msg=name)


@pytest.mark.parametrize("token_norm", ["l2", "softmax"])
def test_token_weight_gradient_is_exactly_zero_for_one_token(token_norm):
    """N = 1: the token weight is ±1 (l2) or 1 (softmax) whatever w_g is, so dL/dw_g is exactly 0. The kernel
    reduces a row that fits one tile over its own tokens, as autograd does, so float32 rounding cannot
    leave noise there, even with tiny scores (1/‖a‖ large), where recombining saved statistics did."""
    dev = triton_device()
    g = torch.Generator().manual_seed(0)
    B, D = 3, 64
    q, k = torch.randn(2, B, 1, D, generator=g).unbind(0)
    w_g = torch.randn(D, 1, generator=g) * 1e-2
    W, b = torch.randn(D, D, generator=g) / D**0.5, torch.randn(D, generator=g)
    args = [t.to(dev).requires_grad_(True) for t in (q, k, w_g, W, b)]
    y = e2a(*args, token_norm=token_norm, backend="triton")
    y.backward(torch.randn(y.shape, generator=g).to(dev))
    assert torch.count_nonzero(args[2].grad) == 0, args[2].grad.abs().max()
    assert args[0].grad.abs().min() > 0  # q keeps its gradient through G and the residual

def test_functional_op_matches_timm_module_math():
    """``e2a`` on timm's projections reproduces timm's forward before ``final``."""
    ref = timm_e2a(12, 32).double()
    x = torch.randn(2, 12, 4, 6, dtype=torch.float64)
    tokens = x.flatten(2).transpose(1, 2)
    y = e2a(ref.to_query(tokens), ref.to_key(tokens), ref.w_g, ref.proj.weight, ref.proj.bias,
            scale=ref.scale_factor, backend="torch")
    expected = ref(x).flatten(2).transpose(1, 2)
    torch.testing.assert_close(ref.final(y), expected, rtol=1e-12, atol=1e-12)
    # and the naive spec is the same function
    y2 = e2a_naive(ref.to_query(tokens), ref.to_key(tokens), ref.w_g, ref.proj.weight, ref.proj.bias, ref.scale_factor)
    torch.testing.assert_close(y2, y, rtol=0, atol=0)


@pytest.mark.parametrize("path", PATHS)
def test_module_under_autocast_matches_timm(path):
    """Mixed precision as training runs it: float32 parameters under bfloat16 autocast, the Triton path (the
    packed GEMM casts to bfloat16 and ``qk_bias`` is cast with it), output and every gradient held to timm's
    module under the same autocast by the table's bfloat16 rule, against timm in float64."""
    dev = triton_device()
    torch.manual_seed(7)
    ref = timm_e2a(24, 40).double()
    x = torch.randn(2, 24, 6, 7, dtype=torch.float64)
    dy = torch.randn(2, 40, 6, 7, dtype=torch.float64)
    out64, g64 = _run(ref, x, dy)
    ours = EfficientAdditiveAttention2d(24, 40, backend="triton", **PATHS[path]).to(dev)
    ours.load_state_dict(ref.state_dict())
    low = copy.deepcopy(ref).float().to(dev)
    with torch.autocast(device_type=dev, dtype=torch.bfloat16):
        out, g = _run(ours, x.float().to(dev), dy.float().to(dev))
        base_out, base_g = _run(low, x.float().to(dev), dy.float().to(dev))
    assert out.dtype == torch.bfloat16
    assert_matches("output", out, out64, torch.bfloat16, baseline=base_out)
    for name in g64:
        assert_matches(f"grad {name}", g[name], g64[name], torch.bfloat16, grad=True, baseline=base_g[name])
