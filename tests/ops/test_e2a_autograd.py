"""float64 gradcheck of both backends, torch.library opcheck of the custom ops, determinism, autocast."""

from __future__ import annotations

import importlib

import pytest
import torch
from e2a_reference import assert_matches, timm_core
from kernel_env import interpreting, triton_device

import crocnet._triton._config as kconfig
from crocnet.ops import cross_e2a, cross_e2a_packed, e2a, e2a_packed

ops_e2a = importlib.import_module("crocnet.ops.e2a")  # the module, not the function it exports

needs_fp64_kernels = pytest.mark.skipif(
    not interpreting(), reason="float64 kernels run in the interpreter only (GPU kernels take fp16/bf16/fp32)"
)


def _inputs(S, B, N, D, dtype=torch.float64, device="cpu", bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(2, S, B, N, D, generator=g, dtype=dtype).unbind(0)
    w_g = torch.randn(S, D, generator=g, dtype=dtype)
    W = torch.randn(S, S, D, D, generator=g, dtype=dtype) / D**0.5
    b = torch.randn(S, S, D, generator=g, dtype=dtype) if bias else None
    return [None if t is None else t.to(device).requires_grad_(True) for t in (q, k, w_g, W, b)]


@needs_fp64_kernels
@pytest.mark.parametrize("token_norm", ["l2", "softmax", "none"])
@pytest.mark.parametrize("S, B, N, D", [(1, 2, 5, 16), (3, 1, 19, 8)], ids=["e2a", "cross3"])
def test_gradcheck_triton(S, B, N, D, token_norm):
    args = _inputs(S, B, N, D)
    fn = lambda *a: cross_e2a(*a, token_norm=token_norm, backend="triton")  # noqa: E731
    assert torch.autograd.gradcheck(fn, args, fast_mode=True)


@needs_fp64_kernels
def test_gradcheck_triton_full_jacobian_small():
    """Full (not fast-mode) Jacobians at the smallest size, without bias, through e2a's (B, N, D) form."""
    q, k, w_g, W, _ = _inputs(1, 1, 3, 8, bias=False)
    fn = lambda q, k, w, W: e2a(q, k, w, W, None, backend="triton")  # noqa: E731
    assert torch.autograd.gradcheck(fn, [q[0], k[0], w_g[0], W[0, 0]])


@pytest.mark.parametrize("token_norm", ["l2", "softmax"])
def test_gradcheck_torch_backend(token_norm):
    args = _inputs(2, 2, 7, 8)
    fn = lambda *a: cross_e2a(*a, token_norm=token_norm, backend="torch")  # noqa: E731
    assert torch.autograd.gradcheck(fn, args)


@needs_fp64_kernels
@pytest.mark.parametrize("op", ["forward", "backward"])
def test_opcheck_custom_ops(op):
    """torch.library.opcheck: schema, fake (meta) kernel, autograd registration, AOT dispatch."""
    q, k, w_g, W, b = (t.detach() for t in _inputs(2, 2, 9, 16))
    if op == "forward":
        torch.library.opcheck(ops_e2a._e2a_forward, (q, k, w_g, W, b, None, 0.25, "l2", 1e-12))
        torch.library.opcheck(ops_e2a._e2a_forward, (q, k, w_g, W, None, None, 0.25, "softmax", 1e-12))
    else:
        y, G, stats, nk = ops_e2a._e2a_forward(q, k, w_g, W, b, None, 0.25, "l2", 1e-12)
        dy = torch.randn_like(y)
        torch.library.opcheck(ops_e2a._e2a_backward, (dy, q, k, w_g, W, None, G, stats, nk, 0.25, "l2", 1e-12),
                              test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))


@needs_fp64_kernels
@pytest.mark.parametrize("S", [1, 3])
@pytest.mark.parametrize("op", ["forward", "backward"])
def test_opcheck_custom_ops_packed(op, S):
    """The same custom ops with q and k packed in one ``(S, B, N, 2D)`` tensor, ``k = None``, and their bias."""
    q, k, w_g, W, b = (t.detach() for t in _inputs(S, 2, 9, 16))
    qk, qkb = torch.cat([q, k], dim=-1), torch.randn(S, 32, dtype=q.dtype)
    if op == "forward":
        torch.library.opcheck(ops_e2a._e2a_forward, (qk, None, w_g, W, b, qkb, 0.25, "l2", 1e-12))
    else:
        y, G, stats, nk = ops_e2a._e2a_forward(qk, None, w_g, W, b, qkb, 0.25, "l2", 1e-12)
        torch.library.opcheck(ops_e2a._e2a_backward, (torch.randn_like(y), qk, None, w_g, W, qkb, G, stats, nk, 0.25, "l2", 1e-12),
                              test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))


def _token_inputs(B=2, N=9, C=12, D=16, bias=True, seed=0):
    """The tokens op's inputs in float64: tokens ``(B, N, C)`` as the 2D modules' token view of a map, then
    ``w_qk (2D, C)``, ``qk_bias (2D,)``, ``w_g (D,)``, ``proj_weight (D, D)``, ``proj_bias (D,)``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, N, generator=g, dtype=torch.float64).transpose(1, 2)
    w_qk = torch.randn(2 * D, C, generator=g, dtype=torch.float64) / C**0.5
    qkb = torch.randn(2 * D, generator=g, dtype=torch.float64) if bias else None
    w_g = torch.randn(D, generator=g, dtype=torch.float64)
    W = torch.randn(D, D, generator=g, dtype=torch.float64) / D**0.5
    b = torch.randn(D, generator=g, dtype=torch.float64) if bias else None
    return x, w_qk, qkb, w_g, W, b


@needs_fp64_kernels
@pytest.mark.parametrize("op", ["forward", "backward", "folded"])
def test_opcheck_tokens_custom_ops(op):
    """torch.library.opcheck of the ops that make q and k from the tokens (what a traced one-stream module
    records where the eager path does the same), and of the inference op with ``final`` folded in (one
    stream from the tokens, three from a GEMM's qk)."""
    x, w_qk, qkb, w_g, W, b = _token_inputs()
    if op == "folded":
        w_f = torch.randn(16, 16, dtype=torch.float64)
        torch.library.opcheck(ops_e2a._e2a_folded, ([x], w_qk[None], qkb[None], w_g[None], W[None, None], b[None],
                                                    w_f[None], 0.25, "l2", 1e-12),
                              test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))
        xs = [x + s for s in range(3)]
        torch.library.opcheck(ops_e2a._e2a_folded, (xs, w_qk.expand(3, -1, -1).contiguous(), None, w_g.expand(3, -1),
                                                    W.expand(3, 3, -1, -1).contiguous(), None,
                                                    w_f.expand(3, -1, -1).contiguous(), 0.25, "softmax", 1e-12),
                              test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))
    elif op == "forward":
        torch.library.opcheck(ops_e2a._e2a_tokens_forward, (x, w_qk, qkb, w_g, W, b, 0.25, "l2", 1e-12))
        torch.library.opcheck(ops_e2a._e2a_tokens_forward, (x, w_qk, None, w_g, W, None, 0.25, "softmax", 1e-12))
    else:
        y, G, stats, nk = ops_e2a._e2a_tokens_forward(x, w_qk, qkb, w_g, W, b, 0.25, "l2", 1e-12)
        torch.library.opcheck(ops_e2a._e2a_tokens_backward,
                              (torch.randn_like(y), x, w_qk, qkb, w_g, W, G, stats, nk, 0.25, "l2", 1e-12),
                              test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))


@needs_fp64_kernels
@pytest.mark.parametrize("token_norm", ["l2", "softmax", "none"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_gradcheck_tokens_custom_op(token_norm, bias):
    """float64 gradcheck of the tokens op's registered autograd: the tokens (a feature map's token view) and
    every parameter, the input linear's included."""
    x, w_qk, qkb, w_g, W, b = (None if t is None else t.detach().requires_grad_(True)
                               for t in _token_inputs(B=2, N=7, C=6, D=8, bias=bias))
    fn = lambda x, w_qk, w_g, W, *biases: ops_e2a._e2a_tokens_forward(  # noqa: E731
        x, w_qk, biases[0] if bias else None, w_g, W, biases[1] if bias else None, 0.3, token_norm, 1e-12)[0]
    assert torch.autograd.gradcheck(fn, [x, w_qk, w_g, W] + ([qkb, b] if bias else []), fast_mode=True)


@needs_fp64_kernels
@pytest.mark.parametrize("route", ["e2a", "cross3_packed", "forward_op", "tokens_op"])
def test_gradgradcheck_triton(route):
    """Second derivatives (``create_graph=True``: gradient penalties, MAML, Hessian-vector products) through
    each autograd entry of the Triton path, float64 gradgradcheck: the eager Function for one stream and for
    three packed streams with their qk bias, and the two custom ops traced calls record. The kernels'
    gradients carry no graph, so these backwards take the PyTorch spec's under ``create_graph``."""
    if route == "tokens_op":
        x, w_qk, qkb, w_g, W, b = (t.detach().requires_grad_(True) for t in _token_inputs(B=2, N=5, C=6, D=8))
        fn = lambda *a: ops_e2a._e2a_tokens_forward(*a, 0.3, "l2", 1e-12)[0]  # noqa: E731
        args = [x, w_qk, qkb, w_g, W, b]
    elif route == "e2a":
        q, k, w_g, W, b = _inputs(1, 2, 5, 8)
        fn = lambda q, k, w_g, W, b: e2a(q, k, w_g, W, b, token_norm="softmax", backend="triton")  # noqa: E731
        args = [q[0], k[0], w_g[0], W[0, 0], b[0, 0]]
    elif route == "cross3_packed":
        q, k, w_g, W, b = (t.detach() for t in _inputs(3, 1, 4, 8))
        qkb = torch.randn(3, 16, dtype=torch.float64)
        fn = lambda qk, qkb, w_g, W, b: cross_e2a_packed(qk, w_g, W, b, qk_bias=qkb, backend="triton")  # noqa: E731
        args = [t.requires_grad_(True) for t in (torch.cat([q, k], dim=-1), qkb, w_g, W, b)]
    else:
        args = _inputs(2, 1, 4, 8)
        fn = lambda *a: ops_e2a._e2a_forward(*a[:5], None, 0.3, "l2", 1e-12)[0]  # noqa: E731
    assert torch.autograd.gradgradcheck(fn, args, fast_mode=True)


@pytest.mark.parametrize("packed", [False, True], ids=["q_k", "packed"])
@pytest.mark.parametrize("S", [1, 3])
def test_eager_calls_match_the_custom_ops_bit_for_bit(S, packed):
    """Eager calls run the kernels through a plain ``autograd.Function`` (one stream's tensors as they are)
    and ``torch.compile`` traces the custom ops: the same kernels, so outputs and every gradient must be
    identical, not merely close (float32 where the kernels run: the interpreter, or a GPU)."""
    device = triton_device()
    q, k, w_g, W, b = (t.detach().float().to(device) for t in _inputs(S, 2, 21, 12, seed=3))
    qk = torch.cat([q, k], dim=-1)
    qkb = torch.randn(S, 24, generator=torch.Generator().manual_seed(4)).to(device) if packed else None

    def leaves():
        tensors = [qk] if packed else [q, k]
        return [t.clone().requires_grad_(True) for t in tensors + [w_g, W, b] + ([qkb] if packed else [])]

    dy = torch.randn(S, 2, 21, 12, generator=torch.Generator().manual_seed(5)).to(device)
    runs = []
    for path in ("custom_op", "eager"):
        args = leaves()
        x, rest = (args[0], args[1:]) if packed else (args[:2], args[2:])
        q_in, k_in = (x, None) if packed else x
        w_in, W_in, b_in = rest[:3]
        qkb_in = rest[3] if packed else None
        if path == "custom_op":
            y = ops_e2a._e2a_forward(q_in, k_in, w_in, W_in, b_in, qkb_in, 0.3, "l2", 1e-12)[0]
        elif S == 1:  # the public single-stream ops hand their (B, N, D) tensors to the Function unstacked
            op = e2a_packed if packed else e2a
            first = (q_in[0],) if packed else (q_in[0], k_in[0])
            y = op(*first, w_in[0], W_in[0, 0], b_in[0, 0], scale=0.3, backend="triton",
                   **({"qk_bias": qkb_in[0]} if packed else {}))[None]
        else:
            op = cross_e2a_packed if packed else cross_e2a
            first = (q_in,) if packed else (q_in, k_in)
            y = op(*first, w_in, W_in, b_in, scale=0.3, backend="triton", **({"qk_bias": qkb_in} if packed else {}))
        y.backward(dy)
        runs.append([y.detach()] + [t.grad for t in args])
    names = ["y"] + (["d qk"] if packed else ["d q", "d k"]) + ["d w_g", "d proj_weight", "d proj_bias"]
    names += ["d qk_bias"] if packed else []
    assert len(names) == len(runs[0])
    for name, want, got in zip(names, *runs):
        assert got is not None and torch.equal(want, got), name


@needs_fp64_kernels
def test_gradcheck_triton_packed():
    """float64 gradcheck through ``e2a_packed``: one gradient for the packed qk."""
    q, k, w_g, W, b = _inputs(1, 2, 11, 8)
    qk = torch.cat([q[0], k[0]], dim=-1).detach().requires_grad_(True)
    fn = lambda qk, w, W, b: e2a_packed(qk, w, W, b, backend="triton")  # noqa: E731
    assert torch.autograd.gradcheck(fn, [qk, w_g[0], W[0, 0], b[0, 0]], fast_mode=True)


def test_two_runs_are_bit_identical():
    """No atomics: the per-program partials are reduced in a fixed order. The interpreter runs programs one
    after another, so there the two runs cannot differ; the source check is what holds on CPU."""
    import inspect

    import crocnet._triton.e2a as kernels

    assert "tl.atomic" not in inspect.getsource(kernels)
    dev = triton_device()
    args = _inputs(3, 2, 70, 24, dtype=torch.float32, device=dev)
    dy = torch.randn(3, 2, 70, 24, device=dev)
    runs = []
    for _ in range(2):
        for a in args:
            a.grad = None
        y = cross_e2a(*args, backend="triton")
        y.backward(dy)
        runs.append([y.detach().clone()] + [a.grad.clone() for a in args])
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_programs_without_tokens(monkeypatch):
    """More programs per row than token tiles (as on a GPU with large BLOCK_N): empty programs contribute 0."""
    args = _inputs(2, 2, 33, 16, dtype=torch.float64 if interpreting() else torch.float32, device=triton_device())
    dy = torch.randn_like(args[0])
    results = {}
    for label, patch in (("many", True), ("default", False)):
        if patch:
            monkeypatch.setattr(kconfig, "programs_per_row", lambda tokens, rows, device: 7)
        else:
            monkeypatch.undo()
        for token_norm in ("l2", "softmax"):
            for a in args:
                a.grad = None
            y = cross_e2a(*args, token_norm=token_norm, backend="triton")
            y.backward(dy)
            results[label, token_norm] = [y.detach()] + [a.grad for a in args]
    tol = dict(rtol=1e-12, atol=1e-12) if interpreting() else dict(rtol=1e-5, atol=1e-5)
    for token_norm in ("l2", "softmax"):
        for a, b in zip(results["many", token_norm], results["default", token_norm]):
            torch.testing.assert_close(a, b, **tol)


def test_autocast_runs_kernels_in_the_autocast_dtype():
    dev = triton_device()
    q, k, w_g, W, b = (t.detach().float() for t in _inputs(1, 2, 20, 16, device=dev))
    args = (q[0], k[0], w_g[0], W[0, 0], b[0, 0])
    with torch.autocast(device_type=dev, dtype=torch.bfloat16):
        y = e2a(*args, backend="triton")
        base = timm_core(*args)  # timm's module under the same autocast: the table's bfloat16 bar
    assert y.dtype == torch.bfloat16
    assert_matches("y", y, timm_core(*(t.double() for t in args)), torch.bfloat16, baseline=base)


def test_default_scale_is_inverse_sqrt_width():
    """scale defaults to D ** -0.5 (timm's token_dim ** -0.5 when num_heads = 1). The l2 token norm divides
    the scale out, so the check uses softmax, where another scale changes the output."""
    q, k, w_g, W, b = (t.detach()[0] for t in _inputs(1, 1, 6, 16))
    y1 = e2a(q, k, w_g, W[0], b[0], token_norm="softmax", backend="torch")
    assert torch.equal(y1, e2a(q, k, w_g, W[0], b[0], scale=0.25, token_norm="softmax", backend="torch"))
    for other in (0.125, 0.5, 1.0):
        assert (y1 - e2a(q, k, w_g, W[0], b[0], scale=other, token_norm="softmax", backend="torch")).abs().max() > 1e-3
