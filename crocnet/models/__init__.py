"""Networks: E-2AUNet (stage 1), the specialist networks (stage 2), the CroCNet pipeline, the baselines.

Importing this package registers ``e2aunet``, ``e2aunet_mhsa``, ``e2aunet_noattn``, ``crocnet_specialists``
and ``crocnet_single`` with timm (:mod:`crocnet.models.registry`).
"""

from ..nn.cross_attention import CROCNET_STREAMS
from . import registry
from .baselines import MHSABlock2d, MultiHeadSelfAttention
from .e2aunet import STAGE1_CHANNELS, DecoderStage, E2AUNet, EncoderStage, attention_block
from .ensemble import MeanEnsemble
from .pipeline import (
    CroCNet,
    CroCNetOutput,
    STAGE1_TARGET_FILL,
    label_masks,
    merge_binary_maps,
    stage1_targets,
    stage1_to_labels,
    stage2_inputs,
)
from .smp import add_e2a_to_smp_unet
from .specialists import SpecialistNets
from .tta import FlipTTA

MODEL_NAMES = ("e2aunet", "e2aunet_mhsa", "e2aunet_noattn", "crocnet_specialists", "crocnet_single")

__all__ = [
    "E2AUNet",
    "EncoderStage",
    "DecoderStage",
    "attention_block",
    "STAGE1_CHANNELS",
    "SpecialistNets",
    "CROCNET_STREAMS",
    "CroCNet",
    "CroCNetOutput",
    "stage1_to_labels",
    "stage1_targets",
    "STAGE1_TARGET_FILL",
    "stage2_inputs",
    "label_masks",
    "merge_binary_maps",
    "FlipTTA",
    "MeanEnsemble",
    "MultiHeadSelfAttention",
    "MHSABlock2d",
    "add_e2a_to_smp_unet",
    "registry",
    "MODEL_NAMES",
]
