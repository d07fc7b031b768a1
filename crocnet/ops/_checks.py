"""Input validation shared by the ops: every message says what was expected and what was got."""

from __future__ import annotations

import numbers
import os
import sys

import torch

from .naive import TOKEN_NORMS

BACKENDS = ("auto", "triton", "torch")
#: Widest token dimension D the Triton kernels accept: they hold whole rows in registers, and past 512 the
#: key-gradient kernel spills (``tools/compile_check.py --dims 1024``). Wider widths use ``backend="torch"``.
MAX_TRITON_DIM = 512


def _describe(t: torch.Tensor) -> str:
    return f"shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}"


def check_float(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor (float16, bfloat16, float32 or float64), got {t.dtype}")


#: eps must be a float32 normal number whose reciprocal is one too: the kernels compute in float32 and
#: multiply by 1 / max(norm, eps) (a subnormal eps gives inf there, and 0 · inf = NaN for a zero vector).
EPS_RANGE = (torch.finfo(torch.float32).tiny, 1.0 / torch.finfo(torch.float32).tiny)


def _real(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    return float(value)


FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def check_options(token_norm: str, backend: str, eps: float, scale: float | None = None) -> None:
    if token_norm not in TOKEN_NORMS:
        raise ValueError(f"token_norm must be one of {TOKEN_NORMS}, got {token_norm!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if torch.compiler.is_compiling():
        # dynamo may trace float arguments as symbolic values, and a comparison on them costs a second
        # graph: eager calls check them
        return
    if not EPS_RANGE[0] <= _real("eps", eps) <= EPS_RANGE[1]:
        raise ValueError(f"eps must lie in [{EPS_RANGE[0]:.3g}, {EPS_RANGE[1]:.3g}] (a float32 normal number, as its "
                         f"reciprocal; the kernels compute in float32), got {eps!r}")
    if scale is not None and not abs(_real("scale", scale)) <= FLOAT32_MAX:
        raise ValueError(f"scale must be finite in float32, |scale| <= {FLOAT32_MAX:.4g} (the kernels compute in float32), "
                         f"or None for D ** -0.5; got {scale!r}")


#: the dtypes autocast casts (float64 stays as it is)
AUTOCAST_CASTS = (torch.float16, torch.bfloat16, torch.float32)


def autocast_dtype(t: torch.Tensor) -> torch.dtype | None:
    """The dtype autocast runs matmuls in on ``t``'s device (CUDA or CPU), or None outside autocast."""
    device_type = t.device.type
    if device_type in ("cuda", "cpu") and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def check_streams(
    q: torch.Tensor,
    k: torch.Tensor,
    w_g: torch.Tensor,
    proj_weight: torch.Tensor,
    proj_bias: torch.Tensor | None,
    qk_bias: torch.Tensor | None = None,
) -> None:
    """Validate the stacked ``(S, B, N, D)`` layout the kernels take (``qk_bias``: ``(S, 2D)``, the packed ops')."""
    for name, t in (("q", q), ("k", k), ("w_g", w_g), ("proj_weight", proj_weight)):
        check_float(name, t)
    for name, t in (("proj_bias", proj_bias), ("qk_bias", qk_bias)):
        if t is not None:
            check_float(name, t)
    if q.dim() != 4:
        raise ValueError(f"q must have shape (streams, batch, tokens, dim), got {_describe(q)}")
    if k.shape != q.shape:
        raise ValueError(f"k must have the shape of q {tuple(q.shape)}, got {tuple(k.shape)}")
    if q.dtype != k.dtype:
        raise TypeError(f"q and k must share a dtype, got q {q.dtype} and k {k.dtype}")
    streams, batch, tokens, dim = q.shape
    if streams == 0 or batch == 0 or tokens == 0 or dim == 0:
        raise ValueError(f"q must be non-empty in every axis (streams, batch, tokens, dim), got {tuple(q.shape)}")
    if w_g.shape not in ((streams, dim), (streams, dim, 1)):
        raise ValueError(f"w_g must have shape {(streams, dim)} to match q, got {tuple(w_g.shape)}")
    if proj_weight.shape != (streams, streams, dim, dim):
        raise ValueError(f"proj_weight must have shape {(streams, streams, dim, dim)} to match q, got {tuple(proj_weight.shape)}")
    if proj_bias is not None and proj_bias.shape != (streams, streams, dim):
        raise ValueError(f"proj_bias must have shape {(streams, streams, dim)} to match q, got {tuple(proj_bias.shape)}")
    if qk_bias is not None and qk_bias.shape != (streams, 2 * dim):
        raise ValueError(f"qk_bias must have shape {(streams, 2 * dim)} (the biases of q and k side by side), "
                         f"got {tuple(qk_bias.shape)}")
    optional = [(name, t) for name, t in (("proj_bias", proj_bias), ("qk_bias", qk_bias)) if t is not None]
    tensors = [q, k, w_g, proj_weight] + [t for _, t in optional]
    # Under autocast the matmuls run in the autocast dtype whatever the operands' among the dtypes it casts
    # (as for nn.Linear); elsewhere, and for float64, a parameter in another dtype would fail in the PyTorch
    # path and silently mix precisions in the kernels, so both refuse it.
    autocast = autocast_dtype(q) is not None and q.dtype in AUTOCAST_CASTS
    for name, t in [("w_g", w_g), ("proj_weight", proj_weight)] + optional:
        if t.dtype != q.dtype and not (autocast and t.dtype in AUTOCAST_CASTS):
            where = "(autocast casts only float16, bfloat16 and float32)" if autocast_dtype(q) else "(outside autocast)"
            raise TypeError(f"{name} must have q's dtype {q.dtype} {where}, got {t.dtype}")
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        raise ValueError(f"all inputs must be on one device, got {sorted(str(d) for d in devices)}")


@torch.compiler.assume_constant_result  # torch.compile cannot trace Triton's knob read (a C call); it is a constant
def interpreting() -> bool:
    """True when Triton runs the kernels in its CPU interpreter: as Triton decided when the kernels were
    imported, or, before that, as it would decide now (``TRITON_INTERPRET`` = 1, true, on or yes)."""
    config = sys.modules.get("crocnet._triton._config")
    if config is not None:
        return config.INTERPRETING
    return interpret_requested()


def interpret_requested() -> bool:
    """Whether ``triton.jit`` would build kernels for the interpreter if they were decorated now."""
    try:
        import triton
    except Exception:  # pragma: no cover - triton is a Linux dependency
        return False
    knobs = getattr(triton, "knobs", None)  # Triton >= 3.4
    if knobs is None:  # pragma: no cover - older Triton reads the variable itself, "1" only
        return os.environ.get("TRITON_INTERPRET", "0") == "1"
    return bool(knobs.runtime.interpret)


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # pragma: no cover - triton is a Linux dependency
        return False
    return True


def resolve_backend(backend: str, q: torch.Tensor, dim: int | None = None) -> str:
    """``auto`` → Triton for CUDA tensors the kernels take (fp16/bf16/fp32, D ≤ MAX_TRITON_DIM), PyTorch
    elsewhere; ``triton`` is checked to be runnable and raises on what it cannot take. ``dim``: the attention
    width D when ``q`` is not the query itself (default ``q.shape[-1]``)."""
    if backend == "torch":
        return "torch"
    dim = q.shape[-1] if dim is None else dim
    runnable = triton_available() and (q.is_cuda or (interpreting() and q.device.type == "cpu"))
    if backend == "auto":
        fits = q.dtype != torch.float64 and dim <= MAX_TRITON_DIM
        return "triton" if runnable and q.is_cuda and fits else "torch"
    if not runnable:
        raise RuntimeError(
            f"backend='triton' needs CUDA tensors, or CPU tensors with TRITON_INTERPRET=1 set before triton "
            f"is imported; got tensors on {q.device} (TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET')!r}, "
            f"triton importable: {triton_available()}). Use backend='torch' or 'auto' here."
        )
    if q.dtype == torch.float64 and not interpreting():
        raise TypeError("backend='triton' computes in float32 on the GPU; use backend='torch' for float64")
    if dim > MAX_TRITON_DIM:
        raise ValueError(
            f"backend='triton' supports token dims D <= {MAX_TRITON_DIM}, got D = {dim}; use backend='torch'"
        )
    return "triton"
