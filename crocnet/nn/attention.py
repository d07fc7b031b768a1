"""Efficient additive attention modules (SwiftFormer E2A), drop-in compatible with timm's."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules import module as _module

from ..arguments import positive_int
from ..ops import e2a
from ..ops._checks import AUTOCAST_CASTS, BACKENDS, autocast_dtype, resolve_backend
from ..ops.e2a import folded_tokens_kernels, single_stream_kernels, tokens_kernels
from ..ops.naive import TOKEN_NORMS

#: epsilon of every norm, F.normalize's default (as timm)
EPS = 1e-12


_LINEAR_FORWARD = nn.Linear.forward


def _has_hooks(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks)


def _not_readable(m: nn.Module) -> bool:
    """A forward other than ``nn.Linear``'s, or hooks of its own: reading weight and bias would skip them."""
    return type(m).forward is not _LINEAR_FORWARD or _has_hooks(m)


def must_call(*modules: nn.Module) -> bool:
    """Whether the kernels must call any of ``modules`` rather than read it as a linear's ``weight`` and
    ``bias``: a forward of its own (a LoRA adapter, a quantised or wrapped linear, any other module) or
    hooks, its own or global, that would not fire otherwise (``torch.nn.utils.weight_norm``'s among them). A
    ``torch.nn.utils.parametrize`` parametrization needs no call: reading ``weight`` applies it."""
    if (_module._global_forward_hooks or _module._global_forward_pre_hooks or _module._global_backward_hooks
            or _module._global_backward_pre_hooks):
        return True
    for m in modules:
        if _not_readable(m):
            return True
    return False


def check_proj(*projs: nn.Module) -> None:
    """The key interaction's ``proj`` enters the attention op as its weight and bias, on both backends: raise a
    ``TypeError`` for one that would have to be called (see :func:`must_call`; global hooks aside)."""
    for proj in projs:
        if _not_readable(proj):
            raise TypeError(
                f"proj enters the attention op as its weight and bias, so it must be an nn.Linear without a forward "
                f"of its own or hooks (a torch.nn.utils.parametrize parametrization works); got "
                f"{type(proj).__name__}{' with hooks' if _has_hooks(proj) else ''}"
            )


def folds_final(module: nn.Module, *finals: nn.Module) -> bool:
    """Whether an E2A module's Triton path folds ``final`` (its ``finals``) into the kernels on this call:
    ``fuse_qk`` and ``fold_final`` set, one head, grad mode off (inference), and each of ``finals`` a linear
    the kernels may read (:func:`must_call`)."""
    return (module.fuse_qk and module.fold_final and module.num_heads == 1 and not torch.is_grad_enabled()
            and not must_call(*finals))


def check_input_dtype(x: torch.Tensor, weight: torch.Tensor, what: str) -> None:
    """Raise a ``TypeError`` unless ``x`` is floating point and, outside autocast, of the parameters' dtype."""
    if not x.is_floating_point():
        raise TypeError(f"{what} must be a floating-point tensor, got {x.dtype}")
    autocast = autocast_dtype(x) is not None
    if x.dtype == weight.dtype or autocast and {x.dtype, weight.dtype} <= set(AUTOCAST_CASTS):
        return
    where = "(autocast casts only float16, bfloat16 and float32)" if autocast else "(outside autocast)"
    raise TypeError(
        f"{what} must have the parameters' dtype {weight.dtype} {where}, got {x.dtype}; "
        f"cast the input or the module (.to({x.dtype})), or run under torch.autocast"
    )


def _rename_official_proj(state_dict, prefix):
    """The official SwiftFormer checkpoints name the projection ``Proj``; timm and we use ``proj``."""
    for suffix in ("weight", "bias"):
        old = f"{prefix}Proj.{suffix}"
        if old in state_dict and f"{prefix}proj.{suffix}" not in state_dict:
            state_dict[f"{prefix}proj.{suffix}"] = state_dict.pop(old)


class EfficientAdditiveAttention(nn.Module):
    """E2A on tokens ``(B, N, in_dims)`` → ``(B, N, token_dim)`` (the SwiftFormer / CroCNet form).

    ``out = final(proj(G ⊙ k̂) + q̂)`` with ``q = to_query(x)``, ``k = to_key(x)`` and the global query
    ``G = Σ_n â_n q̂_n`` (see :func:`crocnet.ops.e2a`). Parameters ``to_query, to_key, w_g, proj, final``
    match timm's ``EfficientAdditiveAttention`` so its state dicts load unchanged; the official
    SwiftFormer key ``Proj`` is accepted too.

    Args:
        in_dims: input channels C.
        token_dim: width of the output; the attention width is ``D = token_dim * num_heads``.
        num_heads: multiplies the attention width (as in timm; there is no per-head split).
        token_norm: ``"l2"`` (SwiftFormer), ``"softmax"`` (Fastformer) or ``"none"`` (the original release).
        backend: ``"auto"`` (Triton on CUDA, PyTorch elsewhere), ``"triton"`` or ``"torch"``.
        device, dtype: of the parameters, as for ``nn.Linear``.
        fuse_qk: where the Triton kernels run, compute ``to_query`` and ``to_key`` as one GEMM (without
            bias) into a packed ``qk (B, N, 2D)`` that the kernels read in place, adding the biases as they
            load it (:func:`crocnet.ops.e2a_packed`): x is read once, no pass adds the bias, and the backward
            is one GEMM on one ``dqk``. False: two linears, as timm. The PyTorch backend always uses two
            (timm's numbers to the bit).
        recompute_qk: with ``fuse_qk`` on the Triton path, make qk again in the backward instead of keeping it
            for it: 2 BND less activation memory (about 5 → 3 BND for the module with its output, against
            timm's 9) for one more GEMM (3 BND of traffic); for one stream at D ≤ 128 in bf16/fp16 neither the
            forward nor the backward writes qk at all (the kernels make q and k from the tokens), also
            under ``torch.compile``; elsewhere ``torch.compile`` keeps qk either way.
        fold_final: with ``fuse_qk`` on the Triton path, at inference (grad mode off: ``torch.no_grad`` or
            ``torch.inference_mode``) and ``num_heads=1``, fold ``final`` into the key interaction's GEMM
            (:func:`crocnet.ops.e2a.folded_tokens_kernels`): the kernel writes the module's output, and the
            attention output before ``final`` never reaches memory (2 BND of the forward's 9). False: the
            linear separately, as in training.

    The kernels read ``to_query``, ``to_key`` and ``final`` as weight and bias only where calling them would
    do the same: one with a forward of its own (an adapter) or hooks is called, as on the PyTorch path.
    ``proj`` enters the op as its weight and bias on both paths, so it must be a plain ``nn.Linear``
    (``torch.nn.utils.parametrize`` works). Second derivatives (``create_graph=True``) are exact on both.
    """

    def __init__(
        self,
        in_dims: int = 512,
        token_dim: int = 256,
        num_heads: int = 1,
        token_norm: str = "l2",
        backend: str = "auto",
        device=None,
        dtype=None,
        fuse_qk: bool = True,
        recompute_qk: bool = True,
        fold_final: bool = True,
    ):
        super().__init__()
        positive_int(type(self).__name__, in_dims=in_dims, token_dim=token_dim, num_heads=num_heads)
        if token_norm not in TOKEN_NORMS:
            raise ValueError(f"token_norm must be one of {TOKEN_NORMS}, got {token_norm!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        dd = {"device": device, "dtype": dtype}
        dim = token_dim * num_heads
        self.in_dims, self.token_dim, self.num_heads = in_dims, token_dim, num_heads
        self.token_norm, self.backend, self.fuse_qk, self.recompute_qk = token_norm, backend, bool(fuse_qk), bool(recompute_qk)
        self.fold_final = bool(fold_final)
        self.scale_factor = token_dim**-0.5
        self.to_query = nn.Linear(in_dims, dim, **dd)
        self.to_key = nn.Linear(in_dims, dim, **dd)
        self.w_g = nn.Parameter(torch.randn(dim, 1, **dd))
        self.proj = nn.Linear(dim, dim, **dd)
        self.final = nn.Linear(dim, token_dim, **dd)
        self._register_load_state_dict_pre_hook(self._load_hook)

    @staticmethod
    def _load_hook(state_dict, prefix, *args, **kwargs):
        _rename_official_proj(state_dict, prefix)

    def extra_repr(self) -> str:
        return (
            f"in_dims={self.in_dims}, token_dim={self.token_dim}, num_heads={self.num_heads}, "
            f"token_norm={self.token_norm!r}, backend={self.backend!r}, fuse_qk={self.fuse_qk}, recompute_qk={self.recompute_qk}, "
            f"fold_final={self.fold_final}"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected tokens as a tensor (B, N, {self.in_dims}), got {type(x).__name__}")
        if x.dim() != 3 or x.shape[-1] != self.in_dims:
            raise ValueError(f"expected tokens of shape (B, N, {self.in_dims}), got {tuple(x.shape)}")
        if 0 in x.shape:
            raise ValueError(f"tokens must be non-empty in every axis (batch, tokens, {self.in_dims}), got {tuple(x.shape)}")
        check_input_dtype(x, self.w_g, "tokens")
        query, key, proj = self.to_query, self.to_key, self.proj
        check_proj(proj)
        backend = resolve_backend(self.backend, x, dim=self.proj.in_features)
        called = must_call(query, key)
        if backend == "torch" or called:  # the linears called as modules; the checked op where they may not fit
            y = e2a(query(x), key(x), self.w_g, proj.weight, proj.bias, scale=self.scale_factor,
                    token_norm=self.token_norm, eps=EPS, backend=backend)
            return self.final(y)
        # the kernels without the public ops' checks: the parameters fit by construction, x is checked above
        if self.fuse_qk:  # one GEMM for q and k inside the op, their bias added in the kernels
            params = [x], [query.weight, key.weight], [query.bias, key.bias], [self.w_g], [proj.weight], [proj.bias]
            if folds_final(self, self.final):
                return folded_tokens_kernels(*params, [self.final.weight], [self.final.bias], self.scale_factor,
                                             self.token_norm, EPS)
            y = tokens_kernels(*params, self.scale_factor, self.token_norm, EPS, keep_qk=not self.recompute_qk)
        else:
            y = single_stream_kernels(query(x), key(x), self.w_g, proj.weight, proj.bias, self.scale_factor,
                                      self.token_norm, EPS)
        return self.final(y)


class EfficientAdditiveAttention2d(EfficientAdditiveAttention):
    """E2A on feature maps ``(B, in_dims, H, W)`` → ``(B, token_dim, H, W)``: timm's form, same parameters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected a feature map as a tensor (B, {self.in_dims}, H, W), got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != self.in_dims:
            raise ValueError(f"expected a feature map of shape (B, {self.in_dims}, H, W), got {tuple(x.shape)}")
        B, _, H, W = x.shape
        out = super().forward(x.flatten(2).transpose(1, 2))
        return out.transpose(1, 2).reshape(B, -1, H, W)
