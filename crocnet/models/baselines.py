"""The baseline token mixer: standard multi-head self-attention (MHSA) in the place of E2A.

The baselines of the paper's comparisons are :class:`~crocnet.models.E2AUNet` with ``attention="mhsa"``
(registered as ``e2aunet_mhsa``: every :class:`~crocnet.nn.E2ABlock2d` replaced by :class:`MHSABlock2d`,
identical but for the token mixer) and with ``attention="none"`` (``e2aunet_noattn``: the attention blocks
removed, a plain convolutional U-Net). This module holds the MHSA block they need.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..arguments import positive_int
from ..nn.blocks import TokenMixerBlock2d


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention on tokens ``(B, N, dim)`` → ``(B, N, dim)``.

    ``qkv`` (one ``Linear(dim, 3·dim)``), ``F.scaled_dot_product_attention`` over ``num_heads`` heads of
    width ``dim / num_heads``, then ``proj``. Cost and memory grow as N², which is what E2A avoids.
    """

    def __init__(self, dim: int, num_heads: int = 1, qkv_bias: bool = True):
        super().__init__()
        positive_int(type(self).__name__, dim=dim, num_heads=num_heads)
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(B, N, C))


class MHSABlock2d(TokenMixerBlock2d):
    """:class:`~crocnet.nn.E2ABlock2d` with MHSA as its token mixer, on ``(B, dim, H, W)``.

    Local representation, then ``x + drop_path(γ₁ · MHSA(x))`` and ``x + drop_path(γ₂ · MLP(x))`` with
    layer scales γ; same sub-module names as ``E2ABlock2d`` (``local_representation, attn, mlp,
    layer_scale_1, layer_scale_2``).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 1,
        mlp_ratio: float = 4.0,
        drop: float = 0.0,
        drop_path: float = 0.0,
        layer_scale_init_value: float = 1e-5,
    ):
        def make_mixer():
            return MultiHeadSelfAttention(dim, num_heads)

        super().__init__(dim, make_mixer, mlp_ratio, drop, drop_path, layer_scale_init_value)
