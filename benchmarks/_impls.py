"""The implementations the benchmarks compare, built with shared weights where they compute the same thing."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SDPAttention2d(nn.Module):
    """Multi-head self-attention on a feature map with ``F.scaled_dot_product_attention``: the same
    q/k/v/out projections as ``nn.MultiheadAttention`` (heads of width 32)."""

    def __init__(self, dim: int):
        super().__init__()
        self.heads = max(1, dim // 32)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x):
        B, C, H, W = x.shape
        t = x.flatten(2).transpose(1, 2)
        q, k, v = self.qkv(t).view(B, -1, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, -1, C)
        return self.out(y).transpose(1, 2).reshape(B, C, H, W)


class TorchMHA2d(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.mha = nn.MultiheadAttention(dim, max(1, dim // 32), batch_first=True)

    def forward(self, x):
        B, C, H, W = x.shape
        t = x.flatten(2).transpose(1, 2)
        y, _ = self.mha(t, t, t, need_weights=False)
        return y.transpose(1, 2).reshape(B, C, H, W)

    def load_from_sdpa(self, other: SDPAttention2d):
        with torch.no_grad():
            self.mha.in_proj_weight.copy_(other.qkv.weight)
            self.mha.in_proj_bias.copy_(other.qkv.bias)
            self.mha.out_proj.weight.copy_(other.out.weight)
            self.mha.out_proj.bias.copy_(other.out.bias)


def _compiled(module: nn.Module) -> nn.Module:
    """``torch.compile(module)`` with dynamo's caches emptied first: every case compiles the same ``forward``
    code object again (new shapes, dtypes, grad modes), and past ``recompile_limit`` (8) dynamo would run it
    eagerly under the compiled label (``fail_on_recompile_limit_hit``, set in conftest, makes that an error)."""
    torch._dynamo.reset()
    return torch.compile(module, dynamic=False)


def e2a_module(impl: str, dim: int, reference: nn.Module | None = None) -> nn.Module:
    """``crocnet`` (backend auto), ``crocnet_two_linears`` (the same without packing q and k into one GEMM,
    ``fuse_qk=False``), ``crocnet_keep_qk`` (packed, qk kept for the backward: ``recompute_qk=False``),
    ``crocnet_unfolded`` (``fold_final=False``: at inference the output linear runs apart), ``crocnet_torch``
    (the PyTorch path), ``crocnet_compile`` (``torch.compile`` of ``crocnet``: the custom ops in an Inductor
    graph), ``timm``, ``timm_compile``."""
    from timm.models.swiftformer import EfficientAdditiveAttention

    from crocnet.nn import EfficientAdditiveAttention2d

    ref = reference if reference is not None else EfficientAdditiveAttention(dim, dim)
    if impl in ("crocnet", "crocnet_two_linears", "crocnet_keep_qk", "crocnet_unfolded", "crocnet_torch"):
        m = EfficientAdditiveAttention2d(dim, dim, backend="torch" if impl == "crocnet_torch" else "auto",
                                         fuse_qk=impl != "crocnet_two_linears", recompute_qk=impl != "crocnet_keep_qk",
                                         fold_final=impl != "crocnet_unfolded")
        m.load_state_dict(ref.state_dict())
        return m
    if impl == "crocnet_compile":
        return _compiled(e2a_module("crocnet", dim, ref))
    if impl == "timm":
        return ref
    if impl == "timm_compile":
        return _compiled(ref)
    raise ValueError(impl)


def attention_module(impl: str, dim: int) -> nn.Module:
    return SDPAttention2d(dim) if impl == "sdpa" else TorchMHA2d(dim)


def quadratic(impl: str) -> bool:
    return impl in ("sdpa", "nn_mha")


def rel_err(a, b) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))

