"""One stream from the tokens: q and k made inside the kernels (``e2a_forward_from_tokens`` at inference,
with ``final`` folded in, and in training, with ``e2a_backward_from_tokens`` making them again in the backward).

Held to the same computation with q and k made by a GEMM and read back (``FUSED_INPUT_MAX_D = 0``) in
float64 in the interpreter, for every layout of the tokens the kernels read in place; against timm through
the modules in tests/ops/test_e2a_parity.py and tests/nn/test_e2a_modules.py (their Triton tests take this
path at D <= 128).
"""

from __future__ import annotations

import pytest
import torch
from kernel_env import triton_device

from crocnet.nn import EfficientAdditiveAttention, EfficientAdditiveAttention2d


def _kernels():
    from crocnet._triton import _config, e2a

    return e2a, _config


def _layouts(B, N, C, dtype, device):
    """Tokens ``(B, N, C)`` as the kernels may meet them: the 2D modules' token view (tokens adjacent), a
    contiguous tensor (channels adjacent), and a view with no unit stride."""
    g = torch.Generator().manual_seed(B * 1000 + N * 10 + C)
    base = torch.randn(B, C, N, generator=g, dtype=dtype).to(device)
    wide = torch.randn(B, N, 2 * C, generator=g, dtype=dtype).to(device)
    return {"token-view": base.transpose(1, 2), "contiguous": base.transpose(1, 2).contiguous(),
            "strided": wide[..., ::2]}


@pytest.mark.parametrize("token_norm", ["l2", "softmax", "none"])
@pytest.mark.parametrize("B, N, C, D", [(2, 35, 12, 24), (1, 1, 130, 16), (3, 47, 100, 48), (2, 64, 8, 128)])
def test_tokens_read_in_place_give_the_gemm_route(monkeypatch, B, N, C, D, token_norm):
    """Every layout, C over several chunks and not a multiple of 16, N not a multiple of a tile, one token,
    D up to one output tile: the module's inference output equals the route that writes qk (float64 in the
    interpreter, float32 on a GPU, where the dtype rule is the GPU tests')."""
    e2a, config = _kernels()
    device = triton_device()
    dtype = torch.float64 if device == "cpu" else torch.float32
    torch.manual_seed(B + N + C + D)
    module = EfficientAdditiveAttention(C, D, token_norm=token_norm, backend="triton").to(device, dtype)
    calls = []
    monkeypatch.setattr(e2a, "e2a_forward_from_tokens",
                        lambda *a, _real=e2a.e2a_forward_from_tokens, **kw: calls.append(a[0].stride()) or _real(*a, **kw))
    for name, x in _layouts(B, N, C, dtype, device).items():
        with torch.no_grad():
            monkeypatch.setattr(config, "FUSED_INPUT_MAX_D", 0)
            want = module(x)
            monkeypatch.setattr(config, "FUSED_INPUT_MAX_D", 128)
            calls.clear()
            got = module(x)
        if device == "cpu":  # on a GPU fp32 keeps the GEMM route (fuses_input_linear)
            assert calls == [x.stride()], name
        torch.testing.assert_close(got, want, rtol=1e-10 if dtype == torch.float64 else 1e-5, atol=1e-12, msg=name)


@pytest.mark.parametrize("B, N, C, D", [(2, 35, 12, 24), (3, 47, 100, 48), (1, 1, 20, 16), (2, 20, 70, 128)])
def test_training_from_the_tokens_gives_the_gemm_route(monkeypatch, B, N, C, D):
    """With ``recompute_qk`` (the default) the forward and the backward make q and k in the kernels (the
    key-gradient kernel k, the query-gradient kernel q and, where the weight gradient is not fused into the
    key gradient's (D > 32), its kernel k's columns of each tile): output and every gradient equal the route
    that makes qk with a GEMM and reads it back (float64 in the interpreter), for every layout of the tokens;
    so does the forward from the tokens with the backward's GEMM (``FUSED_INPUT_BACKWARD = False``)."""
    e2a, config = _kernels()
    device = triton_device()
    dtype = torch.float64 if device == "cpu" else torch.float32
    torch.manual_seed(B + N + C + D)
    module = EfficientAdditiveAttention(C, D, token_norm="softmax" if N > 40 else "l2", backend="triton").to(device, dtype)
    calls = []
    for op in ("e2a_forward_from_tokens", "e2a_backward_from_tokens"):
        monkeypatch.setattr(e2a, op, lambda *a, _real=getattr(e2a, op), _op=op: calls.append(_op) or _real(*a))
    for name, x in _layouts(B, N, C, dtype, device).items():
        runs = []
        for limit, backward in ((0, True), (128, False), (128, True)):
            monkeypatch.setattr(config, "FUSED_INPUT_MAX_D", limit)
            monkeypatch.setattr(config, "FUSED_INPUT_BACKWARD", backward)
            calls.clear()
            module.zero_grad(set_to_none=True)
            leaf = x.detach().requires_grad_(True)  # a fresh leaf with x's strides (clone would pack "strided")
            out = module(leaf)
            out.backward(torch.cos(out.detach()))
            runs.append({"out": out.detach(), "dx": leaf.grad} | {n: p.grad for n, p in module.named_parameters()})
            if device == "cpu":
                made_in_kernels = ["e2a_forward_from_tokens"] * bool(limit) + ["e2a_backward_from_tokens"] * bool(limit and backward)
                assert calls == made_in_kernels, name
        for run in runs[1:]:
            for key, want in runs[0].items():
                torch.testing.assert_close(run[key], want, rtol=1e-10 if dtype == torch.float64 else 1e-5, atol=1e-12,
                                           msg=f"{name}: {key}")


def test_feature_map_module_reads_the_map_in_place():
    """``EfficientAdditiveAttention2d`` hands the kernels the token view of its input (tokens adjacent): no
    copy of the map, and the output of the GEMM route (float64 in the interpreter)."""
    e2a, _ = _kernels()
    device = triton_device()
    dtype = torch.float64 if device == "cpu" else torch.bfloat16
    torch.manual_seed(0)
    module = EfficientAdditiveAttention2d(16, 32, backend="triton").to(device, dtype)
    x = torch.randn(2, 16, 6, 8, device=device, dtype=dtype)
    seen = []
    real = e2a.e2a_forward_from_tokens
    try:
        e2a.e2a_forward_from_tokens = lambda *a, **kw: seen.append(a[0]) or real(*a, **kw)
        with torch.no_grad():
            module(x)
    finally:
        e2a.e2a_forward_from_tokens = real
    assert len(seen) == 1 and seen[0].data_ptr() == x.data_ptr() and seen[0].stride() == (16 * 48, 1, 48)


@pytest.mark.parametrize("streams, D, dtype, interpreting, expected", [
    (1, 128, torch.bfloat16, False, True), (1, 64, torch.float16, False, True),
    (1, 256, torch.bfloat16, False, False),  # two output tiles would each make q and k
    (3, 64, torch.bfloat16, False, False),  # cross-E2A reads every stream's keys: the GEMM route
    (1, 64, torch.float32, False, False),  # FMA projections: about as long as the bytes they save
    (1, 64, torch.float64, True, True),  # the interpreter takes every dtype, for the tests
])
def test_which_cases_make_q_and_k_in_the_kernels(monkeypatch, streams, D, dtype, interpreting, expected):
    e2a, config = _kernels()
    monkeypatch.setattr(config, "INTERPRETING", interpreting)
    assert e2a.fuses_input_linear(streams, D, dtype) is expected


@pytest.mark.parametrize("make, expected", [
    (lambda: torch.zeros(2, 24, 64, dtype=torch.bfloat16).transpose(1, 2), 8),  # token view, N = 64: 16 bytes
    (lambda: torch.zeros(2, 24, 49, dtype=torch.bfloat16).transpose(1, 2), 1),  # N = 49 (7 x 7): no promise
    (lambda: torch.zeros(2, 24, 36, dtype=torch.bfloat16).transpose(1, 2), 4),  # N = 36: 8 bytes
    (lambda: torch.zeros(2, 64, 24, dtype=torch.float32), 4),  # contiguous, C = 24 fp32: 16 bytes
    (lambda: torch.zeros(2, 64, 32, dtype=torch.bfloat16)[..., 8:], 8),  # a slice starting 16 bytes in
    (lambda: torch.zeros(2, 64, 32, dtype=torch.bfloat16)[..., 2:26], 2),  # ... and 4 bytes in
    (lambda: torch.zeros(2, 64, 48, dtype=torch.bfloat16)[..., ::2], 1),  # no unit stride
])
def test_token_alignment_promised_only_where_it_holds(make, expected):
    """XVEC (the alignment promised for x's unit-stride runs) divides the other strides, the run's length
    and the address: a false promise would be a misaligned vector access on the GPU."""
    e2a, _ = _kernels()
    x = make()
    got = e2a._token_vector_width(x, *x.stride())
    assert got == expected
