"""timm registration: ``import crocnet.models`` makes ``timm.create_model(name, **kwargs)`` build these.

=======================  ==========================================================================
``e2aunet``              :class:`E2AUNet`, stage 1: 1 → 4 channels (LV, MYO, RV, background), C = 32
``e2aunet_mhsa``         the same U-Net with MHSA in the place of E2A (baseline)
``e2aunet_noattn``       the same U-Net without attention blocks (baseline)
``crocnet_specialists``  :class:`SpecialistNets`, stage 2: image + 3 masks → 3 maps, C = 16, cross-E2A
``crocnet_single``       stage-2 ablation: one :class:`E2AUNet`, image + 3 masks → 3 maps, C = 16
=======================  ==========================================================================

No weights are published and nothing is ever downloaded. ``pretrained=True`` needs a local file:
``pretrained_file="weights.pth"`` (or ``.safetensors``; a training checkpoint with a ``state_dict`` or
``model`` entry works too, and a crocnet checkpoint's recorded constructor arguments, such as ``base_width``,
are the defaults: the network the file holds is built), or timm's own
``pretrained_cfg_overlay=dict(file=...)``. Loading goes through timm's ``load_pretrained``, told the
checkpoint's own ``num_classes`` and input channels (read from its head and first conv): a model built without ``num_classes`` or ``in_chans`` takes the file's, a checkpoint with the
model's loads whole, one with another ``num_classes`` loads all but the head, and for the E2AUNet models one
with another ``in_chans`` has its first conv adapted.

``features_only=True`` gives the E2AUNet models' encoder maps (timm's ``forward_intermediates``; ``out_indices``
among the ``depth + 1`` levels, full resolution first).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from timm.models import (build_model_with_cfg, generate_default_cfgs, load_state_dict, register_model,
                         resolve_pretrained_cfg)

from .e2aunet import E2AUNet
from .specialists import SpecialistNets

_PAPER = "Crop and Couple: cardiac image segmentation using interlinked specialist networks (ISBI 2024)"


def _cfg(in_chans: int, num_classes: int, size: int, **overrides) -> dict:
    cfg = dict(
        url=None,
        input_size=(in_chans, size, size),
        min_input_size=(in_chans, 16, 16),
        num_classes=num_classes,
        mean=(0.0,) * in_chans,
        std=(1.0,) * in_chans,
        interpolation="bilinear",
        crop_pct=1.0,
        first_conv="stem.conv1",
        classifier="head",
        license="apache-2.0",
        paper_name=_PAPER,
        origin_url="https://github.com/kabbas570/CroCNet",
        notes=("No published weights: pass pretrained_file=<local .pth/.safetensors>. Inputs are z-scored images "
               "(stage 2: the crop and its stage-1 LV, MYO, RV masks).",),
    )
    return {**cfg, **overrides}


default_cfgs = generate_default_cfgs(
    {
        "e2aunet": _cfg(1, 4, 256),
        "e2aunet_mhsa": _cfg(1, 4, 256),
        "e2aunet_noattn": _cfg(1, 4, 256),
        # first_conv=None: the shared stem sees 2 of the 4 input channels, so timm cannot adapt it;
        # classifier=None: the shared head gives each stream's one map, whatever the number of streams
        "crocnet_specialists": _cfg(4, 3, 128, first_conv=None, classifier=None),
        "crocnet_single": _cfg(4, 3, 128),
    }
)


def _create(variant: str, cls: type, pretrained: bool = False, pretrained_file: str | Path | None = None, **kwargs):
    overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
    if pretrained_file is not None:
        if not Path(pretrained_file).is_file():
            raise FileNotFoundError(f"{variant}: pretrained_file {str(pretrained_file)!r} is not a file")
        overlay["file"] = str(pretrained_file)
        pretrained = True
    if pretrained:
        cfg = resolve_pretrained_cfg(variant, kwargs.get("pretrained_cfg"), overlay)
        if not (cfg.file or cfg.state_dict):
            raise RuntimeError(
                f"{variant}: no pretrained weights are published and crocnet never downloads any; pass a local file "
                f"with pretrained_file='weights.pth' (or .safetensors), or use pretrained=False"
            )
        if cfg.file:
            _describe_checkpoint(overlay, cfg)
            kwargs = _with_checkpoint_kwargs(variant, cfg.file, kwargs)
    if kwargs.get("features_only"):
        if cls is not E2AUNet:
            raise ValueError(f"{variant}: features_only is for the E2AUNet models (their encoder maps); "
                             f"{cls.__name__} has none of its own: use its .net's forward_encoder")
        kwargs.setdefault("feature_cfg", dict(feature_cls="getter"))
        kwargs.setdefault("out_indices", tuple(range(kwargs.get("depth", 4) + 1)))  # timm's default assumes 5 levels
    return build_model_with_cfg(cls, variant, pretrained, pretrained_cfg_overlay=overlay, **kwargs)


def _describe_checkpoint(overlay: dict, cfg) -> None:
    """Tell timm the checkpoint's own ``num_classes`` and input channels (from its head and first conv) where
    the overlay does not: timm drops the head, and adapts the first conv, where the model differs from what
    the pretrained cfg declares, which would otherwise be the registry's defaults, not the file's."""
    state_dict = load_state_dict(cfg.file)
    head = state_dict.get(f"{cfg.classifier}.weight") if isinstance(cfg.classifier, str) else None
    if head is not None:
        overlay.setdefault("num_classes", head.shape[0])
    stem = state_dict.get(f"{cfg.first_conv}.weight") if isinstance(cfg.first_conv, str) else None
    if stem is not None and "input_size" not in overlay:
        overlay["input_size"] = (stem.shape[1], *cfg.input_size[1:])


def _crocnet_description(path: str) -> tuple[str | None, dict]:
    """``(model, model_kwargs)`` of a crocnet checkpoint (safetensors metadata, or a ``.pt`` dict's entries);
    ``(None, {})`` for a plain state dict or anything else."""
    try:
        if str(path).endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            model, kwargs = (json.loads(meta[k]) if k in meta else None for k in ("model", "model_kwargs"))
        else:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            model, kwargs = (ckpt.get("model"), ckpt.get("model_kwargs")) if isinstance(ckpt, dict) else (None, None)
    except Exception:  # noqa: BLE001  (unreadable: timm's loader says so)
        return None, {}
    return (model if isinstance(model, str) else None), (kwargs if isinstance(kwargs, dict) else {})


def _with_checkpoint_kwargs(variant: str, path: str, kwargs: dict) -> dict:
    """The constructor arguments a crocnet checkpoint records (``base_width``, ``attention_levels``...) as
    defaults of ``kwargs``, so ``pretrained_file`` builds the network the file holds; a file of another
    registered model, or an argument that contradicts the file, is a ``ValueError`` (``in_chans`` and
    ``num_classes`` excepted: timm adapts the first conv or drops the head for them)."""
    model, recorded = _crocnet_description(path)
    if model is not None and model != variant:
        raise ValueError(f"{variant}: pretrained_file {path!r} holds a checkpoint of {model} ({recorded}); expected "
                         f"{variant}: use timm.create_model({model!r}, pretrained_file=...)")
    same = lambda v: json.loads(json.dumps(v))  # noqa: E731  (tuples as lists, as the file stores them)
    clash = [f"{k}={v!r} (the file: {recorded[k]!r})" for k, v in kwargs.items()
             if k in recorded and k not in ("in_chans", "num_classes") and same(v) != recorded[k]]
    if clash:
        raise ValueError(f"{variant}: pretrained_file {path!r} holds a network built with {recorded}, got "
                         f"{', '.join(clash)}; leave them out to take the file's")
    return {**{k: v for k, v in recorded.items() if k not in ("in_chans", "num_classes")}, **kwargs}


@register_model
def e2aunet(pretrained: bool = False, **kwargs) -> E2AUNet:
    """E-2AUNet (CroCNet stage 1): widths 32 → 512, 4 sigmoid outputs (LV, MYO, RV, background)."""
    return _create("e2aunet", E2AUNet, pretrained, **kwargs)


@register_model
def e2aunet_mhsa(pretrained: bool = False, **kwargs) -> E2AUNet:
    """E-2AUNet with standard multi-head self-attention in the place of E2A (baseline)."""
    return _create("e2aunet_mhsa", E2AUNet, pretrained, **{"attention": "mhsa", **kwargs})


@register_model
def e2aunet_noattn(pretrained: bool = False, **kwargs) -> E2AUNet:
    """E-2AUNet without its attention blocks: a plain convolutional U-Net (baseline)."""
    return _create("e2aunet_noattn", E2AUNet, pretrained, **{"attention": "none", **kwargs})


@register_model
def crocnet_specialists(pretrained: bool = False, **kwargs) -> SpecialistNets:
    """CroCNet stage 2: weight-shared LV-, MYO- and RV-Nets coupled by cross-E2A, widths 16 → 256."""
    streams = kwargs.get("streams", 3)
    kwargs.setdefault("in_chans", 1 + streams)  # the image, then one mask per stream
    num_classes = kwargs.pop("num_classes", streams)
    if num_classes != streams:
        raise ValueError(f"crocnet_specialists gives one map per stream: num_classes must equal streams ({streams})")
    return _create("crocnet_specialists", SpecialistNets, pretrained, kwargs_filter=("num_classes",), **kwargs)


@register_model
def crocnet_single(pretrained: bool = False, **kwargs) -> E2AUNet:
    """Stage-2 ablation (paper Table 2): one network on the crop (image + 3 masks → 3 maps), no cross-E2A."""
    return _create("crocnet_single", E2AUNet, pretrained, **{"base_width": 16, **kwargs})
