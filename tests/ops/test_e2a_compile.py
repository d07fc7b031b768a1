"""torch.compile and torch.jit.trace record the custom ops (fullgraph), and new image sizes do not recompile kernels."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from kernel_env import triton_device

from crocnet.nn import EfficientAdditiveAttention, EfficientAdditiveAttention2d


def _traced_op(D: int, dtype: torch.dtype = torch.float32) -> str:
    """The custom op a traced one-stream module records: the one that makes q and k from the tokens where
    the eager path does too (``fuses_input_linear``), else the one on the qk a linear made."""
    from crocnet._triton import e2a as kernels

    return "e2a_tokens_forward" if kernels.fuses_input_linear(1, D, dtype) else "e2a_forward"


@pytest.mark.parametrize("backend, recompute_qk", [("torch", True), ("triton", True), ("triton", False)],
                         ids=["torch", "triton", "triton-keep-qk"])
def test_compile_fullgraph_matches_eager(backend, recompute_qk):
    """Output and input gradient of the compiled module against its eager calls; with qk kept (a linear and
    the custom ops on its qk in the graph) as well as made in the kernels."""
    torch._dynamo.reset()
    dev = triton_device() if backend == "triton" else "cpu"
    m = EfficientAdditiveAttention(16, 32, backend=backend, recompute_qk=recompute_qk).to(dev)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager" if dev == "cpu" and backend == "triton" else "inductor")
    for N in (10, 23):  # a second size: dynamic shapes, still one graph
        x = torch.randn(2, N, 16, device=dev, requires_grad=True)
        y = compiled(x)
        y.sum().backward()
        g = x.grad.clone()
        x.grad = None
        ref = m(x)
        ref.sum().backward()
        torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(g, x.grad, rtol=1e-5, atol=1e-5)


def test_compiled_module_matches_eager_bit_for_bit():
    """A traced feature-map module records the op that makes q and k from the tokens, as its eager call runs
    them (recompute_qk, the default): the same kernels and the same input-linear GEMMs, so the output and
    every gradient are identical (float32 in the interpreter, bf16 on a GPU)."""
    torch._dynamo.reset()
    dev = triton_device()
    dtype = torch.float32 if dev == "cpu" else torch.bfloat16
    torch.manual_seed(0)
    m = EfficientAdditiveAttention2d(12, 16, backend="triton").to(dev, dtype)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 12, 5, 7, device=dev, dtype=dtype)
    runs = []
    for fn in (m, compiled):
        m.zero_grad(set_to_none=True)
        leaf = x.clone().requires_grad_(True)
        out = fn(leaf)
        out.backward(torch.cos(out.detach()))
        runs.append({"out": out.detach(), "dx": leaf.grad} | {n: p.grad for n, p in m.named_parameters()})
    assert runs[0].keys() == runs[1].keys() and len(runs[0]) == 11  # out, dx, 9 parameters
    for key, want in runs[0].items():
        assert want is not None and torch.equal(runs[1][key], want), key


@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no_grad"])
def test_jit_trace_records_the_custom_op(grad):
    """Eager calls launch the kernels from a plain autograd.Function, which ``torch.jit.trace`` cannot see
    into (it would record only the allocations): under tracing the op goes through the custom op, so the
    traced module holds it and computes the same on new inputs as the eager module in the same grad mode
    (without grad, the op with ``final`` folded in)."""
    dev = triton_device()
    m = EfficientAdditiveAttention(16, 16, backend="triton").to(dev)
    x, x2 = torch.randn(2, 2, 7, 16, device=dev).unbind(0)
    with torch.set_grad_enabled(grad):
        traced = torch.jit.trace(m, x, check_trace=False)
        assert f"crocnet::{_traced_op(16) if grad else 'e2a_folded'}(" in str(traced.graph)
        got, want = traced(x2), m(x2)
    assert torch.equal(got, want)


def test_compiled_inference_folds_final_as_eager():
    """Under ``torch.inference_mode`` a compiled module records the folding and ``crocnet::e2a_folded``: the
    same launches as its eager call, so the same output to the bit, for one stream and for three."""
    from torch._dynamo.testing import CompileCounterWithBackend

    from crocnet.nn import CrossEfficientAdditiveAttention

    dev = triton_device()
    torch.manual_seed(0)
    for m, inputs in ((EfficientAdditiveAttention2d(12, 16, backend="triton"), (torch.randn(2, 12, 5, 7),)),
                      (CrossEfficientAdditiveAttention(8, 16, streams=3, backend="triton"), tuple(torch.randn(3, 2, 9, 8)))):
        torch._dynamo.reset()
        m = m.to(dev)
        inputs = tuple(t.to(dev) for t in inputs)
        counter = CompileCounterWithBackend("aot_eager")
        compiled = torch.compile(m, backend=counter, fullgraph=True)
        with torch.inference_mode():
            want, got = m(*inputs), compiled(*inputs)
        targets = {str(n.target) for g in counter.graphs for n in g.graph.nodes if n.op == "call_function"}
        assert "crocnet.e2a_folded.default" in targets, targets
        for w, g in zip(want if isinstance(want, tuple) else (want,), got if isinstance(got, tuple) else (got,)):
            assert torch.equal(w, g)


def test_compile_before_any_kernel_import_in_a_fresh_process():
    """The backend choice reads Triton's interpreter switch (a C call dynamo cannot trace); a fresh process
    that compiles before anything imported the kernels must still trace one full graph on CPU."""
    code = (
        "import torch\n"
        "from crocnet.nn import EfficientAdditiveAttention\n"
        "m = EfficientAdditiveAttention(8, 16)\n"
        "y = torch.compile(m, fullgraph=True, backend='eager')(torch.randn(2, 5, 8))\n"
        "print(tuple(y.shape))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "(2, 5, 16)"


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_second_image_size_does_not_recompile_the_graph(backend):
    """With dynamic shapes one traced graph serves every token count (for "triton": the custom ops' fake
    kernels are symbolic in N, and the graph holds the op itself, not the PyTorch path)."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    dev = triton_device() if backend == "triton" else "cpu"
    counter = CompileCounterWithBackend("aot_eager")
    m = EfficientAdditiveAttention(8, 16, backend=backend).to(dev)
    compiled = torch.compile(m, backend=counter, fullgraph=True, dynamic=True)
    compiled(torch.randn(2, 12, 8, device=dev)).sum().backward()
    frames = counter.frame_count
    for N in (31, 77):
        compiled(torch.randn(2, N, 8, device=dev)).sum().backward()
    assert counter.frame_count == frames
    targets = [str(n.target) for g in counter.graphs for n in g.graph.nodes if n.op == "call_function"]
    ops = {t for t in targets if t.startswith("crocnet.")}
    assert ops == ({f"crocnet.{_traced_op(16)}.default"} if backend == "triton" else set()), targets


def test_token_count_is_not_specialised():
    """B, N and the program counts are runtime values of every kernel (``do_not_specialize``), and so are the
    tokens' strides that follow the image size (a feature map's token view: ``C·N`` a batch, N a channel)."""
    code = (
        "import crocnet._triton.e2a as k\n"
        "for name in ['_pool_partials_kernel', '_key_interaction_kernel', '_key_grad_kernel', '_query_grad_kernel', '_proj_weight_grad_kernel']:\n"
        "    fn = getattr(k, name).fn\n"
        "    print(name, sorted(p.name for p in fn.params if p.do_not_specialize))\n"
    )
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    lines = dict(line.split(" ", 1) for line in out.strip().splitlines())
    assert len(lines) == 5
    for name, params in lines.items():
        expected = "['B', 'N', 'SPLIT', 'SXB', 'SXC']" if name == "_proj_weight_grad_kernel" else "['B', 'N', 'P', 'SXB', 'SXC']"
        assert params == expected, (name, params)


def _compiled_variants(kernel) -> int:
    """Number of compiled binaries of an autotuned Triton kernel, over all devices (Triton >= 3.2 layout)."""
    return sum(len(caches[0]) for caches in kernel.fn.device_caches.values())


@pytest.mark.gpu
def test_new_image_size_does_not_recompile():
    from crocnet._triton import e2a as kernels
    from crocnet.ops import e2a

    D = 64
    w, W = torch.randn(D, device="cuda"), torch.randn(D, D, device="cuda")
    for N in (100, 333):  # 333: not a multiple of 16 either
        q = torch.randn(2, N, D, device="cuda")
        e2a(q, q, w, W, None, backend="triton")
        if N == 100:
            before = [_compiled_variants(k) for k in (kernels._pool_partials_kernel, kernels._key_interaction_kernel)]
    after = [_compiled_variants(k) for k in (kernels._pool_partials_kernel, kernels._key_interaction_kernel)]
    assert before == after and min(before) >= 1
