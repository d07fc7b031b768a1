"""Drop-in E2A for ``segmentation_models_pytorch`` U-Nets (the optional ``smp`` extra)."""

from __future__ import annotations

from torch import nn

from ..nn import E2A2d


def _apply_e2a(block: nn.Module, args, output):
    return block.e2a(output)


def add_e2a_to_smp_unet(
    model: nn.Module, token_norm: str = "l2", backend: str = "auto", layer_scale_init_value: float = 1e-5
) -> list[str]:
    """Add a residual :class:`~crocnet.nn.E2A2d` after every decoder block of a ``segmentation_models_pytorch.Unet``.

    Each ``model.decoder.blocks[i]`` gets a child ``e2a`` (width: the block's output channels) and a forward
    hook that returns ``block.e2a(output)``; the existing parameters and their state-dict keys are untouched,
    the new ones appear as ``decoder.blocks.{i}.e2a.*``. The layer scale starts at
    ``layer_scale_init_value`` so a trained Unet keeps (almost) its outputs. Patch a fresh model before
    loading a checkpoint saved from a patched one. Patching twice changes nothing the second time.

    Returns the qualified names of the added modules, e.g. ``["decoder.blocks.0.e2a", ...]``.
    """
    import segmentation_models_pytorch as smp

    if not isinstance(model, smp.Unet):
        raise TypeError(f"add_e2a_to_smp_unet expects a segmentation_models_pytorch.Unet, got {type(model).__name__}")
    added = []
    for i, block in enumerate(model.decoder.blocks):
        if hasattr(block, "e2a"):
            continue
        reference = block.conv2[0]
        e2a = E2A2d(
            reference.out_channels,
            token_norm=token_norm,
            backend=backend,
            layer_scale_init_value=layer_scale_init_value,
        )
        block.e2a = e2a.to(device=reference.weight.device, dtype=reference.weight.dtype)
        block.register_forward_hook(_apply_e2a)
        added.append(f"decoder.blocks.{i}.e2a")
    return added
