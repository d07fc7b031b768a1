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
    parameter tensors (same objects), so outputs, optimizer state and checkpoints are unchanged, and share
    their hooks. A layer that cannot be patched (a parametrized ``w_g``) is a ``TypeError`` before any is
    replaced. Returns the
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
    found = [(parent, child_name, f"{parent_name}.{child_name}" if parent_name else child_name, child)
             for parent_name, parent in list(model.named_modules())
             for child_name, child in list(parent.named_children()) if isinstance(child, timm_attention)]
    # every replacement is built before the first is put in: a layer that cannot be patched leaves the model as it was
    replacements = [_replacement(name, child, token_norm, backend) for _, _, name, child in found]
    for (parent, child_name, name, child), new in zip(found, replacements):
        setattr(parent, child_name, new)
        originals[name] = child
    changed = [name for _, _, name, _ in found]
    if not changed and not originals:
        raise ValueError(
            f"patch_timm_swiftformer found no timm EfficientAdditiveAttention in {type(model).__name__} (a timm "
            "SwiftFormer has one a stage: swiftformer_xs, _s, _l1, _l3); for other networks use crocnet.nn.E2A2d or "
            "crocnet.nn.EfficientAdditiveAttention2d directly"
        )
    # A plain dict attribute: not a submodule, so state_dict() and parameters() are unaffected.
    object.__setattr__(model, _ORIGINALS, originals)
    return changed


_HOOKS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
          "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks", "_is_full_backward_hook")


def _replacement(name: str, child: nn.Module, token_norm: str, backend: str) -> EfficientAdditiveAttention2d:
    """The fused module over ``child``'s own linears and ``w_g``, in its mode, sharing its hooks (the same
    dicts: a hook registered or removed on either is registered or removed on both)."""
    if not isinstance(child._parameters.get("w_g"), nn.Parameter):
        raise TypeError(f"patch_timm_swiftformer: {name}.w_g is not a plain parameter (parametrized?): remove its "
                        f"parametrization first; nothing was patched")
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
    for hooks in _HOOKS:
        if hasattr(child, hooks):
            setattr(new, hooks, getattr(child, hooks))
    return new


def unpatch_timm_swiftformer(model: nn.Module) -> list[str]:
    """Undo :func:`patch_timm_swiftformer`; returns the names restored (``[]`` for a model never patched). The
    restored modules take the weights and mode the model holds now (weights loaded with ``assign=True`` or
    re-initialised while patched included)."""
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"unpatch_timm_swiftformer expects a model patched by patch_timm_swiftformer, got {type(model).__name__}"
        )
    originals = getattr(model, _ORIGINALS, {})
    for name, original in originals.items():
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        current = getattr(parent, child_name, None)
        if isinstance(current, EfficientAdditiveAttention2d):
            # what the model holds now: weights loaded with assign=True, a re-initialised w_g, the train/eval mode
            original.to_query, original.to_key, original.proj, original.final = (
                current.to_query, current.to_key, current.proj, current.final)
            if isinstance(current._parameters.get("w_g"), nn.Parameter):
                original.w_g = current.w_g
            original.train(current.training)
            original._is_full_backward_hook = current._is_full_backward_hook  # the hook dicts are shared, not this flag
        setattr(parent, child_name, original)
    restored = list(originals)
    object.__setattr__(model, _ORIGINALS, {})
    return restored
