"""Op level: our E2A against timm's eager module, torch.compile of it, and multi-head self-attention.

Every case records ``tokens``, ``D``, ``B``, ``impl``, ``mode``, memory (see conftest) and, for the fused
core on CUDA, achieved GB/s against the measured copy rate (bytes as in DESIGN.md: core forward 3 BND,
core backward 5 BND).
"""

from __future__ import annotations

import pytest
import torch
from _impls import attention_module, e2a_module, quadratic, rel_err
from conftest import CUDA, DEVICE, DTYPES, MHSA_CPU_MAX_TOKENS, SWEEP, UNET_SHAPES, dtype_for_device, run_benchmark

from crocnet._triton import _config
from crocnet.ops import e2a, e2a_naive

E2A_IMPLS = ["crocnet", "timm", "timm_compile"]
MHSA_IMPLS = ["sdpa", "nn_mha"]
MODES = ["forward", "forward_backward", "inference"]
ODD_WIDTHS = [(8, 128, 8), (8, 64, 24), (8, 32, 220)]


class _Parity(dict):
    """The correctness gate: each implementation against its reference at a small shape, same weights,
    checked when a benchmark first asks for it (``get``), so a step that times a few implementations does
    not first build, and compile, all of them."""

    def get(self, impl: str, default=False) -> bool:
        if impl not in self:
            try:
                self[impl] = _parity(impl)
            except Exception:  # noqa: BLE001 - a failing implementation is gated out, not fatal
                self[impl] = False
        return dict.get(self, impl, default)


def _parity(impl: str) -> bool:
    torch.manual_seed(0)
    dtype = dtype_for_device()
    tol = 3e-2 if CUDA else 1e-5
    if impl == "core":
        q, k = torch.randn(2, 2, 64, 32, device=DEVICE, dtype=dtype).unbind(0)
        w, W, b = torch.randn(32, device=DEVICE, dtype=dtype), torch.randn(32, 32, device=DEVICE, dtype=dtype) / 6, torch.randn(32, device=DEVICE, dtype=dtype)
        return rel_err(e2a(q, k, w, W, b), e2a_naive(q, k, w, W, b, 32**-0.5)) < tol
    x = torch.randn(2, 32, 8, 8, device=DEVICE, dtype=dtype)
    if impl in MHSA_IMPLS:
        sdpa = attention_module("sdpa", 32).to(DEVICE, dtype)
        mha = attention_module("nn_mha", 32).to(DEVICE, dtype)
        mha.load_from_sdpa(sdpa)
        return rel_err(sdpa(x), mha(x)) < tol
    if impl == "crocnet_compile" and not CUDA:
        return False
    ref = e2a_module("timm", 32).to(DEVICE, dtype)
    want = ref(x)
    m = e2a_module(impl, 32, ref).to(DEVICE, dtype)
    with torch.inference_mode():  # inference folds the output linear (fold_final): gated too
        inference = m(x).clone()
    return max(rel_err(m(x), want), rel_err(inference, want)) < tol


@pytest.fixture(scope="session")
def parity() -> dict[str, bool]:
    """The correctness gate (:class:`_Parity`), one per session."""
    return _Parity()


def _case(benchmark, parity, impl, B, side, D, mode, dtype_name=None):
    if not parity.get(impl, False):
        pytest.skip(f"parity failed for {impl}: not benchmarked")
    tokens = side * side
    dtype_name = dtype_name or ("bf16" if CUDA else "fp32")  # dtype_for_device()'s
    dtype = DTYPES[dtype_name]
    extra = {"impl": impl, "mode": mode, "dtype": dtype_name, "B": B, "tokens": tokens, "D": D, "device": DEVICE}
    if quadratic(impl) and not CUDA and tokens > MHSA_CPU_MAX_TOKENS:
        benchmark.extra_info.update(extra, status=f"skipped: quadratic attention above {MHSA_CPU_MAX_TOKENS} tokens on CPU")
        pytest.skip(f"{impl} at {tokens} tokens: quadratic, above the CPU cap of {MHSA_CPU_MAX_TOKENS}")
    torch.manual_seed(0)
    try:
        m = (attention_module(impl, D) if quadratic(impl) else e2a_module(impl, D)).to(DEVICE, dtype)
        x = torch.randn(B, D, side, side, device=DEVICE, dtype=dtype, requires_grad=mode == "forward_backward")
        dy = torch.randn_like(x)
    except torch.cuda.OutOfMemoryError:
        benchmark.extra_info.update(extra, status="out of memory")
        pytest.skip("out of memory")

    def forward():
        return m(x)

    def forward_backward():
        y = m(x)
        y.backward(dy)
        return y

    def inference():
        with torch.inference_mode():
            return m(x)

    fn = {"forward": forward, "forward_backward": forward_backward, "inference": inference}[mode]
    try:
        run_benchmark(benchmark, fn, extra=extra, memory_fn=forward if mode == "forward_backward" else None)
    except torch.cuda.OutOfMemoryError:
        benchmark.extra_info.update(status="out of memory")
        pytest.skip("out of memory")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("B, side, D", UNET_SHAPES, ids=lambda v: str(v))
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("impl", E2A_IMPLS + MHSA_IMPLS)
def test_unet_shapes(benchmark, parity, impl, dtype_name, B, side, D, mode):
    if impl == "timm_compile" and not CUDA and (side, D) != (64, 64):
        pytest.skip("torch.compile on CPU only at 64²×64 (each shape compiles for ~20 s)")
    benchmark.group = f"unet B{B} {side}x{side}x{D} {dtype_name} {mode}"
    _case(benchmark, parity, impl, B, side, D, mode, dtype_name)


def _module_ab(benchmark, parity, impl, B, side, D, option, group, mode):
    """One side of an A/B benchmark of a module option (``option``) that changes the Triton path only."""
    if not CUDA:
        pytest.skip(f"{option} changes the Triton path only; on CPU both run the same PyTorch code")
    benchmark.group = f"{group} B{B} {side}x{side}x{D} {mode}"
    _case(benchmark, parity, impl, B, side, D, mode)


@pytest.mark.parametrize("B, side, D", UNET_SHAPES[:3], ids=lambda v: str(v))
@pytest.mark.parametrize("impl", ["crocnet_keep_qk", "crocnet_two_linears"])
def test_packed_qk(benchmark, parity, impl, B, side, D):
    """The q/k fusion of benchmarks/NOTES.md (prediction 5): one GEMM into a packed qk (kept for the backward,
    as item 5 counted it) against two linears."""
    _module_ab(benchmark, parity, impl, B, side, D, "fuse_qk", "packed-qk", "forward_backward")


@pytest.mark.parametrize("B, side, D", UNET_SHAPES[:3], ids=lambda v: str(v))
@pytest.mark.parametrize("impl", ["crocnet", "crocnet_keep_qk"])
def test_recompute_qk(benchmark, parity, impl, B, side, D):
    """qk made again in the backward (``recompute_qk``, the default; benchmarks/NOTES.md, item 12) against
    kept for it: time and peak memory."""
    _module_ab(benchmark, parity, impl, B, side, D, "recompute_qk", "recompute-qk", "forward_backward")


@pytest.mark.parametrize("B, side, D", UNET_SHAPES[:3], ids=lambda v: str(v))
@pytest.mark.parametrize("impl", ["crocnet", "crocnet_unfolded"])
def test_fold_final(benchmark, parity, impl, B, side, D):
    """Inference with the output linear folded into the key interaction (``fold_final``, the default;
    benchmarks/NOTES.md, item 17) against the linear run apart."""
    _module_ab(benchmark, parity, impl, B, side, D, "fold_final", "fold-final", "inference")


@pytest.mark.parametrize("B, side, D", UNET_SHAPES[:3], ids=lambda v: str(v))
@pytest.mark.parametrize("mode, route", [
    ("inference", "from_tokens"), ("inference", "qk_gemm"),
    ("forward_backward", "from_tokens"), ("forward_backward", "backward_gemm"), ("forward_backward", "qk_gemm"),
])
def test_fused_input(benchmark, parity, monkeypatch, mode, route, B, side, D):
    """q and k made from the tokens inside the kernels (benchmarks/NOTES.md, items 18 and 19) against qk made
    with a GEMM and read back (``FUSED_INPUT_MAX_D = 0``): at inference (folded), and in training, where
    ``backward_gemm`` makes them in the forward's kernels only (``FUSED_INPUT_BACKWARD = False``, item 18)."""
    if not CUDA:
        pytest.skip("the change alters the compiled GPU path only; on CPU the PyTorch path runs")
    switch = {"qk_gemm": ("FUSED_INPUT_MAX_D", 0), "backward_gemm": ("FUSED_INPUT_BACKWARD", False)}.get(route)
    if switch is not None:
        monkeypatch.setattr(_config, *switch)
    benchmark.group = f"fused-input B{B} {side}x{side}x{D} {mode}"
    _case(benchmark, parity, "crocnet", B, side, D, mode)
    benchmark.extra_info["impl"] = f"crocnet_{route}"


@pytest.mark.parametrize("B, side, D", UNET_SHAPES[:3], ids=lambda v: str(v))
@pytest.mark.parametrize("mode", ["forward_backward", "inference"])
@pytest.mark.parametrize("impl", ["crocnet", "crocnet_compile"])
def test_compiled_module(benchmark, parity, impl, mode, B, side, D):
    """The module under ``torch.compile`` (Inductor around the custom ops; one stream at D <= 128 in bf16
    records the ops that make q and k from the tokens, benchmarks/NOTES.md item 20) against its eager calls:
    what a user who compiles a whole model gets."""
    if not CUDA:
        pytest.skip("compiled, the Triton path runs on a GPU only (on CPU each shape compiles the PyTorch path)")
    benchmark.group = f"compiled-module B{B} {side}x{side}x{D} {mode}"
    _case(benchmark, parity, impl, B, side, D, mode)


def _switched_case(benchmark, parity, monkeypatch, group, label, switch_off, B, side, D):
    """One side of an A/B benchmark of a change built into the kernels: ``switch_off`` is the ``_config``
    (name, value) that turns it off, or None for the change itself."""
    if not CUDA:
        pytest.skip("the change alters the compiled GPU path only; on CPU the PyTorch path runs")
    if switch_off is not None:
        monkeypatch.setattr(_config, *switch_off)
    benchmark.group = f"{group} B{B} {side}x{side}x{D} forward_backward"
    _case(benchmark, parity, "crocnet", B, side, D, "forward_backward")
    benchmark.extra_info["impl"] = f"crocnet_{label}"


@pytest.mark.parametrize("B, side, D", ODD_WIDTHS, ids=lambda v: str(v))
@pytest.mark.parametrize("rows", ["vector_rows", "scalar_rows"])
def test_row_alignment(benchmark, parity, monkeypatch, rows, B, side, D):
    """Widths that are not multiples of 16 (benchmarks/NOTES.md, item 8): rows accessed as wide as their
    alignment allows (the kernels' VEC promise) against one element at a time, all that Triton's own
    specialisation gives there. 8 is E-2AUNet's level 0 at width 8, 220 SwiftFormer-XS's attention width."""
    switch_off = ("MAX_VECTOR_BYTES", 1) if rows == "scalar_rows" else None
    _switched_case(benchmark, parity, monkeypatch, "row-alignment", rows, switch_off, B, side, D)


@pytest.mark.parametrize("B, side, D", [(8, 128, 32), (8, 128, 16)], ids=lambda v: str(v))
@pytest.mark.parametrize("weight_grad", ["fused_dw", "separate_dw"])
def test_fused_weight_grad(benchmark, parity, monkeypatch, weight_grad, B, side, D):
    """The projection's weight gradient inside the key-gradient kernel (benchmarks/NOTES.md, item 10) against
    ``_proj_weight_grad_kernel`` reading dy and k once more, at the narrow widths where it is used."""
    switch_off = ("FUSED_WEIGHT_GRAD_MAX_BLOCK_D", 0) if weight_grad == "separate_dw" else None
    _switched_case(benchmark, parity, monkeypatch, "fused-dw", weight_grad, switch_off, B, side, D)


@pytest.mark.parametrize("B, side, D", SWEEP, ids=lambda v: str(v))
@pytest.mark.parametrize("impl", ["crocnet", "timm", "sdpa", "nn_mha"])
def test_token_sweep(benchmark, parity, impl, B, side, D):
    benchmark.group = f"sweep D{D} {side}x{side}"
    _case(benchmark, parity, impl, B, side, D, "forward_backward")


@pytest.mark.parametrize("mode", ["forward", "forward_backward"])
@pytest.mark.parametrize("B, side, D", UNET_SHAPES[:3], ids=lambda v: str(v))
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("impl", ["core_fused", "core_eager"])
def test_core(benchmark, parity, copy_rate_gbs, impl, dtype_name, B, side, D, mode):
    """The E2A core alone (pooling + key interaction, no input/output linears): fused op vs eager spec.
    Gradients by ``torch.autograd.grad``, not accumulated into ``.grad`` (an extra pass per call)."""
    if not parity.get("core"):
        pytest.skip("parity failed for the core op")
    dtype = DTYPES[dtype_name]
    N = side * side
    q, k = torch.randn(2, B, N, D, device=DEVICE, dtype=dtype).unbind(0)
    w, W, b = torch.randn(D, device=DEVICE, dtype=dtype), torch.randn(D, D, device=DEVICE, dtype=dtype) / D**0.5, torch.randn(D, device=DEVICE, dtype=dtype)
    grad = mode == "forward_backward"
    q.requires_grad_(grad), k.requires_grad_(grad)
    dy = torch.randn(B, N, D, device=DEVICE, dtype=dtype)
    op = (lambda: e2a(q, k, w, W, b)) if impl == "core_fused" else (lambda: e2a_naive(q, k, w, W, b, D**-0.5))

    def fn():
        y = op()
        if grad:
            torch.autograd.grad(y, (q, k), dy)
        return y

    bnd = B * N * D * q.element_size()
    benchmark.group = f"core B{B} {side}x{side}x{D} {dtype_name} {mode}"
    run_benchmark(benchmark, fn, extra={"impl": impl, "mode": mode, "dtype": dtype_name, "B": B, "tokens": N, "D": D,
                                        "device": DEVICE},
                  bytes_moved=(3 + (5 if grad else 0)) * bnd, copy_rate=copy_rate_gbs, memory_fn=op if grad else None)
