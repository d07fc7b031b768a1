"""The compiled kernels at the sizes a UNet sees (CUDA only; skipped with the reason elsewhere).

Reference: timm's module in float64 on the same GPU; tolerances from ``tests/e2a_reference.py``.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch
from e2a_reference import (AuthorsCrossAttention, assert_core_matches_timm, assert_matches, authors_to_ours_names, e2a_at_offset,
                           grads, timm_e2a)

from crocnet.nn import CrossEfficientAdditiveAttention, EfficientAdditiveAttention2d

pytestmark = pytest.mark.gpu

UNET_SHAPES = [(8, 128, 32), (8, 64, 64), (8, 32, 128), (8, 16, 256), (8, 8, 512), (2, 7, 220), (3, 33, 48)]


def _run(module, x, dy):
    x = x.detach().clone().requires_grad_(True)
    out = module(x)
    out.backward(dy)
    return out.detach(), grads(module, [x])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("B, side, D", UNET_SHAPES, ids=lambda v: str(v))
def test_unet_sizes_match_timm(B, side, D, dtype):
    torch.manual_seed(0)
    ref = timm_e2a(D, D).cuda().double()
    x = torch.randn(B, D, side, side, device="cuda", dtype=torch.float64)
    dy = torch.randn(B, D, side, side, device="cuda", dtype=torch.float64)
    out64, g64 = _run(ref, x, dy)
    ours = EfficientAdditiveAttention2d(D, D, backend="triton").cuda().to(dtype)
    ours.load_state_dict(ref.state_dict())
    out, g = _run(ours, x.to(dtype), dy.to(dtype))
    base_out, base_g = None, {}
    if dtype != torch.float32:
        base_out, base_g = _run(copy.deepcopy(ref).to(dtype), x.to(dtype), dy.to(dtype))
    assert_matches("output", out, out64, dtype, baseline=base_out)
    for name in g64:
        assert_matches(f"grad {name}", g[name], g64[name], dtype, grad=True, baseline=base_g.get(name))
    with torch.inference_mode():  # final folded into the key interaction (fold_final)
        folded = ours(x.to(dtype))
    assert_matches("output at inference", folded, out64, dtype, baseline=base_out)


@pytest.mark.parametrize("B, side, D", [(8, 64, 64), (3, 33, 48)], ids=lambda v: str(v))
def test_inductor_compiled_module_matches_timm(B, side, D):
    """``torch.compile`` (Inductor) of the module in bf16 records the ops that make q and k from the tokens
    and, at inference, the folded op: output, every gradient and the inference output against timm in
    float64, within the bf16 bound timm's own bf16 module sets."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    ref = timm_e2a(D, D).cuda().double()
    x = torch.randn(B, D, side, side, device="cuda", dtype=torch.float64)
    dy = torch.randn(B, D, side, side, device="cuda", dtype=torch.float64)
    out64, g64 = _run(ref, x, dy)
    base_out, base_g = _run(copy.deepcopy(ref).to(torch.bfloat16), x.to(torch.bfloat16), dy.to(torch.bfloat16))
    ours = EfficientAdditiveAttention2d(D, D, backend="triton").cuda().to(torch.bfloat16)
    ours.load_state_dict(ref.state_dict())
    compiled = torch.compile(ours, fullgraph=True)
    x16 = x.to(torch.bfloat16).detach().requires_grad_(True)
    out = compiled(x16)
    out.backward(dy.to(torch.bfloat16))
    g = grads(ours, [x16])
    assert_matches("compiled output", out.detach(), out64, torch.bfloat16, baseline=base_out)
    for name in g64:
        assert_matches(f"compiled grad {name}", g[name], g64[name], torch.bfloat16, grad=True, baseline=base_g.get(name))
    with torch.inference_mode():
        folded = compiled(x.to(torch.bfloat16))
    assert_matches("compiled output at inference", folded, out64, torch.bfloat16, baseline=base_out)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("D", [8, 24, 220])
def test_vector_rows_at_odd_widths_and_offsets(D, dtype):
    """Where the kernels, not Triton, decide the access width (D not a multiple of 16, inputs at storage offsets
    of 0, 1 and 4 elements, packed or not): 64² tokens against timm in float64, output and every gradient.
    A wrong alignment promise shows here as a misaligned-address error or wrong numbers."""
    torch.manual_seed(D)
    q, k = torch.randn(2, 2, 64 * 64, D, dtype=torch.float64).unbind(0)
    w_g, W, b = torch.randn(D, 1, dtype=torch.float64), torch.randn(D, D, dtype=torch.float64) / D, torch.randn(D, dtype=torch.float64)
    dy = torch.randn(2, 64 * 64, D, dtype=torch.float64)
    for packed in (False, True):
        for offset in (0, 1, 4):
            assert_core_matches_timm(e2a_at_offset(offset, packed), (q, k, w_g, W, b), dy, "l2", "cuda", dtype)


def test_int64_offsets_past_2_31_elements():
    """A (1, 2**25, 64) bf16 tensor has 2**31 elements: offsets must not overflow.

    The first and last 1000 tokens are checked against a float64 reference whose global query G is pooled
    over all N tokens in chunks (‖G‖ grows like √N, so a reference on the tail alone would differ)."""
    free, _ = torch.cuda.mem_get_info()
    if free < 40 * 2**30:
        pytest.skip(f"needs ~40 GiB free GPU memory, {free / 2**30:.0f} GiB free")
    import torch.nn.functional as F
    from crocnet.ops import e2a

    N, D = 2**25, 64
    torch.manual_seed(0)
    q = torch.randn(1, N, D, device="cuda", dtype=torch.bfloat16)
    w, W = torch.randn(D, device="cuda", dtype=torch.bfloat16), torch.eye(D, device="cuda", dtype=torch.bfloat16)
    y = e2a(q, q, w, W, None, backend="triton")
    w64, scale = w.double(), D**-0.5
    sum_a2 = torch.zeros((), dtype=torch.float64, device="cuda")
    g = torch.zeros(D, dtype=torch.float64, device="cuda")
    for chunk in q[0].split(2**20):
        qh = F.normalize(chunk.double(), dim=-1)
        a = scale * (qh @ w64)
        sum_a2 += (a * a).sum()
        g += (a[:, None] * qh).sum(0)
    G = g / sum_a2.sqrt()
    for rows in (slice(0, 1000), slice(N - 1000, N)):
        qh = F.normalize(q[0, rows].double(), dim=-1)
        ref = G * qh + qh  # W = I, k = q, no bias
        got = y[0, rows].double()
        assert torch.isfinite(got).all()
        err = (got - ref).abs().max() / ref.abs().max()
        assert err < 2e-2, f"tokens {rows}: max error {err:.3g} of the largest value (bfloat16 output: ~4e-3)"


def check_cross_against_authors(B, N, D, dtype, device):
    """Three-stream cross-E2A (Triton) against the authors' form in float64 on the same device: outputs and
    every gradient (the split reductions at large N show in the gradients first)."""
    torch.manual_seed(0)
    ref = AuthorsCrossAttention(D, D).to(device).double()
    ours = CrossEfficientAdditiveAttention(D, D, streams=3, backend="triton", authors_final_bug=True)
    ours.load_crocnet_state_dict(ref.state_dict())
    ours = ours.to(device, dtype)
    xs = [torch.randn(B, N, D, device=device, dtype=torch.float64) for _ in range(3)]
    dys = [torch.randn(B, N, D, device=device, dtype=torch.float64) for _ in range(3)]

    def run(module, dt):
        leaves = [x.to(dt, copy=True).requires_grad_(True) for x in xs]
        outs = module(*leaves)
        torch.autograd.backward(outs, [d.to(dt) for d in dys])
        return [o.detach() for o in outs], grads(module, leaves)

    out64, g64 = run(ref, torch.float64)
    out, g = run(ours, dtype)
    base_out, base_g = [None] * 3, {}
    if dtype != torch.float32:
        base_out, base_g = run(copy.deepcopy(ref).to(dtype), dtype)
    with torch.inference_mode():  # each final folded into the key interaction (fold_final)
        folded = ours(*(x.to(dtype) for x in xs))
    for s in range(3):
        assert_matches(f"stream {s}", out[s], out64[s], dtype, baseline=base_out[s])
        assert_matches(f"stream {s} at inference", folded[s], out64[s], dtype, baseline=base_out[s])
    for theirs, mine in authors_to_ours_names().items():
        if g64[theirs] is None:  # final_rv is unused under the authors' bug
            assert theirs.startswith("final_rv"), theirs
            continue
        assert_matches(f"grad {theirs}", g[mine], g64[theirs], dtype, grad=True, baseline=base_g.get(theirs))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cross_unet_sizes(dtype):
    check_cross_against_authors(8, 64 * 64, 64, dtype, "cuda")


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_kernels_launch_on_the_tensors_device_not_the_current_one():
    """A module on the second GPU while the first is current (model parallelism): the launches go to the
    tensors' device, and the result is the one on the first GPU."""
    torch.manual_seed(0)
    module = EfficientAdditiveAttention2d(32, 32, backend="triton").cuda(0)
    x, dy = torch.randn(2, 32, 16, 16, device="cuda:0"), torch.randn(2, 32, 16, 16, device="cuda:0")
    want, want_g = _run(module, x, dy)
    torch.cuda.set_device(0)
    other = copy.deepcopy(module).to("cuda:1")
    got, got_g = _run(other, x.to("cuda:1"), dy.to("cuda:1"))
    torch.cuda.synchronize(1)
    torch.testing.assert_close(got.cpu(), want.cpu(), rtol=1e-5, atol=1e-5)
    for name in want_g:
        torch.testing.assert_close(got_g[name].cpu(), want_g[name].cpu(), rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("fuse_qk", [True, False], ids=["packed", "q_k"])
def test_module_forward_backward_replays_in_a_cuda_graph(fuse_qk):
    """At UNet sizes the host's work is most of a call (benchmarks/NOTES.md, item 11); CUDA graphs remove it.
    The module's forward and backward (its linears, the kernels, the partial sums) capture in one graph, and
    replays on new inputs copied into the static ones give what eager calls give. float32: the kernels are
    the same launches, but cuBLAS may pick another algorithm for the linears under capture."""
    torch.manual_seed(0)
    module = EfficientAdditiveAttention2d(64, 64, backend="triton", fuse_qk=fuse_qk).cuda()
    x = torch.randn(8, 64, 32, 32, device="cuda", requires_grad=True)
    dy = torch.randn(8, 64, 32, 32, device="cuda")
    leaves = [x, *module.parameters()]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up (autotuning included) off the default stream, as capture requires
        for _ in range(3):
            torch.autograd.grad(module(x), leaves, dy)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = module(x)
        static_grads = torch.autograd.grad(static_out, leaves, dy)
    for seed in (1, 2):
        gen = torch.Generator(device="cuda").manual_seed(seed)
        with torch.no_grad():
            x.copy_(torch.randn(x.shape, device="cuda", generator=gen))
            dy.copy_(torch.randn(dy.shape, device="cuda", generator=gen))
        graph.replay()
        out = module(x)
        want = torch.autograd.grad(out, leaves, dy)
        torch.testing.assert_close(static_out, out, rtol=1e-5, atol=1e-5)
        for name, got, expected in zip(["x"] + [n for n, _ in module.named_parameters()], static_grads, want):
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5, msg=lambda m, name=name: f"grad {name}: {m}")


_TUNE_ONCE = """
import torch
from crocnet.ops import e2a
torch.manual_seed(0)
q, k = torch.randn(2, 8, 4096, 32, device="cuda", dtype=torch.bfloat16)
w_g, proj_weight = torch.randn(32, device="cuda", dtype=torch.bfloat16), torch.randn(32, 32, device="cuda", dtype=torch.bfloat16)
with torch.no_grad():
    e2a(q, k, w_g, proj_weight, backend="triton")
torch.cuda.synchronize()
"""


def test_autotune_results_persist_across_processes(tmp_path):
    """With the disk cache on (the default) a new process reads the tuning of an earlier one and writes
    nothing; ``CROCNET_AUTOTUNE_CACHE=0`` leaves no tuning file behind."""

    def tune(cache_dir, cache):
        env = os.environ | {"TRITON_CACHE_DIR": str(cache_dir), "CROCNET_AUTOTUNE": "1", "CROCNET_AUTOTUNE_CACHE": cache}
        subprocess.run([sys.executable, "-c", _TUNE_ONCE], env=env, check=True, timeout=300)
        return {p: p.stat().st_mtime_ns for p in cache_dir.rglob("*.autotune.json")}

    first = tune(tmp_path, "1")
    assert {p.name for p in first} == {"_pool_partials_kernel.autotune.json", "_key_interaction_kernel.autotune.json"}
    assert tune(tmp_path, "1") == first
    for path in first:  # the compiled kernels stay: the next run tunes again without compiling
        path.unlink()
    assert tune(tmp_path, "0") == {}
