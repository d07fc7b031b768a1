"""Swap the fused E2A into timm SwiftFormer models, keeping their weights (Liger-Kernel style patching)."""

from __future__ import annotations

from torch import nn

from .nn.attention import EfficientAdditiveAttention2d

_ORIGINALS = "_crocnet_original_attention"


def _timm_classes():
    from timm.models.swiftformer import EfficientAdditiveAttention, SwiftFormer

    return SwiftFormer, EfficientAdditiveAttention


def patch_timm_swiftformer(model: nn.Module, token_norm: str = "l2", backend: str = "auto") -> list[str]:
    """Replace every timm ``EfficientAdditiveAttention`` inside ``model`` with
    :class:`crocnet.nn.EfficientAdditiveAttention2d`.

    ``model``: a timm SwiftFormer, or any module holding its attention layers: a ``features_only`` backbone,
    a segmentation or detection network built on one, a wrapper. The new modules reuse the original
    parameter tensors (same objects), so outputs, optimizer state and checkpoints are unchanged. Returns the
    qualified names of the replaced modules; patching twice changes nothing the second time.
    :func:`unpatch_timm_swiftformer` puts the originals back. A model without any (never patched) is a
    ``ValueError``.

    Example::

        model = timm.create_model("swiftformer_xs")   # or features_only=True
        crocnet.patch_timm_swiftformer(model)   # ['stages.0.blocks.2.attn', ...]
    """
    _, timm_attention = _timm_classes()
    if not isinstance(model, nn.Module):
        raise TypeError(f"patch_timm_swiftformer expects a torch.nn.Module holding timm SwiftFormer attention, got "
                        f"{type(model).__name__}")
    if isinstance(model, timm_attention):
        raise TypeError("patch_timm_swiftformer replaces the attention layers inside a model, not the one it is given: "
                        "build crocnet.nn.EfficientAdditiveAttention2d and load this one's state_dict into it")
    originals = getattr(model, _ORIGINALS, {})
    changed = []
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if not isinstance(child, timm_attention):
                continue
            token_dim = child.final.out_features
            new = EfficientAdditiveAttention2d(
                in_dims=child.to_query.in_features,
                token_dim=token_dim,
                num_heads=child.to_query.out_features // token_dim,
                token_norm=token_norm,
                backend=backend,
                device="meta",
            )
            new.to_query, new.to_key, new.proj, new.final = child.to_query, child.to_key, child.proj, child.final
            new.w_g = child.w_g
            new.train(child.training)
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            setattr(parent, child_name, new)
            originals[name] = child
            changed.append(name)
    if not changed and not originals:
        raise ValueError(
            f"patch_timm_swiftformer found no timm EfficientAdditiveAttention in {type(model).__name__} (a timm "
            "SwiftFormer has one a stage: swiftformer_xs, _s, _l1, _l3); for other networks use crocnet.nn.E2A2d or "
            "crocnet.nn.EfficientAdditiveAttention2d directly"
        )
    # A plain dict attribute: not a submodule, so state_dict() and parameters() are unaffected.
    object.__setattr__(model, _ORIGINALS, originals)
    return changed


def unpatch_timm_swiftformer(model: nn.Module) -> list[str]:
    """Undo :func:`patch_timm_swiftformer`; returns the names restored (``[]`` for a model never patched)."""
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"unpatch_timm_swiftformer expects a model patched by patch_timm_swiftformer, got {type(model).__name__}"
        )
    originals = getattr(model, _ORIGINALS, {})
    for name in originals:
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child_name, originals[name])
    restored = list(originals)
    object.__setattr__(model, _ORIGINALS, {})
    return restored
