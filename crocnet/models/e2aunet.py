"""E-2AUNet, CroCNet's stage-1 network (paper §3.1): a U-Net whose every stage is a conv block and an E2A block."""

from __future__ import annotations

import torch
import torch.utils.checkpoint
from timm.models._features import feature_take_indices
from torch import nn

from ..nn import E2ABlock2d
from ..arguments import is_int, is_rate, positive_int
from ..nn.attention import check_input_dtype
from ..nn.blocks import check_block_args
from ..nn.conv import ConvBlock2d, Downsample2d
from ..ops._checks import BACKENDS
from ..ops.naive import TOKEN_NORMS
from .baselines import MHSABlock2d

ATTENTIONS = ("e2a", "mhsa", "none")
HEAD_ACTIVATIONS = ("sigmoid", "softmax")
#: Refused before allocating, a guard against a mistyped depth or width rather than a hardware limit: 2³¹
#: parameters are 8 GiB of float32 weights (32 GiB with gradients and Adam's moments), 125× the paper's
#: E-2AUNet (17 M at base_width=32, depth=4).
MAX_PARAMETERS = 2**31
#: Stage-1 output channels in the paper's and the authors' order (background last).
STAGE1_CHANNELS = ("lv", "myo", "rv", "background")


def drop_path_rates(rate: float, blocks: int) -> list[float]:
    """Stochastic-depth rates rising linearly from 0 to ``rate`` over ``blocks`` blocks."""
    return [rate * i / max(blocks - 1, 1) for i in range(blocks)]


def attention_block(
    attention: str,
    dim: int,
    *,
    drop_path: float = 0.0,
    mlp_ratio: float = 4.0,
    layer_scale_init_value: float = 1e-5,
    head_dim: int = 32,
    token_norm: str = "l2",
    backend: str = "auto",
) -> nn.Module:
    """The global-context block of one U-Net stage on ``(B, dim, H, W)``: :class:`~crocnet.nn.E2ABlock2d`
    (``"e2a"``), :class:`~crocnet.models.baselines.MHSABlock2d` with ``max(1, dim // head_dim)`` heads
    (``"mhsa"``) or the identity (``"none"``)."""
    if attention == "e2a":
        return E2ABlock2d(
            dim, mlp_ratio=mlp_ratio, drop_path=drop_path, layer_scale_init_value=layer_scale_init_value,
            token_norm=token_norm, backend=backend,
        )
    if attention == "mhsa":
        return MHSABlock2d(
            dim, num_heads=max(1, dim // head_dim), mlp_ratio=mlp_ratio, drop_path=drop_path,
            layer_scale_init_value=layer_scale_init_value,
        )
    if attention == "none":
        return nn.Identity()
    raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")


def _check_num_classes(num_classes: int) -> None:
    if not is_int(num_classes) or num_classes < 1:
        raise ValueError(
            f"E2AUNet: num_classes must be an int >= 1 (the logit maps; for the features use forward_features), "
            f"got {num_classes!r}"
        )


def _check_heads(widths: tuple[int, ...], levels: tuple[int, ...], head_dim: int) -> None:
    for level in levels:
        heads = max(1, widths[level] // head_dim)
        if widths[level] % heads:
            raise ValueError(
                f"E2AUNet(attention='mhsa'): level {level} has width {widths[level]}, which does not split into "
                f"max(1, {widths[level]} // head_dim) = {heads} heads; choose base_width and head_dim (got {head_dim}) "
                f"so that every attention level's width is a multiple of its head count"
            )


def _check_choices(attention: str, token_norm: str, backend: str) -> None:
    """The string options, checked whether or not a block uses them (a typo is never silently ignored)."""
    for name, value, choices in (("attention", attention, ATTENTIONS), ("token_norm", token_norm, TOKEN_NORMS),
                                 ("backend", backend, BACKENDS)):
        if value not in choices:
            raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _attention_levels(levels, depth: int) -> tuple[int, ...]:
    if levels is None:
        return tuple(range(depth + 1))
    values = None if isinstance(levels, (str, bytes)) or not hasattr(levels, "__iter__") else tuple(levels)
    if values is None or any(not is_int(lv) or not 0 <= lv <= depth for lv in values):
        raise ValueError(f"attention_levels must be integers in 0..depth = 0..{depth}, got {levels!r}")
    return tuple(sorted(set(values)))


class EncoderStage(nn.Module):
    """One encoder level: (down-sampling ``in_chs → out_chs`` at stride 2) → conv block → attention block.

    ``(B, in_chs, H, W)`` → ``(B, out_chs, H/2, W/2)`` with ``downsample=True``, else ``(B, out_chs, H, W)``.
    """

    def __init__(self, in_chs: int, out_chs: int, attn: nn.Module, downsample: bool = True):
        super().__init__()
        self.downsample = Downsample2d(in_chs, out_chs) if downsample else nn.Identity()
        self.conv = ConvBlock2d(out_chs if downsample else in_chs, out_chs)
        self.attn = attn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(self.conv(self.downsample(x)))


class DecoderStage(nn.Module):
    """One decoder level: 2×2 transposed conv ``in_chs → out_chs``, concatenation with the skip
    ``(B, out_chs, 2H, 2W)``, conv block ``2·out_chs → out_chs``, attention block.

    ``x (B, in_chs, H, W)``, ``skip (B, out_chs, 2H, 2W)`` → ``(B, out_chs, 2H, 2W)``.
    """

    def __init__(self, in_chs: int, out_chs: int, attn: nn.Module):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_chs, out_chs, 2, stride=2)
        self.conv = ConvBlock2d(2 * out_chs, out_chs)
        self.attn = attn

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.attn(self.conv(torch.cat([skip, self.up(x)], dim=1)))


class E2AUNet(nn.Module):
    """E-2AUNet (paper §3.1, Fig. 1a) on ``(B, in_chans, H, W)`` → logits ``(B, num_classes, H, W)``.

    Stem (two 3×3 conv + BN + ReLU, ``in_chans → C/2 → C`` at full resolution), then ``depth + 1``
    encoder stages of widths ``C·2^l`` (l = 0 … depth; 32 → 512 for the paper's ``C = 32, depth = 4``),
    each a conv block (two 3×3 conv + BN + ReLU) and an E2A block (:class:`~crocnet.nn.E2ABlock2d`:
    SwiftFormer local representation, E2A over the flattened map, MLP, layer scales, drop path); stages
    1 … depth start with a stride-2 3×3 conv that doubles the width. The decoder mirrors it: ``depth``
    stages of 2×2 transposed conv (halving the width), concatenated skip, conv block and E2A block.
    A 1×1 conv maps the ``C`` full-resolution features to ``num_classes`` logits.

    **Outputs are logits.** :meth:`activation` turns them into probabilities with the model's
    ``head_activation`` (``"sigmoid"``, per channel as in the paper, or ``"softmax"`` over channels);
    :meth:`predict` does both. For CroCNet's stage 1 the 4 channels are (LV, MYO, RV, background),
    :data:`STAGE1_CHANNELS`, as in the paper and the authors' code.

    H and W must be multiples of ``2**depth`` (:attr:`size_divisor`); :class:`~crocnet.models.CroCNet`
    pads other sizes.

    Args:
        in_chans: input channels.
        num_classes: output channels (logit maps).
        base_width: width C of the first stage.
        depth: number of down-samplings (the U-Net has ``depth + 1`` levels).
        attention: ``"e2a"`` (E-2AUNet), ``"mhsa"`` (the MHSA baseline, :class:`~crocnet.models.baselines.MHSABlock2d`)
            or ``"none"`` (plain conv U-Net).
        drop_path_rate: stochastic depth, linearly increasing over the ``2·depth + 1`` attention blocks
            (encoder, then decoder).
        mlp_ratio: hidden width of the blocks' MLP relative to their width.
        layer_scale_init_value: initial layer scale of the attention and MLP branches.
        head_activation: ``"sigmoid"`` or ``"softmax"``, used by :meth:`activation` (never in ``forward``).
        head_dim: MHSA head width (``attention="mhsa"`` only).
        attention_levels: the levels (0 … depth, full resolution first) whose encoder and decoder stages
            carry the attention block; the others have none. ``None`` (default): every level, as in the
            paper. E.g. ``(2, 3, 4)`` keeps attention off the two finest maps (``H·W`` and ``H·W/4``
            tokens), where MHSA's N² cost is highest (TransUNet-style hybrids).
        token_norm, backend: passed to every E2A (see :class:`~crocnet.nn.EfficientAdditiveAttention`);
            ``backend="auto"`` runs the Triton kernels on CUDA and PyTorch on CPU.
    """

    def __init__(
        self,
        in_chans: int = 1,
        num_classes: int = 4,
        base_width: int = 32,
        depth: int = 4,
        attention: str = "e2a",
        drop_path_rate: float = 0.0,
        mlp_ratio: float = 4.0,
        layer_scale_init_value: float = 1e-5,
        head_activation: str = "sigmoid",
        head_dim: int = 32,
        token_norm: str = "l2",
        backend: str = "auto",
        attention_levels: tuple[int, ...] | list[int] | None = None,
    ):
        super().__init__()
        if head_activation not in HEAD_ACTIVATIONS:
            raise ValueError(f"head_activation must be one of {HEAD_ACTIVATIONS}, got {head_activation!r}")
        if not is_int(depth) or not is_int(base_width) or depth < 0 or base_width < 2:
            raise ValueError(f"need depth >= 0 and base_width >= 2, got depth={depth!r}, base_width={base_width!r}")
        positive_int(type(self).__name__, in_chans=in_chans, head_dim=head_dim)
        _check_num_classes(num_classes)
        _check_choices(attention, token_norm, backend)
        check_block_args(type(self).__name__, base_width, mlp_ratio, 0.0)
        if not is_rate(drop_path_rate):
            raise ValueError(f"drop_path_rate must be a rate in [0, 1), got {drop_path_rate!r}")
        self.in_chans, self.num_classes, self.depth = in_chans, num_classes, depth
        levels = _attention_levels(attention_levels, depth)
        self.attention_levels = levels
        self.attention, self.head_activation = attention, head_activation
        self.widths = tuple(base_width * 2**level for level in range(depth + 1))
        convs = 31 * sum(w * w for w in self.widths)  # the conv layers' count, within 2 %; attention adds to it
        if convs > MAX_PARAMETERS:
            raise ValueError(f"depth={depth} with base_width={base_width} makes the deepest level {self.widths[-1]} wide and "
                             f"{convs:.2e} parameters in the conv layers alone, over the {MAX_PARAMETERS:.2e} this model "
                             f"allows (the paper's network: base_width=32, depth=4, 512 wide); lower depth or base_width")
        if attention == "mhsa":
            _check_heads(self.widths, levels, head_dim)
        self.num_features = base_width
        dpr = drop_path_rates(drop_path_rate, 2 * depth + 1)

        def block(level: int, rate: float) -> nn.Module:
            if level not in levels:
                return nn.Identity()
            return attention_block(
                attention, self.widths[level], drop_path=rate, mlp_ratio=mlp_ratio,
                layer_scale_init_value=layer_scale_init_value, head_dim=head_dim, token_norm=token_norm, backend=backend,
            )

        w = self.widths
        self.stem = ConvBlock2d(in_chans, w[0], mid_chs=w[0] // 2)
        self.encoder = nn.ModuleList(
            EncoderStage(w[max(level - 1, 0)], w[level], block(level, dpr[level]), downsample=level > 0)
            for level in range(depth + 1)
        )
        self.decoder = nn.ModuleList(
            DecoderStage(w[level + 1], w[level], block(level, dpr[2 * depth - level]))
            for level in reversed(range(depth))
        )
        self.head = nn.Conv2d(w[0], num_classes, 1)
        self.grad_checkpointing = False
        self.feature_info = [
            dict(num_chs=w[level], reduction=2**level, module=f"encoder.{level}") for level in range(depth + 1)
        ]

    @property
    def size_divisor(self) -> int:
        """H and W must be multiples of this (``2**depth``)."""
        return 2**self.depth

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a ``ValueError`` unless ``x`` is a non-empty ``(B, in_chans, H, W)``, H and W multiples of
        :attr:`size_divisor`, and a ``TypeError`` unless it is floating point of the parameters' dtype
        (or of one autocast casts, under autocast)."""
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"{type(self).__name__} expects (B, {self.in_chans}, H, W), got {tuple(x.shape)}")
        if 0 in x.shape:
            raise ValueError(f"{type(self).__name__} expects a non-empty (B, {self.in_chans}, H, W), got {tuple(x.shape)}")
        check_input_dtype(x, self.stem.conv1.weight, f"the input of {type(self).__name__}")
        H, W = x.shape[-2:]
        m = self.size_divisor
        if H % m or W % m:
            raise ValueError(
                f"{type(self).__name__}(depth={self.depth}) needs H and W divisible by 2**depth = {m}, got {H}×{W}; "
                f"pad the input (crocnet.models.CroCNet pads for you)"
            )

    def forward_encoder(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, in_chans, H, W)`` → the ``depth + 1`` encoder maps ``(B, C·2^l, H/2^l, W/2^l)``, l = 0 … depth."""
        features = []
        x = self.stem(x)
        for stage in self.encoder:
            x = self.run_stage(stage, x)
            features.append(x)
        return features

    def forward_decoder(self, features: list[torch.Tensor]) -> torch.Tensor:
        """The encoder maps of :meth:`forward_encoder` → full-resolution features ``(B, C, H, W)``."""
        x = features[-1]
        for stage, skip in zip(self.decoder, reversed(features[:-1])):
            x = self.run_stage(stage, x, skip)
        return x

    def run_stage(self, stage: nn.Module, *inputs: torch.Tensor) -> torch.Tensor:
        """``stage(*inputs)``; with gradient checkpointing on and gradients recorded, its activations are not
        kept but computed again in the backward (``torch.utils.checkpoint``, non-reentrant)."""
        if self.grad_checkpointing and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(stage, *inputs, use_reentrant=False)
        return stage(*inputs)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """timm's switch: recompute each encoder and decoder stage in the backward instead of keeping its
        activations (less memory, about one more forward of time). The gradients are the same; in train mode
        each BatchNorm counts a step twice in its running statistics (the recompute is a forward too), as in
        timm's own checkpointed models."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """timm's optimizer factory asks: no parameter is exempt from weight decay (as timm's SwiftFormer)."""
        return set()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_chans, H, W)`` → decoder output ``(B, base_width, H, W)`` (before the 1×1 head)."""
        self.check_input(x)
        return self.forward_decoder(self.forward_encoder(x))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, base_width, H, W)`` → logits ``(B, num_classes, H, W)``."""
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_chans, H, W)`` → logits ``(B, num_classes, H, W)``."""
        return self.forward_head(self.forward_features(x))

    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes, H, W)`` → probabilities, by ``head_activation`` (softmax over dim 1)."""
        return torch.sigmoid(logits) if self.head_activation == "sigmoid" else torch.softmax(logits, dim=1)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_chans, H, W)`` → probabilities ``(B, num_classes, H, W)``."""
        return self.activation(self(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ):
        """timm's feature API: the encoder maps at ``indices`` (levels 0 … depth, full resolution first; an int
        n: the last n; None: all), each ``(B, C·2^l, H/2^l, W/2^l)``. Returns them alone with
        ``intermediates_only`` (the encoder stops at the deepest one asked for), else ``(logits, maps)``.
        ``norm`` and ``stop_early`` change nothing here (no final norm; the decoder needs every level)."""
        if output_fmt != "NCHW":
            raise ValueError(f"{type(self).__name__} gives NCHW feature maps, got output_fmt={output_fmt!r}")
        take, deepest = feature_take_indices(len(self.encoder), indices)
        self.check_input(x)
        z, features, taken = self.stem(x), [], []
        for level, stage in enumerate(self.encoder):
            if intermediates_only and level > deepest:
                break
            z = self.run_stage(stage, z)
            features.append(z)
            if level in take:
                taken.append(z)
        if intermediates_only:
            return taken
        return self.forward_head(self.forward_decoder(features)), taken

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Keep only what :meth:`forward_intermediates` needs for ``indices``: the encoder up to the deepest
        level asked for, without decoder and head (``features_only`` models). Returns the level indices."""
        take, deepest = feature_take_indices(len(self.encoder), indices)
        self.encoder = self.encoder[: deepest + 1]
        if prune_head:
            self.decoder, self.head = nn.ModuleList(), nn.Identity()
        return take

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the 1×1 head with a fresh one of ``num_classes`` outputs (timm convention; a dense head has
        no global pooling, so ``global_pool`` may only be None or ``""``)."""
        if global_pool not in (None, ""):
            raise ValueError(f"{type(self).__name__} has a dense 1×1 head, no global pooling; got global_pool={global_pool!r}")
        _check_num_classes(num_classes)
        self.num_classes = num_classes
        self.head = nn.Conv2d(self.num_features, num_classes, 1)
