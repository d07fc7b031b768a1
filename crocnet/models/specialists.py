"""CroCNet's stage 2 (paper §3.3): weight-shared specialist networks coupled by cross-E2A."""

from __future__ import annotations

import torch
from torch import nn

from ..nn import CrossE2ABlock2d
from ..arguments import positive_int
from ..nn.attention import check_input_dtype
from .e2aunet import E2AUNet, drop_path_rates


class SpecialistNets(nn.Module):
    """LV-Net, MYO-Net and RV-Net: one E-2AUNet applied to S streams, coupled by cross-E2A.

    Input ``(B, in_chans, H, W)``: the cropped image (``in_chans − streams`` channels, 1 for CroCNet) followed
    by one stage-1 mask per stream, in stream order (LV, MYO, RV) = ``crocnet.models.CROCNET_STREAMS``.
    Stream s sees the image and its own mask, ``in_chans − streams + 1`` channels (2 for CroCNet). Output: logits
    ``(B, streams, H, W)``, channel s the binary map of stream s (:meth:`activation` is a sigmoid).
    ``crocnet_single`` (an :class:`E2AUNet` with ``in_chans=4, num_classes=3``) has the same interface.

    Weight sharing is literal: :attr:`net` is the single :class:`E2AUNet` (``num_classes=1``) every stream
    runs through, on the streams stacked along the batch axis (``S·B`` images per call, stream-major). So
    the parameters are those of one stream plus the cross blocks. With ``cross_attention=True`` a
    :class:`~crocnet.nn.CrossE2ABlock2d` (per-stream parameters) couples the S streams at the end of every
    encoder level (``depth + 1`` of them, as the authors' ``X_0 … X_4``); the skips carry the coupled maps.
    ``cross_attention=False`` gives S uncoupled weight-shared streams.

    Differences from the authors' ``My_Net1``: the shared network is exactly :class:`E2AUNet` (a conv block
    and an E2A block per encoder and decoder stage; theirs has a depth-wise conv encoder block and no E2A in
    the decoder), and BatchNorm in training mode pools its statistics over the S·B stacked images (theirs
    calls the shared modules once per stream). In ``eval()`` the stacking changes nothing.

    Args:
        in_chans: input channels, image channels + one mask per stream (default 1 + 3).
        streams: number of specialists S.
        base_width: width C of the first stage (the paper: 16; the authors' code: 32).
        depth, drop_path_rate, mlp_ratio, layer_scale_init_value, token_norm, backend: as :class:`E2AUNet`.
        cross_attention: couple the streams with cross-E2A blocks.
        authors_final_bug: passed to the cross blocks, to reproduce the authors' cross-attention.
    """

    def __init__(
        self,
        in_chans: int = 4,
        streams: int = 3,
        base_width: int = 16,
        depth: int = 4,
        cross_attention: bool = True,
        drop_path_rate: float = 0.0,
        mlp_ratio: float = 4.0,
        layer_scale_init_value: float = 1e-5,
        token_norm: str = "l2",
        backend: str = "auto",
        authors_final_bug: bool = False,
    ):
        super().__init__()
        positive_int(type(self).__name__, in_chans=in_chans, streams=streams)
        if in_chans <= streams:
            raise ValueError(
                f"in_chans counts the image channels and one mask per stream, so in_chans > streams >= 1; "
                f"got in_chans={in_chans}, streams={streams}"
            )
        self.in_chans, self.streams, self.num_classes = in_chans, streams, streams
        self.image_chans = in_chans - streams
        self.net = E2AUNet(
            in_chans=self.image_chans + 1, num_classes=1, base_width=base_width, depth=depth,
            drop_path_rate=drop_path_rate, mlp_ratio=mlp_ratio, layer_scale_init_value=layer_scale_init_value,
            head_activation="sigmoid", token_norm=token_norm, backend=backend,
        )
        dpr = drop_path_rates(drop_path_rate, 2 * depth + 1)
        self.cross = nn.ModuleList(
            CrossE2ABlock2d(
                width, streams=streams, mlp_ratio=mlp_ratio, drop_path=dpr[level],
                layer_scale_init_value=layer_scale_init_value, token_norm=token_norm, backend=backend,
                authors_final_bug=authors_final_bug,
            )
            for level, width in enumerate(self.net.widths)
        ) if cross_attention else None
        self.num_features = self.net.num_features

    @property
    def size_divisor(self) -> int:
        """H and W must be multiples of this (``2**depth``)."""
        return self.net.size_divisor

    def stream_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_chans, H, W)`` → the streams' inputs stacked stream-major, ``(S·B, image_chans + 1, H, W)``."""
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(
                f"SpecialistNets expects (B, {self.in_chans}, H, W): {self.image_chans} image channel(s) then "
                f"{self.streams} masks; got {tuple(x.shape)}"
            )
        if 0 in x.shape:
            raise ValueError(f"SpecialistNets expects a non-empty (B, {self.in_chans}, H, W), got {tuple(x.shape)}")
        check_input_dtype(x, self.net.head.weight, "the input of SpecialistNets")
        S = self.streams
        image = x[:, : self.image_chans].unsqueeze(0).expand(S, -1, -1, -1, -1)
        masks = x[:, self.image_chans :].transpose(0, 1).unsqueeze(2)
        return torch.cat([image, masks], dim=2).flatten(0, 1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_chans, H, W)`` → decoder features of every stream, stacked ``(S·B, base_width, H, W)``."""
        z = self.stream_inputs(x)
        self.net.check_input(z)
        z = self.net.stem(z)
        features = []
        for level, stage in enumerate(self.net.encoder):
            z = self.net.run_stage(stage, z)
            if self.cross is not None:
                z = torch.cat(self.cross[level](*z.chunk(self.streams)), dim=0)
            features.append(z)
        return self.net.forward_decoder(features)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """``(S·B, base_width, H, W)`` → logits ``(B, S, H, W)``."""
        logits = self.net.forward_head(x)
        return logits.reshape(self.streams, -1, *logits.shape[-2:]).transpose(0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_chans, H, W)`` → logits ``(B, streams, H, W)``, one map per stream (LV, MYO, RV)."""
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        """The 1×1 head every stream shares (one map each)."""
        return self.net.head

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """timm's switch: the shared network's stages are recomputed in the backward (see :class:`E2AUNet`)."""
        self.net.set_grad_checkpointing(enable)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return set()

    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits → per-stream probabilities (sigmoid)."""
        return torch.sigmoid(logits)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_chans, H, W)`` → probabilities ``(B, streams, H, W)``."""
        return self.activation(self(x))

