"""Plain convolutional layers of the U-Nets: the 3×3 conv block and the strided down-sampling."""

from __future__ import annotations

import torch
from torch import nn


class ConvBlock2d(nn.Module):
    """Two 3×3 convolutions, each followed by BatchNorm and an activation (ReLU by default).

    ``(B, in_chs, H, W)`` → ``(B, out_chs, H, W)``. ``mid_chs`` is the width after the first conv
    (default ``out_chs``); CroCNet's stem is ``ConvBlock2d(in_chans, C, mid_chs=C // 2)``.
    The convolutions have no bias (BatchNorm follows them).
    """

    def __init__(self, in_chs: int, out_chs: int, mid_chs: int | None = None, act_layer: type[nn.Module] = nn.ReLU):
        super().__init__()
        mid_chs = mid_chs or out_chs
        self.conv1 = nn.Conv2d(in_chs, mid_chs, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_chs)
        self.act1 = act_layer()
        self.conv2 = nn.Conv2d(mid_chs, out_chs, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.act2 = act_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act2(self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x))))))


class Downsample2d(nn.Module):
    """Strided 3×3 convolution + BatchNorm: ``(B, in_chs, H, W)`` → ``(B, out_chs, H/2, W/2)``
    (SwiftFormer's and CroCNet's ``Embedding`` between stages; U-Nets use ``out_chs = 2 · in_chs``)."""

    def __init__(self, in_chs: int, out_chs: int):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))

