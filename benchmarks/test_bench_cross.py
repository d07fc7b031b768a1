"""Cross-E2A (3 streams) against the CroCNet authors' eager form, same weights."""

from __future__ import annotations

import pytest
import torch
from conftest import CUDA, DEVICE, DTYPES, dtype_for_device, run_benchmark
from e2a_reference import AuthorsCrossAttention

from crocnet.nn import CrossEfficientAdditiveAttention

SHAPES = [(8, 128, 32), (8, 64, 64), (8, 32, 128)] if CUDA else [(8, 64, 32), (8, 32, 64)]


def _modules(D, dtype):
    torch.manual_seed(0)
    authors = AuthorsCrossAttention(D, D, final_bug=False)
    ours = CrossEfficientAdditiveAttention(D, D, streams=3)
    ours.load_crocnet_state_dict(authors.state_dict())
    return {"crocnet": ours.to(DEVICE, dtype), "authors": authors.to(DEVICE, dtype)}


@pytest.fixture(scope="module")
def cross_parity() -> bool:
    dtype = dtype_for_device()
    mods = _modules(32, dtype)
    xs = [torch.randn(2, 50, 32, device=DEVICE, dtype=dtype) for _ in range(3)]
    a, b = mods["crocnet"](*xs), mods["authors"](*xs)
    tol = 3e-2 if CUDA else 1e-5
    return all(((x - y).abs().max() / y.abs().max()).item() < tol for x, y in zip(a, b))


@pytest.mark.parametrize("mode", ["forward_backward", "inference"])
@pytest.mark.parametrize("B, side, D", SHAPES, ids=lambda v: str(v))
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("impl", ["crocnet", "authors"])
def test_cross(benchmark, cross_parity, impl, dtype_name, B, side, D, mode):
    if not cross_parity:
        pytest.skip("parity failed: cross-E2A not benchmarked")
    dtype = DTYPES[dtype_name]
    m = _modules(D, dtype)[impl]
    xs = [torch.randn(B, side * side, D, device=DEVICE, dtype=dtype, requires_grad=mode == "forward_backward") for _ in range(3)]
    dys = [torch.randn_like(x) for x in xs]

    def forward():
        return m(*xs)

    def fn():
        if mode == "inference":
            with torch.inference_mode():
                return m(*xs)
        outs = m(*xs)
        torch.autograd.backward(outs, dys)
        return outs

    benchmark.group = f"cross3 B{B} {side}x{side}x{D} {dtype_name} {mode}"
    extra = {"impl": impl, "mode": mode, "dtype": dtype_name, "B": B, "tokens": side * side, "D": D, "streams": 3,
             "device": DEVICE}
    run_benchmark(benchmark, fn, extra=extra, memory_fn=forward if mode == "forward_backward" else None)
