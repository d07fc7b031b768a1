"""Bad input gets a clear error; edge values (zero vectors, all-zero images, NaN) behave like the reference."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from kernel_env import interpreting, triton_device
from e2a_reference import (LOWP_FLOOR, LOWP_RATIO, assert_core_matches_timm, assert_matches, e2a_at_offset, rel_err,
                           timm_core)

import crocnet._triton.e2a as kernels
from crocnet.nn import CrossEfficientAdditiveAttention, EfficientAdditiveAttention
from crocnet.ops import cross_e2a, e2a, e2a_packed
from crocnet.ops._checks import MAX_TRITON_DIM

BACKENDS = ["torch", "triton"]


def _args(B=2, N=9, D=16, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(1)
    q, k = (torch.randn(B, N, D, generator=g, dtype=dtype) for _ in range(2))
    w_g, W, b = torch.randn(D, 1, generator=g, dtype=dtype), torch.randn(D, D, generator=g, dtype=dtype), torch.randn(D, generator=g, dtype=dtype)
    return [t.to(device) for t in (q, k, w_g, W, b)]


def _dev(backend):
    return triton_device() if backend == "triton" else "cpu"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "mutate, exc, message",
    [
        (lambda a: a.__setitem__(0, a[0][0]), ValueError, "q must have 3 dims, got shape (9, 16)"),
        (lambda a: a.__setitem__(1, a[1][:, :4]), ValueError, "k must have the shape of q (B, N, D) = (2, 9, 16), got (2, 4, 16)"),
        (lambda a: a.__setitem__(2, a[2][:8]), ValueError, "w_g must have shape (16, 1) or (16,) to match q's width 16, got (8, 1)"),
        (lambda a: a.__setitem__(2, a[2].view(2, 8)), ValueError, "w_g must have shape (16, 1) or (16,) to match q's width 16, got (2, 8)"),
        (lambda a: a.__setitem__(3, a[3][:, :8]), ValueError, "proj_weight must have shape (16, 16) to match q's width 16, got (16, 8)"),
        (lambda a: a.__setitem__(4, a[4][:3]), ValueError, "proj_bias must have shape (16,) to match q's width 16, got (3,)"),
        (lambda a: a.__setitem__(0, a[0].long()), TypeError, "q must be a floating-point tensor"),
        (lambda a: a.__setitem__(2, a[2].int()), TypeError, "w_g must be a floating-point tensor"),
        (lambda a: a.__setitem__(1, a[1].double()), TypeError, "q and k must share a dtype"),
        (lambda a: a.__setitem__(3, a[3].double()), TypeError, "proj_weight must have q's dtype torch.float32 (outside autocast), got torch.float64"),
        (lambda a: a.__setitem__(2, a[2].half()), TypeError, "w_g must have q's dtype torch.float32 (outside autocast), got torch.float16"),
        (lambda a: a.__setitem__(4, a[4].double()), TypeError, "proj_bias must have q's dtype torch.float32 (outside autocast), got torch.float64"),
        (lambda a: (a.__setitem__(0, a[0][:, :0]), a.__setitem__(1, a[1][:, :0])), ValueError, "non-empty in every axis"),
        (lambda a: (a.__setitem__(0, a[0][:0]), a.__setitem__(1, a[1][:0])), ValueError, "non-empty in every axis (batch, tokens, dim), got (0, 9, 16)"),
        (lambda a: a.__setitem__(0, [1.0]), TypeError, "q must be a torch.Tensor, got list"),
    ],
    ids=["rank", "k-shape", "w_g-width", "w_g-2d", "proj-width", "bias-width", "int-q", "int-w_g", "mixed-dtype",
         "W-dtype", "w_g-dtype", "bias-dtype", "N=0", "B=0", "list"],
)
def test_bad_inputs_say_what_was_expected_and_got(backend, mutate, exc, message):
    args = _args(device=_dev(backend))
    mutate(args)
    with pytest.raises(exc) as info:
        e2a(*args, backend=backend)
    assert message in str(info.value)


def test_tensors_on_different_devices_are_rejected():
    q, k, w_g, W, b = _args()
    with pytest.raises(ValueError, match=r"all inputs must be on one device, got \['cpu', 'meta'\]"):
        e2a(q, k, w_g, W.to("meta"), b)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"token_norm": "max"}, "token_norm must be one of ('l2', 'softmax', 'none'), got 'max'"),
        ({"backend": "cuda"}, "backend must be one of ('auto', 'triton', 'torch'), got 'cuda'"),
        ({"eps": 0.0}, "eps must lie in [1.18e-38, 8.51e+37] (a float32 normal number, as its reciprocal; the kernels compute in float32), got 0.0"),
        ({"eps": float("inf")}, "eps must lie in [1.18e-38, 8.51e+37]"),
        ({"eps": 1e-40}, "got 1e-40"),  # float32-subnormal: 1 / eps is inf in the kernels, 0 · inf = NaN
        ({"eps": 1e39}, "got 1e+39"),   # beyond float32
        ({"scale": float("inf")}, "scale must be finite in float32, |scale| <= 3.403e+38 (the kernels compute in "
                                  "float32), or None for D ** -0.5; got inf"),
        ({"scale": float("nan")}, "got nan"),
        ({"scale": -1e39}, "got -1e+39"),  # inf in the kernels' float32: every output NaN
    ],
)
@pytest.mark.parametrize("op", ["e2a", "cross_e2a"])
def test_bad_options(kwargs, message, op):
    args = _args() if op == "e2a" else _stacked()
    with pytest.raises(ValueError) as info:
        (e2a if op == "e2a" else cross_e2a)(*args, **kwargs)
    assert message in str(info.value)


@pytest.mark.parametrize("kwargs, message", [({"scale": "0.5"}, "scale must be a real number, got str '0.5'"),
                                             ({"eps": True}, "eps must be a real number, got bool True")])
def test_options_of_the_wrong_type(kwargs, message):
    with pytest.raises(TypeError, match=message):
        e2a(*_args(), **kwargs)


def _stacked():
    q, k, w_g, W, b = _args()
    return q[None], k[None], w_g.reshape(1, -1), W[None, None], b[None, None]


@pytest.mark.parametrize("backend", BACKENDS)
def test_token_norm_none_gives_w_g_no_gradient(backend):
    """With unit token weights w_g takes no part: both paths leave its .grad None (a zero tensor would
    still be moved by weight decay in AdamW, so the two paths would train differently)."""
    args = [t.to(_dev(backend)).requires_grad_(True) for t in _args()]
    e2a(*args, token_norm="none", backend=backend).sum().backward()
    assert args[2].grad is None
    assert all(a.grad is not None for i, a in enumerate(args) if i != 2)


def test_width_above_the_kernels_maximum_is_rejected_for_triton_only():
    args = _args(B=1, N=2, D=MAX_TRITON_DIM + 8, device=triton_device())
    with pytest.raises(ValueError, match=rf"supports token dims D <= {MAX_TRITON_DIM}, got D = {MAX_TRITON_DIM + 8}"):
        e2a(*args, backend="triton")
    assert e2a(*[a.cpu() for a in args], backend="torch").shape == (1, 2, MAX_TRITON_DIM + 8)


def test_triton_on_cpu_without_the_interpreter_is_a_clear_error(monkeypatch):
    import crocnet._triton._config as config  # as if the kernels had been built for the GPU compiler

    monkeypatch.setattr(config, "INTERPRETING", False)
    with pytest.raises(RuntimeError, match="needs CUDA tensors, or CPU tensors with TRITON_INTERPRET=1"):
        e2a(*_args(), backend="triton")
    assert e2a(*_args(), backend="auto").shape == (2, 9, 16)  # auto falls back to the PyTorch path


def test_modules_reject_wrong_token_shapes():
    with pytest.raises(ValueError, match=r"expected tokens of shape \(B, N, 16\), got \(2, 9, 8\)"):
        EfficientAdditiveAttention(16, 16)(torch.randn(2, 9, 8))
    with pytest.raises(ValueError, match=r"tokens must be non-empty in every axis \(batch, tokens, 16\), got \(0, 9, 16\)"):
        EfficientAdditiveAttention(16, 16)(torch.randn(0, 9, 16))
    with pytest.raises(TypeError, match="tokens must be a floating-point tensor, got torch.int64"):
        EfficientAdditiveAttention(16, 16)(torch.ones(2, 9, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="token_norm must be one of"):
        EfficientAdditiveAttention(16, 16, token_norm="l1")


def test_parameters_in_another_dtype_are_accepted_under_autocast_only():
    """Under autocast q arrives in the autocast dtype while the parameters stay float32, as for nn.Linear;
    the result is held to timm's module under the same autocast (the table's bfloat16 rule)."""
    q, k, w_g, W, b = _args()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = e2a(q.bfloat16(), k.bfloat16(), w_g, W, b, backend="torch")
        base = timm_core(q.bfloat16(), k.bfloat16(), w_g, W, b)
    assert y.dtype == torch.bfloat16
    assert_matches("y", y, timm_core(*(t.double() for t in (q, k, w_g, W, b))), torch.bfloat16, baseline=base)
    with pytest.raises(TypeError, match="proj_weight must have q's dtype torch.bfloat16"):
        e2a(q.bfloat16(), k.bfloat16(), w_g.bfloat16(), W, b.bfloat16(), backend="torch")


@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_is_left_as_it_is_under_autocast(backend):
    """Autocast casts float16/bfloat16/float32 only: float64 operands give the float64 result they give
    outside it, and float64 q with float32 parameters is the dtype error it is outside autocast (not a
    silent cast to the autocast dtype, nor a raw matmul error)."""
    if backend == "triton" and not interpreting():
        pytest.skip("float64 kernels run in the interpreter only")
    args = [a.double() for a in _args()]
    want = e2a(*args, backend=backend)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = e2a(*args, backend=backend)
        with pytest.raises(TypeError, match=r"w_g must have q's dtype torch.float64 \(autocast casts only float16, "
                                            r"bfloat16 and float32\), got torch.float32"):
            e2a(*args[:2], *(a.float() for a in args[2:]), backend=backend)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("token_norm", ["l2", "softmax", "none"])
def test_zero_vectors_behave_like_timm(backend, token_norm):
    """Zero query/key tokens, and an image whose every score is zero, take F.normalize's eps branch exactly
    as timm's module does (its forward on the bare op, ``timm_core``), outputs and every gradient: float64
    on CPU, float32 for the compiled kernels on a GPU."""
    dev = _dev(backend)
    dtype = torch.float32 if dev == "cuda" else torch.float64
    q, k, w_g, W, b = (a.double() for a in _args(B=3, N=20, D=16))
    q[0, 3] = 0.0          # one zero query token
    k[0, 5] = 0.0          # one zero key token
    q[1] = 0.0             # an all-zero image: every score a = 0, so ‖a‖ = 0 < eps
    k[2] = 0.0
    dy = torch.randn(3, 20, 16, dtype=torch.float64)
    assert_core_matches_timm(lambda *a: e2a(*a, token_norm=token_norm, backend=backend), (q, k, w_g, W, b), dy,
                             token_norm, dev, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_zero_tokens_in_half_precision_stay_finite(backend, dtype):
    """eps = 1e-12 is 0 in float16: norms are computed in float32 on both paths, so a zero token gives the
    float32 result (timm's float16 module gives NaN for the whole image), not 0/0. Tolerance: the table's
    low-precision rule, with timm's own error in ``dtype`` on the same inputs before the zeroing as the bar."""
    args = [a.double() for a in _args(B=2, N=20, D=16)]
    base = rel_err(timm_core(*(t.to(dtype) for t in args)), timm_core(*args))
    args[0][0, 3] = 0.0
    args[1][0, 5] = 0.0
    ref = timm_core(*args)
    y = e2a(*(t.to(_dev(backend), dtype) for t in args), backend=backend)
    assert y.dtype == dtype and torch.isfinite(y).all()
    assert rel_err(y, ref) <= LOWP_RATIO * base + LOWP_FLOOR[dtype], (rel_err(y, ref), base)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("token_norm", ["l2", "softmax", "none"])
@pytest.mark.parametrize("where", [0, 1])
@pytest.mark.parametrize("D", [16, 48])  # the weight gradient fused into the key-gradient kernel (D <= 32), or apart
def test_nan_inputs_propagate_and_stay_in_their_image(backend, token_norm, where, D):
    """A NaN in one token of q or k poisons that image's output (as in timm) and no other image, and the
    gradients of every input and parameter are NaN exactly where the reference's are (a NaN norm must not
    take the eps branch, which would turn it into large finite gradients that GradScaler and anomaly checks
    cannot see: it did for the projection weight's); the reference is timm's module on the bare op
    (``timm_core``)."""
    dev = _dev(backend)
    args = _args(B=2, N=20, D=D)
    args[where][1, 4, 2] = float("nan")
    dy = torch.randn(2, 20, D, generator=torch.Generator().manual_seed(2))
    outs = []
    for fn, device in ((lambda *a: e2a(*a, token_norm=token_norm, backend=backend), dev),
                       (lambda *a: timm_core(*a, token_norm=token_norm), "cpu")):
        leaves = [t.clone().to(device).requires_grad_(True) for t in args]
        y = fn(*leaves)
        y.backward(dy.to(device))
        outs.append([t.detach().cpu() for t in (y, *(a.grad if a.grad is not None else torch.zeros(()) for a in leaves))])
    for label, a, r in zip(["y", "dq", "dk", "dw_g", "dW", "db"], *outs):
        if label in ("y", "dq", "dk"):
            assert torch.isnan(a[1]).any() and torch.isfinite(a[0]).all(), label
        if label == "dw_g" and token_norm == "none":
            continue  # w_g is unused: the op gives no gradient, the written-out reference 0 · NaN
        assert torch.equal(torch.isnan(a), torch.isnan(r)), f"{label}: NaN at other places than the reference's"


def test_kernels_write_every_output_element(monkeypatch):
    """Outputs allocated with ``torch.empty`` are NaN-poisoned: any element a kernel forgets shows up."""
    dev = triton_device()

    def poisoned(*shape, **kw):
        return torch.full(*shape, float("nan"), **kw) if len(shape) == 1 else torch.full(shape, float("nan"), **kw)

    monkeypatch.setattr(kernels, "empty", poisoned)
    for S, B, N, D in ((1, 2, 33, 24), (3, 2, 17, 20), (3, 1, 17, 40)):  # weight gradient fused at D ≤ 32
        q, k = torch.randn(2, S, B, N, D, device=dev).unbind(0)
        args = [q, k, torch.randn(S, D, device=dev), torch.randn(S, S, D, D, device=dev) / D, torch.randn(S, S, D, device=dev)]
        args = [a.requires_grad_(True) for a in args]
        y = cross_e2a(*args, backend="triton")
        y.backward(torch.randn_like(y))
        for t in [y] + [a.grad for a in args]:
            assert torch.isfinite(t).all()
    qk = torch.randn(2, 33, 48, device=dev, requires_grad=True)  # packed: dq and dk fill one dqk
    y = e2a_packed(qk, torch.randn(24, device=dev), torch.randn(24, 24, device=dev) / 24, backend="triton")
    y.backward(torch.randn_like(y))
    assert torch.isfinite(y).all() and torch.isfinite(qk.grad).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs_and_gradients(backend):
    """Transposed inputs and a stride-0 (expanded) upstream gradient give the contiguous results."""
    dev = _dev(backend)
    q, k, w_g, W, b = _args(B=2, N=12, D=16, dtype=torch.float64 if backend == "torch" or interpreting() else torch.float32, device=dev)
    qt = q.transpose(0, 1).contiguous().transpose(0, 1)   # same values, non-contiguous
    kt = k.transpose(1, 2).contiguous().transpose(1, 2)
    Wt = W.t().contiguous().t()
    assert not (qt.is_contiguous() or kt.is_contiguous() or Wt.is_contiguous())
    dy = torch.randn(1, 1, 16, dtype=q.dtype, device=dev).expand(2, 12, 16)
    results = []
    for args, grad in (((q, k, w_g, W, b), dy.contiguous()), ((qt, kt, w_g, Wt, b), dy)):
        args = [a.detach().clone() if a.is_contiguous() else a.detach() for a in args]
        args = [a.requires_grad_(True) for a in args]
        y = e2a(*args, backend=backend)
        y.backward(grad)
        results.append([y] + [a.grad for a in args])
    tol = 1e-12 if q.dtype == torch.float64 else 1e-6  # only the summation order may differ
    for a, r in zip(*results):
        torch.testing.assert_close(a, r, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_vector_width_promises_only_what_holds(dtype, monkeypatch):
    """The kernels tell Triton that every token row (and weight row) starts on a VEC-element boundary, so it
    may use vector accesses of up to 16 bytes; on a GPU a false promise is a misaligned access. VEC must divide
    D, the row stride and every tensor's address (each in its own element size), and be the largest such;
    1 (no promise) where Triton's own specialisation already sees 16-element, 16-byte alignment."""
    size = torch.empty(0, dtype=dtype).element_size()
    buf = torch.empty(4096, dtype=dtype)
    weights = torch.empty(4096, dtype=torch.float32)
    seen = set()
    for D in (1, 2, 3, 4, 6, 8, 12, 16, 20, 24, 32, 40, 100, 220, 256):
        for ld in (D, 2 * D):
            for offset in range(9):
                rows, w = buf[offset : offset + 2 * D], weights[offset % 5 :]

                def holds(v):
                    return D % v == 0 and ld % v == 0 and rows.data_ptr() % (v * size) == 0 and w.data_ptr() % (v * 4) == 0

                vec = kernels._vector_width(D, ld, rows, w)
                if D % 16 == 0 and ld % 16 == 0 and rows.data_ptr() % 16 == 0 and w.data_ptr() % 16 == 0:
                    assert vec == 1, (D, ld, offset, vec)  # Triton's own specialisation covers it
                    continue
                assert holds(vec), (D, ld, offset, vec)
                assert vec * size == 16 or not holds(2 * vec), (D, ld, offset, vec)
                seen.add(vec)
    assert seen == {v for v in (1, 2, 4, 8, 16) if v * size <= 16}  # every width was reached
    monkeypatch.setattr(kernels._config, "MAX_VECTOR_BYTES", 1)  # the benchmark's one-element rows
    assert kernels._vector_width(24, 48, buf, weights) == 1


@pytest.mark.parametrize("packed", [False, True], ids=["e2a", "e2a_packed"])
@pytest.mark.parametrize("offset", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("D", [12, 20, 24])
def test_rows_at_any_alignment_match_timm(D, offset, packed):
    """q, k (or the packed qk) and the upstream gradient as contiguous views at every alignment, at widths that
    are not multiples of 16 (where the kernels' own alignment promise, not Triton's, decides the access width):
    output and every gradient against timm. On a GPU in fp32 and bf16 (rows of 16-byte vectors where aligned),
    in the interpreter in fp64."""
    dev = triton_device()
    torch.manual_seed(D * 10 + offset)
    q, k = torch.randn(2, 2, 19, D, dtype=torch.float64).unbind(0)
    w_g, W, b = torch.randn(D, 1, dtype=torch.float64), torch.randn(D, D, dtype=torch.float64) / D, torch.randn(D, dtype=torch.float64)
    dy = torch.randn(2, 19, D, dtype=torch.float64)
    for dtype in (torch.float32, torch.bfloat16) if dev == "cuda" else (torch.float64,):
        assert_core_matches_timm(e2a_at_offset(offset, packed), (q, k, w_g, W, b), dy, "l2", dev, dtype)


def test_cross_module_rejects_mismatched_streams():
    m = CrossEfficientAdditiveAttention(8, 16, streams=3)
    x = torch.randn(2, 10, 8)
    with pytest.raises(ValueError, match="expected 3 streams, got 2"):
        m(x, x)
    with pytest.raises(ValueError, match=r"every stream must have the shape of stream 0 \(2, 10, 8\), got \(2, 11, 8\) for stream 2"):
        m(x, x, torch.randn(2, 11, 8))
    with pytest.raises(ValueError, match=r"expected streams of shape \(B, N, 8\), got \(2, 10, 4\)"):
        m(*(torch.randn(2, 10, 4),) * 3)
    with pytest.raises(ValueError, match="authors_final_bug reproduces the 3-stream"):
        CrossEfficientAdditiveAttention(8, 16, streams=2, authors_final_bug=True)


def test_cross_op_rejects_bad_stacks():
    q = torch.randn(3, 2, 5, 8)
    with pytest.raises(ValueError, match=r"proj_weight must have shape \(3, 3, 8, 8\) to match q, got \(2, 2, 8, 8\)"):
        cross_e2a(q, q, torch.randn(3, 8), torch.randn(2, 2, 8, 8))
    with pytest.raises(ValueError, match=r"w_g must have shape \(3, 8\) to match q, got \(2, 8\)"):
        cross_e2a(q, q, torch.randn(2, 8), torch.randn(3, 3, 8, 8))
    with pytest.raises(ValueError, match=r"q must have shape \(streams, batch, tokens, dim\)"):
        cross_e2a(q[0], q[0], torch.randn(3, 8), torch.randn(3, 3, 8, 8))


_INTERPRETER_PROBE = """
import os, sys, torch
late = sys.argv[1] == "late"
if late:
    import crocnet._triton.e2a  # kernels built for the compiler: setting the variable afterwards changes nothing
    os.environ["TRITON_INTERPRET"] = "1"
from crocnet.ops import e2a
from crocnet.ops._checks import interpreting
print("interpreting", interpreting())
x = torch.randn(1, 4, 8)
try:
    e2a(x, x, torch.randn(8), torch.randn(8, 8), backend="triton")
except RuntimeError as exc:
    print(exc)
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="probes the CPU-only case: no CUDA device to fall back on")
@pytest.mark.parametrize("value, when", [("false", "early"), ("0", "late")])
def test_interpreter_is_detected_as_triton_decides_it(value, when):
    """``TRITON_INTERPRET=false`` is off for Triton, and so is a value set after the kernels were imported:
    the project's error says so, instead of Triton's bare "0 active drivers"."""
    env = {**os.environ, "TRITON_INTERPRET": value, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", _INTERPRETER_PROBE, when], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "interpreting False" in out.stdout
    assert "backend='triton' needs CUDA tensors, or CPU tensors with TRITON_INTERPRET=1 set before triton" in out.stdout


@pytest.mark.parametrize("op, qk, message", [
    ("e2a_packed", torch.randn(2, 5, 15), r"qk must have shape \(B, N, 2D\) .* got \(2, 5, 15\)"),
    ("e2a_packed", torch.randn(1, 2, 5, 16), r"qk must have shape \(B, N, 2D\) .* got \(1, 2, 5, 16\)"),
    ("e2a_packed", torch.randn(2, 0, 16), r"q and k must be non-empty .* got \(2, 0, 8\)"),
    ("cross_e2a_packed", torch.randn(3, 2, 5, 16), r"w_g .*\(3, 8\)"),
    ("cross_e2a_packed", torch.randn(2, 5, 16), r"qk must have shape \(S, B, N, 2D\) .* got \(2, 5, 16\)"),
    ("e2a_packed", torch.randint(0, 3, (2, 5, 16)), r"qk must be a floating-point tensor"),
])
def test_packed_ops_name_a_bad_qk(op, qk, message):
    import crocnet.ops as ops

    w_g, W = torch.randn(8), torch.randn(8, 8)
    if op == "cross_e2a_packed":
        w_g, W = torch.randn(2, 8), torch.randn(3, 3, 8, 8)  # two scoring vectors for three streams
    with pytest.raises((ValueError, TypeError), match=message):
        getattr(ops, op)(qk, w_g, W)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("zero", ["scale", "w_g"])
def test_all_zero_scores_in_float16_give_the_float32_gradients(backend, zero):
    """Scores all 0 (``scale = 0`` or ``w_g = 0``): â's gradient is ``dâ / eps``, about 1e12, which the
    PyTorch path had rounded to inf in float16, so every dq was ``inf · 0`` = NaN; both paths make and
    normalise the scores in float32. Tolerance: float16's rounding of the float32 result (2e-3 relative)."""
    q, k, w_g, W, b = _args(B=2, N=13, D=16)
    kwargs = {"scale": 0.0} if zero == "scale" else {}
    if zero == "w_g":
        w_g = torch.zeros_like(w_g)
    dy = torch.randn(2, 13, 16, generator=torch.Generator().manual_seed(4))
    dqs = []
    for dtype, device in ((torch.float16, _dev(backend)), (torch.float32, "cpu")):
        leaf = q.to(device, dtype).requires_grad_(True)
        e2a(leaf, *(t.to(device, dtype) for t in (k, w_g, W, b)), backend="torch" if dtype == torch.float32 else backend,
            **kwargs).backward(dy.to(device, dtype))
        dqs.append(leaf.grad.float().cpu())
    assert torch.isfinite(dqs[0]).all()
    torch.testing.assert_close(dqs[0], dqs[1], rtol=2e-3, atol=2e-3)
