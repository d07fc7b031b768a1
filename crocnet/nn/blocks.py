"""2D blocks built on E2A: the SwiftFormer-style block, the CroCNet cross block, and a drop-in layer."""

from __future__ import annotations

import math
import numbers
from typing import Callable

import torch
from timm.layers import DropPath, trunc_normal_
from torch import nn

from ..arguments import is_rate, positive_int
from .attention import EfficientAdditiveAttention, EfficientAdditiveAttention2d, check_input_dtype
from .cross_attention import CROCNET_STREAMS, CrossEfficientAdditiveAttention, convert_crocnet_cross_attention


def _layer_scale(dim: int, value: float) -> nn.Parameter:
    return nn.Parameter(value * torch.ones(dim, 1, 1))


def _drop_path(rate: float) -> nn.Module:
    return DropPath(rate) if rate > 0.0 else nn.Identity()


def check_block_args(owner: str, dim: int, mlp_ratio: float, drop_path: float) -> int:
    """Raise a ``ValueError`` for a bad width, MLP ratio or drop-path rate; return the MLP's hidden width."""
    positive_int(owner, dim=dim)
    if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, numbers.Real) or not 1 <= dim * mlp_ratio < math.inf:
        raise ValueError(
            f"{owner}: mlp_ratio must be a number with int(dim · mlp_ratio) >= 1 (dim = {dim}), got {mlp_ratio!r}"
        )
    if not is_rate(drop_path):
        raise ValueError(f"{owner}: drop_path must be a rate in [0, 1), got {drop_path!r}")
    return int(dim * mlp_ratio)


class ConvMlp2d(nn.Module):
    """BatchNorm → 1×1 conv → GELU → 1×1 conv (SwiftFormer's and CroCNet's ``Mlp``): ``(B, dim, H, W)`` →
    ``(B, dim, H, W)`` through ``hidden_dim`` channels (default ``dim``)."""

    def __init__(self, dim: int, hidden_dim: int | None = None, drop: float = 0.0):
        super().__init__()
        hidden_dim = hidden_dim or dim
        self.norm = nn.BatchNorm2d(dim)
        self.fc1 = nn.Conv2d(dim, hidden_dim, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden_dim, dim, 1)
        self.drop = nn.Dropout(drop)
        for conv in (self.fc1, self.fc2):
            trunc_normal_(conv.weight, std=0.02)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(self.norm(x))))))


class LocalRepresentation2d(nn.Module):
    """SwiftFormer's local representation on ``(B, dim, H, W)`` (same shape out):
    ``x + drop_path(γ · pw₂(GELU(pw₁(BN(dwconv(x))))))`` with a per-channel scale γ (init 1)."""

    def __init__(self, dim: int, kernel_size: int = 3, drop_path: float = 0.0):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.BatchNorm2d(dim)
        self.pwconv1 = nn.Conv2d(dim, dim, 1)
        self.act = nn.GELU()
        self.pwconv2 = nn.Conv2d(dim, dim, 1)
        self.drop_path = _drop_path(drop_path)
        self.layer_scale = _layer_scale(dim, 1.0)
        for conv in (self.dwconv, self.pwconv1, self.pwconv2):
            trunc_normal_(conv.weight, std=0.02)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pwconv2(self.act(self.pwconv1(self.norm(self.dwconv(x)))))
        return x + self.drop_path(self.layer_scale * y)


class TokenMixerBlock2d(nn.Module):
    """SwiftFormer's encoder block around a token mixer ``(B, N, dim) → (B, N, dim)``, on ``(B, dim, H, W)``:
    local representation, then ``x + drop_path(γ₁ · mixer(x))`` and ``x + drop_path(γ₂ · MLP(x))`` with layer
    scales γ. The base of :class:`E2ABlock2d` and the MHSA baseline's block; ``make_mixer`` builds the mixer
    (``attn``) between the local representation and the MLP, so every mixer draws its initial weights at the
    same point of the random stream.
    """

    def __init__(
        self,
        dim: int,
        make_mixer: Callable[[], nn.Module],
        mlp_ratio: float = 4.0,
        drop: float = 0.0,
        drop_path: float = 0.0,
        layer_scale_init_value: float = 1e-5,
    ):
        super().__init__()
        hidden = check_block_args(type(self).__name__, dim, mlp_ratio, drop_path)
        self.local_representation = LocalRepresentation2d(dim, drop_path=0.0)
        self.attn = make_mixer()
        self.mlp = ConvMlp2d(dim, hidden, drop=drop)
        self.drop_path = _drop_path(drop_path)
        self.layer_scale_1 = _layer_scale(dim, layer_scale_init_value)
        self.layer_scale_2 = _layer_scale(dim, layer_scale_init_value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dim = self.layer_scale_1.shape[0]
        if x.dim() != 4 or x.shape[1] != dim:
            raise ValueError(f"expected a feature map of shape (B, {dim}, H, W), got {tuple(x.shape)}")
        check_input_dtype(x, self.layer_scale_1, "the feature map")
        x = self.local_representation(x)
        B, C, H, W = x.shape
        attn = self.attn(x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(B, C, H, W)
        x = x + self.drop_path(self.layer_scale_1 * attn)
        return x + self.drop_path(self.layer_scale_2 * self.mlp(x))


class E2ABlock2d(TokenMixerBlock2d):
    """SwiftFormer encoder block on ``(B, dim, H, W)``: local representation, then
    ``x + drop_path(γ₁ · E2A(x))`` and ``x + drop_path(γ₂ · MLP(x))`` with layer scales γ (init 1e-5).

    Args:
        dim: channels of the feature map (and the attention width).
        mlp_ratio: hidden width of the MLP, as a multiple of ``dim``.
        drop, drop_path: dropout in the MLP and stochastic-depth rate of both residual branches.
        layer_scale_init_value: initial γ₁ and γ₂.
        token_norm, backend: of the :class:`EfficientAdditiveAttention` inside.
    """

    def __init__(
        self,
        dim: int,
        mlp_ratio: float = 4.0,
        drop: float = 0.0,
        drop_path: float = 0.0,
        layer_scale_init_value: float = 1e-5,
        token_norm: str = "l2",
        backend: str = "auto",
    ):
        def make_mixer():
            return EfficientAdditiveAttention(dim, dim, token_norm=token_norm, backend=backend)

        super().__init__(dim, make_mixer, mlp_ratio, drop, drop_path, layer_scale_init_value)


class CrossE2ABlock2d(nn.Module):
    """CroCNet's cross block on S feature maps ``(B, dim, H, W)`` (the authors' ``My_NetXd``).

    Per stream s: ``x_s + drop_path(γ₁ₛ · cross_attn(x)_s)``, then ``x_s + drop_path(γ₂ₛ · MLP_s(x_s))``.
    """

    def __init__(
        self,
        dim: int,
        streams: int = 3,
        mlp_ratio: float = 4.0,
        drop: float = 0.0,
        drop_path: float = 0.0,
        layer_scale_init_value: float = 1e-5,
        token_norm: str = "l2",
        backend: str = "auto",
        authors_final_bug: bool = False,
    ):
        super().__init__()
        hidden = check_block_args(type(self).__name__, dim, mlp_ratio, drop_path)
        positive_int(type(self).__name__, streams=streams)
        self.streams = streams
        self.attn = CrossEfficientAdditiveAttention(
            dim, dim, streams=streams, token_norm=token_norm, backend=backend, authors_final_bug=authors_final_bug
        )
        self.mlp = nn.ModuleList(ConvMlp2d(dim, hidden, drop=drop) for _ in range(streams))
        self.layer_scale_1 = nn.ParameterList(_layer_scale(dim, layer_scale_init_value) for _ in range(streams))
        self.layer_scale_2 = nn.ParameterList(_layer_scale(dim, layer_scale_init_value) for _ in range(streams))
        self.drop_path = _drop_path(drop_path)

    def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if len(xs) != self.streams:
            raise ValueError(f"expected {self.streams} streams, got {len(xs)}")
        dim = self.layer_scale_1[0].shape[0]
        if xs[0].dim() != 4 or xs[0].shape[1] != dim:
            raise ValueError(f"expected feature maps of shape (B, {dim}, H, W), got {tuple(xs[0].shape)} for stream 0")
        B, C, H, W = xs[0].shape
        for s, x in enumerate(xs):
            if x.shape != xs[0].shape:
                raise ValueError(f"every stream must have the shape of stream 0 {tuple(xs[0].shape)}, got {tuple(x.shape)} for stream {s}")
            check_input_dtype(x, self.layer_scale_1[s], f"stream {s}")
        tokens = [x.flatten(2).transpose(1, 2) for x in xs]
        attn = self.attn(*tokens)
        out = []
        for s, x in enumerate(xs):
            x = x + self.drop_path(self.layer_scale_1[s] * attn[s].transpose(1, 2).reshape(B, C, H, W))
            out.append(x + self.drop_path(self.layer_scale_2[s] * self.mlp[s](x)))
        return tuple(out)

    def load_crocnet_state_dict(self, state_dict: dict, strict: bool = True):
        """Load the authors' ``My_NetXd`` weights (``attn_X.*``, ``layer_scale_1_lv``, ``linear_2d_lv.*``, ...)."""
        if self.streams != 3:
            raise ValueError(f"the authors' cross block has 3 streams (lv, myo, rv); this block has {self.streams}")
        out = {f"attn.{k}": v for k, v in convert_crocnet_cross_attention(state_dict, prefix="attn_X.").items()}
        for s, name in enumerate(CROCNET_STREAMS):
            out[f"layer_scale_1.{s}"] = state_dict[f"layer_scale_1_{name}"]
            out[f"layer_scale_2.{s}"] = state_dict[f"layer_scale_2_{name}"]
            for ours, theirs in (("norm", "norm1"), ("fc1", "fc1"), ("fc2", "fc2")):
                for key, value in state_dict.items():
                    head = f"linear_2d_{name}.{theirs}."
                    if key.startswith(head):
                        out[f"mlp.{s}.{ours}.{key[len(head):]}"] = value
        return self.load_state_dict(out, strict=strict)


class E2A2d(nn.Module):
    """Residual E2A layer for any ``(B, C, H, W)`` network: ``x + γ · E2A(x)``, γ initialised small so an
    inserted layer starts as (almost) the identity and a pretrained network keeps its behaviour."""

    def __init__(self, channels: int, token_norm: str = "l2", backend: str = "auto", layer_scale_init_value: float = 1e-5):
        super().__init__()
        positive_int(type(self).__name__, channels=channels)
        self.attn = EfficientAdditiveAttention2d(channels, channels, token_norm=token_norm, backend=backend)
        self.layer_scale = _layer_scale(channels, layer_scale_init_value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layer_scale * self.attn(x)
