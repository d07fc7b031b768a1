"""Cross efficient additive attention: CroCNet's coupling of S specialist streams (LV, MYO, RV)."""

from __future__ import annotations

import torch
from torch import nn

from ..ops import cross_e2a, cross_e2a_streams
from ..ops._checks import BACKENDS, resolve_backend
from ..ops.e2a import folded_tokens_kernels, tokens_kernels
from ..ops.naive import TOKEN_NORMS
from ..arguments import positive_int
from .attention import EPS, check_input_dtype, check_proj, folds_final, must_call

#: Stream names of the authors' ``X_EfficientAdditiveAttnetion``, in their order.
CROCNET_STREAMS = ("lv", "myo", "rv")


class CrossEfficientAdditiveAttention(nn.Module):
    """Cross-E2A over S token streams, each ``(B, N, in_dims)``; returns S tensors ``(B, N, token_dim)``.

    ``out_s = final_s(Σ_t proj[s][t](G_s ⊙ k̂_t) + q̂_s)``: stream s pools its own global query ``G_s`` and
    reads the keys of every stream through its own projection per pair (DESIGN.md §1).

    Parameters per stream: ``to_query[s]``, ``to_key[s]``, ``w_g[s]``, ``final[s]``; per pair ``proj[s][t]``.
    The authors' code applies ``final_myo`` to the RV stream (``final_rv`` is unused); ``authors_final_bug=True``
    reproduces that (S = 3 only) so their checkpoints give their outputs.

    Args:
        in_dims: input channels C of every stream.
        token_dim: width of the outputs; the attention width is ``D = token_dim * num_heads``.
        streams: number of coupled streams S (CroCNet: 3, LV, MYO, RV).
        num_heads: multiplies the attention width (as in timm; there is no per-head split).
        token_norm: ``"l2"`` (SwiftFormer), ``"softmax"`` (Fastformer) or ``"none"``.
        backend: ``"auto"`` (Triton on CUDA, PyTorch elsewhere), ``"triton"`` or ``"torch"``.
        authors_final_bug: apply ``final[1]`` to stream 2, as the authors' code does (S = 3 only).
        device, dtype: where and in which dtype to create the parameters.
        fuse_qk: where the Triton kernels run, each stream's ``to_query`` and ``to_key`` are one GEMM (the
            biases added in the kernels) into a packed qk (:func:`crocnet.ops.cross_e2a_packed`); False: two
            linears per stream.
        recompute_qk: with ``fuse_qk`` on the Triton path, make the streams' qk again in the backward instead
            of keeping it: 2 BND a stream less activation memory (about 15 → 9 BND with the outputs, against
            the authors' 30) for one more GEMM a stream. ``torch.compile`` keeps qk either way (one stream at D ≤
            128 in bf16/fp16 aside: its kernels make q and k from the tokens, eager or compiled).
        fold_final: with ``fuse_qk`` on the Triton path, at inference (grad mode off) and ``num_heads=1``,
            fold each stream's ``final`` into the key interaction's GEMM (2 BND a stream less traffic).
    """

    def __init__(
        self,
        in_dims: int,
        token_dim: int,
        streams: int = 3,
        num_heads: int = 1,
        token_norm: str = "l2",
        backend: str = "auto",
        authors_final_bug: bool = False,
        device=None,
        dtype=None,
        fuse_qk: bool = True,
        recompute_qk: bool = True,
        fold_final: bool = True,
    ):
        super().__init__()
        positive_int(type(self).__name__, in_dims=in_dims, token_dim=token_dim, streams=streams, num_heads=num_heads)
        if token_norm not in TOKEN_NORMS:
            raise ValueError(f"token_norm must be one of {TOKEN_NORMS}, got {token_norm!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if authors_final_bug and streams != 3:
            raise ValueError(f"authors_final_bug reproduces the 3-stream (lv, myo, rv) code; got streams={streams}")
        dim = token_dim * num_heads
        self.in_dims, self.token_dim, self.num_heads, self.streams = in_dims, token_dim, num_heads, streams
        self.token_norm, self.backend, self.authors_final_bug = token_norm, backend, authors_final_bug
        self.fuse_qk, self.recompute_qk, self.fold_final = bool(fuse_qk), bool(recompute_qk), bool(fold_final)
        self.scale_factor = token_dim**-0.5
        dd = {"device": device, "dtype": dtype}
        self.to_query = nn.ModuleList(nn.Linear(in_dims, dim, **dd) for _ in range(streams))
        self.to_key = nn.ModuleList(nn.Linear(in_dims, dim, **dd) for _ in range(streams))
        self.w_g = nn.ParameterList(nn.Parameter(torch.randn(dim, 1, **dd)) for _ in range(streams))
        self.proj = nn.ModuleList(nn.ModuleList(nn.Linear(dim, dim, **dd) for _ in range(streams)) for _ in range(streams))
        self.final = nn.ModuleList(nn.Linear(dim, token_dim, **dd) for _ in range(streams))

    def extra_repr(self) -> str:
        return (
            f"in_dims={self.in_dims}, token_dim={self.token_dim}, streams={self.streams}, num_heads={self.num_heads}, "
            f"token_norm={self.token_norm!r}, backend={self.backend!r}, authors_final_bug={self.authors_final_bug}, "
            f"fuse_qk={self.fuse_qk}, recompute_qk={self.recompute_qk}, fold_final={self.fold_final}"
        )

    def final_for(self, s: int) -> nn.Linear:
        if self.authors_final_bug and s == 2:
            return self.final[1]
        return self.final[s]

    def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if len(xs) != self.streams:
            raise ValueError(f"expected {self.streams} streams, got {len(xs)}")
        for s, x in enumerate(xs):
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"streams must be tensors (B, N, {self.in_dims}), got {type(x).__name__} for stream {s}")
        shape = xs[0].shape
        if len(shape) != 3 or shape[-1] != self.in_dims:
            raise ValueError(f"expected streams of shape (B, N, {self.in_dims}), got {tuple(shape)} for stream 0")
        for s, x in enumerate(xs[1:], start=1):
            if x.shape != shape:
                raise ValueError(f"every stream must have the shape of stream 0 {tuple(shape)}, got {tuple(x.shape)} for stream {s}")
        if 0 in shape:
            raise ValueError(f"streams must be non-empty in every axis (batch, tokens, {self.in_dims}), got {tuple(shape)}")
        for s, x in enumerate(xs):
            if not x.is_floating_point():
                raise TypeError(f"streams must be floating-point tensors, got {x.dtype} for stream {s}")
            check_input_dtype(x, self.w_g[s], f"stream {s}")
        projs = [p for row in self.proj for p in row]
        check_proj(*projs)
        kernels = resolve_backend(self.backend, xs[0], dim=projs[0].in_features) == "triton"
        options = {"scale": self.scale_factor, "token_norm": self.token_norm, "backend": self.backend}
        if kernels:
            # linears read as weight and bias unless they must be called (an adapter, hooks: must_call)
            read = not must_call(*self.to_query, *self.to_key)
            pairs = list(zip(self.to_query, self.to_key))
            groups = ([w for q, k in pairs for w in (q.weight, k.weight)] if read else None,
                      [b for q, k in pairs for b in (q.bias, k.bias)] if read else None,
                      list(self.w_g), [p.weight for p in projs], [p.bias for p in projs])
            finals = [self.final_for(s) for s in range(self.streams)]
            if read and folds_final(self, *finals):
                y = folded_tokens_kernels(xs, *groups, [f.weight for f in finals], [f.bias for f in finals],
                                          self.scale_factor, self.token_norm, EPS)
                return (y,) if self.streams == 1 else tuple(y.unbind(0))  # one stream: (B, N, D), as e2a
            if self.fuse_qk and read:
                # one GEMM a stream for q and k inside the op (their bias added in the kernels), made again in the
                # backward unless kept; the parameters go in one tensor each (stacked inside, without autograd
                # nodes) and fit by construction: no op checks
                y = tokens_kernels(xs, *groups, self.scale_factor, self.token_norm, EPS, keep_qk=not self.recompute_qk)
                y = y[None] if self.streams == 1 else y
            else:  # the linears called; the checked op
                S, D = self.streams, projs[0].in_features
                w_g = torch.cat(groups[2]).view(S, D)
                proj_weight, proj_bias = torch.cat(groups[3]).view(S, S, D, D), torch.cat(groups[4]).view(S, S, D)
                qs = torch.stack([lin(x) for lin, x in zip(self.to_query, xs)])
                ks = torch.stack([lin(x) for lin, x in zip(self.to_key, xs)])
                y = cross_e2a(qs, ks, w_g, proj_weight, proj_bias, **options)
            return tuple(self.final_for(s)(y_s) for s, y_s in enumerate(y.unbind(0)))
        # the PyTorch path: per stream, nothing stacked
        qs = [lin(x) for lin, x in zip(self.to_query, xs)]
        ks = [lin(x) for lin, x in zip(self.to_key, xs)]
        ys = cross_e2a_streams(qs, ks, [w.reshape(-1) for w in self.w_g], [[p.weight for p in row] for row in self.proj],
                               [[p.bias for p in row] for row in self.proj], self.scale_factor, self.token_norm)
        return tuple(self.final_for(s)(y_s) for s, y_s in enumerate(ys))

    def load_crocnet_state_dict(self, state_dict: dict, strict: bool = True):
        """Load the authors' ``X_EfficientAdditiveAttnetion`` weights (keys ``to_query_lv``, ``Proj_lv1``, ...).

        Stream order is (lv, myo, rv); ``Proj_{s}1/2/3`` act on the keys of lv/myo/rv. Returns the
        ``load_state_dict`` result of the converted dict.
        """
        if self.streams != 3:
            raise ValueError(f"the authors' cross attention has 3 streams (lv, myo, rv); this module has {self.streams}")
        return self.load_state_dict(convert_crocnet_cross_attention(state_dict), strict=strict)


def convert_crocnet_cross_attention(state_dict: dict, prefix: str = "") -> dict:
    """Map the authors' cross-attention keys onto ours (``to_query_myo.weight`` → ``to_query.1.weight``, ...)."""
    out = {}
    for s, name in enumerate(CROCNET_STREAMS):
        for ours, theirs in (("to_query", "to_query"), ("to_key", "to_key"), ("final", "final")):
            for p in ("weight", "bias"):
                key = f"{prefix}{theirs}_{name}.{p}"
                if key not in state_dict:
                    raise KeyError(f"missing authors' key {key!r} in the cross-attention state dict")
                out[f"{ours}.{s}.{p}"] = state_dict[key]
        key = f"{prefix}w_g_{name}"
        if key not in state_dict:
            raise KeyError(f"missing authors' key {key!r} in the cross-attention state dict")
        out[f"w_g.{s}"] = state_dict[key]
        for t in range(3):
            for p in ("weight", "bias"):
                key = f"{prefix}Proj_{name}{t + 1}.{p}"
                if key not in state_dict:
                    raise KeyError(f"missing authors' key {key!r} in the cross-attention state dict")
                out[f"proj.{s}.{t}.{p}"] = state_dict[key]
    return out
