"""Independent references and tolerances for the E2A / cross-E2A tests.

* E2A: ``timm.models.swiftformer.EfficientAdditiveAttention`` itself (imported, not copied).
* Softmax token weighting (Fastformer): written out here with an explicit max-subtracted exponential.
* Unit token weights (``token_norm="none"``): the HuggingFace port's softmax over a size-1 axis, written out.
* The bare op (no input or output linears): ``timm_core`` runs timm's module with slices for its input
  linears and the identity for ``final``.
* Cross-E2A: a line-by-line PyTorch transcription of the CroCNet authors' ``X_EfficientAdditiveAttnetion``
  (their key names, their einops ``repeat`` of the global query, their ``final_myo`` on the RV stream
  behind ``final_bug``) — deliberately sharing no code with ``crocnet``.

Tolerances (relative: ``max |ours - ref| / max |ref|`` (see ``ZERO_SCALE``), the reference in float64 from the same inputs):

=========  =========================================================================================
float64    1e-10 (outputs and every gradient)
float32    2e-5 outputs, 1e-4 gradients (fp32 accumulation over up to a few thousand tokens)
float16    ours ≤ 2 × timm's own float16 error + 1e-3 (timm eager in the same dtype is the bar)
bfloat16   ours ≤ 2 × timm's own bfloat16 error + 8e-3
=========  =========================================================================================
"""

from __future__ import annotations

import einops
import torch
import torch.nn.functional as F
from torch import nn

TOL_OUT = {torch.float64: 1e-10, torch.float32: 2e-5}
TOL_GRAD = {torch.float64: 1e-10, torch.float32: 1e-4}
LOWP_RATIO = 2.0
LOWP_FLOOR = {torch.float16: 1e-3, torch.bfloat16: 8e-3}


#: Denominator floor of the relative error: a gradient that is mathematically zero (``w_g`` at N = 1, where
#: ``â = sign(a)``) is compared on this absolute scale instead (the tests' values are O(0.1-10)).
ZERO_SCALE = 1e-3


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    """``max |x - ref| / max(max |ref|, ZERO_SCALE)`` computed in float64."""
    x, ref = x.detach().double().cpu(), ref.detach().double().cpu()
    assert x.shape == ref.shape, f"shape {tuple(x.shape)} != reference {tuple(ref.shape)}"
    assert torch.isfinite(x).all(), "non-finite values"
    return ((x - ref).abs().max() / ref.abs().max().clamp_min(ZERO_SCALE)).item()


def assert_matches(name: str, ours, ref64, dtype: torch.dtype, *, grad: bool = False, baseline=None) -> None:
    """Check ``ours`` (computed in ``dtype``) against the float64 reference with the tolerance table above.

    For float16/bfloat16, ``baseline`` is the same quantity from timm (or the authors' form) run in ``dtype``.
    """
    err = rel_err(ours, ref64)
    if dtype in (torch.float16, torch.bfloat16):
        assert baseline is not None, "low-precision checks compare against the reference run in the same dtype"
        bound = LOWP_RATIO * rel_err(baseline, ref64) + LOWP_FLOOR[dtype]
    else:
        bound = (TOL_GRAD if grad else TOL_OUT)[dtype]
    assert err <= bound, f"{name}: relative error {err:.3e} > {bound:.3e} ({dtype})"


def timm_e2a(in_dims: int, token_dim: int, **kwargs) -> nn.Module:
    from timm.models.swiftformer import EfficientAdditiveAttention

    return EfficientAdditiveAttention(in_dims=in_dims, token_dim=token_dim, **kwargs)


def softmax_e2a_module_forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """timm's module with softmax over tokens instead of the L2 norm (the Fastformer weighting); ``x (B, N, C)``."""
    q = F.normalize(m.to_query(x), dim=-1)
    k = F.normalize(m.to_key(x), dim=-1)
    a = q @ m.w_g * m.scale_factor
    e = torch.exp(a - a.amax(dim=1, keepdim=True))
    a = e / e.sum(dim=1, keepdim=True)
    g = torch.sum(a * q, dim=1, keepdim=True)
    return m.final(m.proj(g * k) + q)


def unit_weight_e2a_module_forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The HuggingFace port's weighting (``token_norm="none"``): its softmax runs over the last axis of the
    ``(B, N, 1)`` scores, so every token weighs exactly 1; ``x (B, N, C)``."""
    q = F.normalize(m.to_query(x), dim=-1)
    k = F.normalize(m.to_key(x), dim=-1)
    a = (q @ m.w_g * m.scale_factor).softmax(dim=-1)
    g = torch.sum(a * q, dim=1, keepdim=True)
    return m.final(m.proj(g * k) + q)


class _Take(nn.Module):
    """``x[..., start:stop]``: stands in for timm's input linears so its forward sees q and k as given."""

    def __init__(self, start: int, stop: int):
        super().__init__()
        self.start, self.stop = start, stop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., self.start:self.stop]


def timm_core(q, k, w_g, proj_weight, proj_bias, token_norm: str = "l2") -> torch.Tensor:
    """The E2A core ``proj(G ⊙ k̂) + q̂`` on ``q, k (B, N, D)``, computed by timm's own module.

    timm's ``to_query``/``to_key`` become slices of ``cat(q, k)`` (no matmul, so a NaN in k cannot leak into
    q through a zero weight), ``final`` the identity, and ``w_g``/``proj`` the given tensors, so gradients
    reach them. ``"l2"`` runs timm's ``forward``; ``"softmax"`` and ``"none"`` the written-out forms above.
    """
    B, N, D = q.shape
    m = timm_e2a(2 * D, D)
    m.to_query, m.to_key, m.final = _Take(0, D), _Take(D, 2 * D), nn.Identity()
    del m.w_g, m.proj.weight, m.proj.bias
    m.w_g, m.proj.weight, m.proj.bias = w_g.reshape(D, 1), proj_weight, proj_bias
    x = torch.cat([q, k], dim=-1)
    if token_norm == "l2":  # timm's forward takes (B, C, H, W)
        return m(x.transpose(1, 2).reshape(B, 2 * D, N, 1)).reshape(B, D, N).transpose(1, 2)
    forward = {"softmax": softmax_e2a_module_forward, "none": unit_weight_e2a_module_forward}[token_norm]
    return forward(m, x)


def assert_core_matches_timm(op, inputs, dy, token_norm: str, device, dtype: torch.dtype) -> None:
    """``op(q, k, w_g, proj_weight, proj_bias)`` against :func:`timm_core` in float64: the output and every
    gradient, with the tolerance table (``assert_matches``, which also requires finite values).

    ``inputs`` and ``dy`` are float64; each run gets its own copies (``op``'s in ``dtype`` on ``device``), so the
    two runs never share a leaf and its ``.grad``. With ``token_norm="none"`` ``op`` gives ``w_g`` no gradient
    and timm's size-1 softmax passes back exact zeros. In float16/bfloat16 timm also runs in ``dtype`` on
    ``device``: the baseline the tolerance table scales with.
    """
    res = {}
    timm = lambda *a: timm_core(*a, token_norm=token_norm)  # noqa: E731
    runs = [("ours", op, device, dtype), ("timm", timm, "cpu", torch.float64)]
    if dtype in (torch.float16, torch.bfloat16):
        runs.append(("baseline", timm, device, dtype))
    for name, fn, dev, dt in runs:
        args = [t.detach().to(dev, dt, copy=True).requires_grad_(True) for t in inputs]
        y = fn(*args)
        y.backward(dy.to(dev, dt))
        res[name] = [y] + [a.grad for a in args]
    baselines = res.get("baseline", [None] * 6)
    for label, a, r, base in zip(["y", "dq", "dk", "dw_g", "dW", "db"], res["ours"], res["timm"], baselines):
        if a is None:
            assert label == "dw_g" and token_norm == "none" and torch.count_nonzero(r) == 0, label
            continue
        assert_matches(label, a, r, dtype, grad=label != "y", baseline=base)


class _GradAtOffset(torch.autograd.Function):
    """Identity whose backward hands on the gradient as a contiguous view ``offset`` elements into its buffer."""

    @staticmethod
    def forward(ctx, x, offset):
        ctx.offset = offset
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return _at_offset(grad.contiguous(), ctx.offset), None


def _at_offset(x, offset):
    """``x`` as a contiguous view starting ``offset`` elements into a larger buffer (autograd flows through)."""
    return torch.cat([x.new_zeros(offset), x.reshape(-1)])[offset:].view(x.shape)


def e2a_at_offset(offset: int, packed: bool):
    """``op(q, k, w_g, W, b)`` for :func:`assert_core_matches_timm`: our op on the Triton backend, with q and k
    (or, ``packed``, ``cat(q, k)``) and the upstream gradient as contiguous views ``offset`` elements into
    their buffers, so the kernels see every alignment."""
    from crocnet.ops import e2a, e2a_packed

    def op(q, k, w_g, W, b):
        if packed:
            y = e2a_packed(_at_offset(torch.cat([q, k], dim=-1), offset), w_g, W, b, backend="triton")
        else:
            y = e2a(_at_offset(q, offset), _at_offset(k, offset), w_g, W, b, backend="triton")
        return _GradAtOffset.apply(y, offset)

    return op


STREAMS = ("lv", "myo", "rv")


class AuthorsCrossAttention(nn.Module):
    """Transcription of the CroCNet authors' ``X_EfficientAdditiveAttnetion`` (three streams lv, myo, rv).

    Inputs are ``(B, N, in_dims)`` token tensors, one per stream, as in their ``My_NetXd`` after flattening.
    """

    def __init__(self, in_dims: int, token_dim: int, num_heads: int = 1, final_bug: bool = True):
        super().__init__()
        d = token_dim * num_heads
        self.final_bug = final_bug
        self.scale_factor = token_dim**-0.5
        for s in STREAMS:
            setattr(self, f"to_query_{s}", nn.Linear(in_dims, d))
            setattr(self, f"to_key_{s}", nn.Linear(in_dims, d))
            setattr(self, f"w_g_{s}", nn.Parameter(torch.randn(d, 1)))
            for t in (1, 2, 3):
                setattr(self, f"Proj_{s}{t}", nn.Linear(d, d))
            setattr(self, f"final_{s}", nn.Linear(d, token_dim))

    def _global(self, s, x):
        query = F.normalize(getattr(self, f"to_query_{s}")(x), dim=-1)
        key = F.normalize(getattr(self, f"to_key_{s}")(x), dim=-1)
        A = query @ getattr(self, f"w_g_{s}")
        A = A * self.scale_factor
        A = F.normalize(A, dim=1)
        G = torch.sum(A * query, dim=1)
        G = einops.repeat(G, "b d -> b repeat d", repeat=key.shape[1])
        return query, key, G

    def forward(self, x_lv, x_myo, x_rv):
        q_lv, k_lv, G_lv = self._global("lv", x_lv)
        q_myo, k_myo, G_myo = self._global("myo", x_myo)
        q_rv, k_rv, G_rv = self._global("rv", x_rv)
        out_lv = self.Proj_lv1(G_lv * k_lv) + self.Proj_lv2(G_lv * k_myo) + self.Proj_lv3(G_lv * k_rv) + q_lv
        out_myo = self.Proj_myo1(G_myo * k_lv) + self.Proj_myo2(G_myo * k_myo) + self.Proj_myo3(G_myo * k_rv) + q_myo
        out_rv = self.Proj_rv1(G_rv * k_lv) + self.Proj_rv2(G_rv * k_myo) + self.Proj_rv3(G_rv * k_rv) + q_rv
        out_lv = self.final_lv(out_lv)
        out_myo = self.final_myo(out_myo)
        out_rv = self.final_myo(out_rv) if self.final_bug else self.final_rv(out_rv)
        return out_lv, out_myo, out_rv


def authors_to_ours_names(streams: int = 3) -> dict[str, str]:
    """Parameter names of ``AuthorsCrossAttention`` → ``CrossEfficientAdditiveAttention`` (and the inputs),
    written by hand: the converter ``load_crocnet_state_dict`` is what the tests check."""
    names = {f"input{s}": f"input{s}" for s in range(streams)}
    for s, st in enumerate(STREAMS):
        for p in ("weight", "bias"):
            names[f"to_query_{st}.{p}"] = f"to_query.{s}.{p}"
            names[f"to_key_{st}.{p}"] = f"to_key.{s}.{p}"
            names[f"final_{st}.{p}"] = f"final.{s}.{p}"
            for t in range(3):
                names[f"Proj_{st}{t + 1}.{p}"] = f"proj.{s}.{t}.{p}"
        names[f"w_g_{st}"] = f"w_g.{s}"
    return names


def grads(module: nn.Module, inputs) -> dict[str, torch.Tensor]:
    """Gradients of every parameter (by name) and of every input (``input{i}``)."""
    out = {name: p.grad for name, p in module.named_parameters()}
    out.update({f"input{i}": x.grad for i, x in enumerate(inputs)})
    return out
