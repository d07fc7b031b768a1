"""Modules: E2A and cross-E2A attention, the 2D blocks built on them, and a drop-in E2A layer."""

from .attention import EfficientAdditiveAttention, EfficientAdditiveAttention2d
from .blocks import ConvMlp2d, CrossE2ABlock2d, E2A2d, E2ABlock2d, LocalRepresentation2d, TokenMixerBlock2d
from .cross_attention import CrossEfficientAdditiveAttention, convert_crocnet_cross_attention

__all__ = [
    "EfficientAdditiveAttention",
    "EfficientAdditiveAttention2d",
    "CrossEfficientAdditiveAttention",
    "convert_crocnet_cross_attention",
    "E2ABlock2d",
    "TokenMixerBlock2d",
    "CrossE2ABlock2d",
    "E2A2d",
    "ConvMlp2d",
    "LocalRepresentation2d",
]
