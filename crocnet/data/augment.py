"""Batched data augmentation on the training device, in torch ops (the CroCNet paper's list).

Spatial: random flips, in-plane rotation and scaling (one affine per sample), elastic deformation; one
``grid_sample`` per batch moves the image (bilinear) and the labels (nearest) with the same sampling grid,
so they stay aligned. Intensity (image only): Gaussian blur, gamma, additive Gaussian noise.

Random parameters come from a ``torch.Generator`` and are drawn for every sample and every operation in a
fixed order, whatever the probabilities decide, so a seed gives the same batch every time (for one device
and torch version). Noise and elastic fields are drawn on the generator's device: pass a generator on the
data's device to keep everything there (``torch.Generator(device="cuda").manual_seed(s)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["Augment"]


@dataclass
class Augment:
    """Random augmentation of ``(B, C, H, W)`` images and ``(B, H, W)`` / ``(B, K, H, W)`` labels.

    Every ``p_*`` is the per-sample probability of one operation; ranges are ``(low, high)`` of uniform
    draws. ``Augment.identity()`` switches everything off.

    Attributes:
        p_flip: probability of flipping each in-plane axis (H and W independently).
        p_affine: probability of a rotation + isotropic scaling about the image centre.
        rotation: maximal rotation in degrees (uniform in ``±rotation``).
        scale: zoom factor range (> 1 enlarges the content).
        p_elastic: probability of an elastic deformation.
        elastic_alpha: standard deviation of the displacement at the control points, in pixels (the
            bicubic interpolation makes it somewhat smaller between them: about 3.5 px for 4).
        elastic_spacing: distance in pixels between the control points of the displacement field
            (larger: smoother); the field is their bicubic interpolation.
        p_blur: probability of a Gaussian blur; ``blur_sigma``: its sigma range in pixels.
        p_gamma: probability of a gamma change, ``I' = lo + (hi - lo) ((I - lo) / (hi - lo)) ** gamma``
            with ``lo, hi`` the sample's range; ``gamma``: its range.
        p_noise: probability of additive Gaussian noise; ``noise_std``: its range, relative to the
            sample's standard deviation.
        intensity_channels: image channels the intensity operations touch (default: all), e.g. ``(0,)``
            when the other channels are prior masks.
        padding: ``grid_sample`` padding of the image outside the field of view.
        label_fill: value of the labels moved in from outside the field of view: one number, or one per
            channel of ``(B, K, H, W)`` labels. With 0 (default) those pixels of one-hot targets belong to
            no class, which per-channel sigmoid targets allow; softmax targets need 1 in the background
            channel (e.g. ``(0, 0, 0, 1)`` for the stage-1 channels LV, MYO, RV, background).
    """

    p_flip: float = 0.5
    p_affine: float = 0.5
    rotation: float = 20.0
    scale: tuple[float, float] = (0.85, 1.15)
    p_elastic: float = 0.25
    elastic_alpha: float = 4.0
    elastic_spacing: float = 32.0
    p_blur: float = 0.2
    blur_sigma: tuple[float, float] = (0.5, 1.5)
    p_gamma: float = 0.3
    gamma: tuple[float, float] = (0.7, 1.5)
    p_noise: float = 0.2
    noise_std: tuple[float, float] = (0.02, 0.1)
    intensity_channels: Sequence[int] | None = None
    padding: str = "zeros"
    label_fill: float | Sequence[float] = 0.0

    @classmethod
    def identity(cls) -> "Augment":
        """An :class:`Augment` whose every probability is 0 (returns its inputs unchanged)."""
        return cls(p_flip=0, p_affine=0, p_elastic=0, p_blur=0, p_gamma=0, p_noise=0)

    def __call__(
        self, image: torch.Tensor, label: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Augment a batch.

        Args:
            image: floating-point ``(B, C, H, W)`` (an integer tensor is a ``TypeError``).
            label: ``(B, H, W)`` integer label maps or ``(B, K, H, W)`` masks / one-hot maps (any dtype),
                on the image's device, or ``None``.
            generator: source of randomness (``None``: torch's global generator).

        Returns:
            ``(image, label)`` of the same shapes, dtypes and device; samples no operation touched are
            returned bit-for-bit unchanged.
        """
        if not image.is_floating_point():
            raise TypeError(f"expected a floating-point image tensor, got {image.dtype}")
        if image.ndim != 4:
            raise ValueError(f"image must be (B, C, H, W), got shape {tuple(image.shape)}")
        b, _, h, w = image.shape
        if label is not None and (label.ndim not in (3, 4) or label.shape[0] != b or label.shape[-2:] != (h, w)):
            raise ValueError(
                f"label must be (B, H, W) or (B, K, H, W) matching image {tuple(image.shape)}, got {tuple(label.shape)}"
            )
        draw = _Draws(generator, image.device)
        # all parameters first, in a fixed order
        flip = draw.coin(b, 2, self.p_flip)
        do_affine = draw.coin(b, 1, self.p_affine)[:, 0]
        angle = draw.uniform(b, -self.rotation, self.rotation) * math.pi / 180
        zoom = draw.uniform(b, *self.scale)
        do_elastic = draw.coin(b, 1, self.p_elastic)[:, 0]
        cells = [max(2, math.ceil(n / self.elastic_spacing) + 1) for n in (h, w)]
        elastic = draw.normal(b, 2, *cells) if self.p_elastic > 0 else None
        do_blur, sigma = draw.coin(b, 1, self.p_blur)[:, 0], draw.uniform(b, *self.blur_sigma)
        do_gamma, gamma = draw.coin(b, 1, self.p_gamma)[:, 0], draw.uniform(b, *self.gamma)
        do_noise, noise_std = draw.coin(b, 1, self.p_noise)[:, 0], draw.uniform(b, *self.noise_std)
        noise = draw.normal(*image.shape) if self.p_noise > 0 else None

        spatial = flip.any(1) | do_affine | do_elastic
        if not (spatial | do_blur | do_gamma | do_noise).any():
            return image, label
        image = image.clone()
        if spatial.any():
            idx = spatial.nonzero()[:, 0]
            grid = self._grid(flip[idx], do_affine[idx], angle[idx], zoom[idx], do_elastic[idx],
                              None if elastic is None else elastic[idx], h, w, image.dtype)
            image[idx] = F.grid_sample(image[idx], grid, mode="bilinear", padding_mode=self.padding,
                                       align_corners=False)
            if label is not None:
                label = label.clone()
                lab = (label[idx].unsqueeze(1) if label.ndim == 3 else label[idx]).to(grid.dtype)
                fill = self._label_fill(lab.shape[1], lab.device, lab.dtype)
                # nearest sampling copies values, so shifting by the fill is exact and pads with it
                moved = F.grid_sample(lab - fill, grid, mode="nearest", padding_mode="zeros", align_corners=False) + fill
                moved = moved[:, 0] if label.ndim == 3 else moved
                label[idx] = (moved.round() if not label.is_floating_point() else moved).to(label.dtype)

        if do_blur.any() or do_gamma.any() or do_noise.any():
            channels = list(range(image.shape[1])) if self.intensity_channels is None else list(self.intensity_channels)
            x = image[:, channels]  # a copy, written back below
            if do_blur.any():
                idx = do_blur.nonzero()[:, 0]
                x[idx] = _gaussian_blur(x[idx], sigma[idx])
            if do_gamma.any():
                idx = do_gamma.nonzero()[:, 0]
                x[idx] = _gamma(x[idx], gamma[idx])
            if do_noise.any():
                idx = do_noise.nonzero()[:, 0]
                std = x[idx].flatten(1).std(dim=1).view(-1, 1, 1, 1)
                scaled = (noise[idx][:, channels] * noise_std[idx].view(-1, 1, 1, 1)).to(x.dtype)  # float32 draws
                x[idx] = x[idx] + scaled * std
            image[:, channels] = x
        return image, label

    def _label_fill(self, channels: int, device, dtype) -> torch.Tensor:
        fill = torch.as_tensor(self.label_fill, dtype=dtype, device=device).reshape(-1)
        if fill.numel() not in (1, channels):
            raise ValueError(f"label_fill must be one number or one per label channel ({channels}), got {self.label_fill!r}")
        return fill.view(1, -1, 1, 1)

    def _grid(self, flip, do_affine, angle, zoom, do_elastic, elastic, h, w, dtype) -> torch.Tensor:
        """Sampling grid ``(n, H, W, 2)``: output pixel → input position, in normalised coordinates."""
        n = flip.shape[0]
        # matrix in pixel units (x along W, y along H), about the centre: input = A @ output
        cos, sin = torch.cos(angle), torch.sin(angle)
        inv_zoom = torch.where(do_affine, 1 / zoom, torch.ones_like(zoom))
        cos, sin = torch.where(do_affine, cos, torch.ones_like(cos)), torch.where(do_affine, sin, torch.zeros_like(sin))
        sign_x = 1 - 2 * flip[:, 1].to(angle.dtype)
        sign_y = 1 - 2 * flip[:, 0].to(angle.dtype)
        a = torch.stack([
            torch.stack([cos * sign_x, -sin * sign_y], -1),
            torch.stack([sin * sign_x, cos * sign_y], -1),
        ], -2) * inv_zoom.view(-1, 1, 1)
        # to normalised coordinates: n_in = D^-1 A D n_out with D = diag(W, H) / 2
        d = torch.tensor([w / 2, h / 2], dtype=angle.dtype, device=angle.device)
        theta = torch.zeros(n, 2, 3, dtype=angle.dtype, device=angle.device)
        theta[:, :, :2] = a * d.view(1, 1, 2) / d.view(1, 2, 1)
        grid = F.affine_grid(theta.to(dtype), [n, 1, h, w], align_corners=False)
        if elastic is not None and do_elastic.any():
            field = F.interpolate(elastic.to(dtype), size=(h, w), mode="bicubic", align_corners=True)
            field = field * self.elastic_alpha * do_elastic.to(dtype).view(-1, 1, 1, 1)
            scale = torch.tensor([2 / w, 2 / h], dtype=dtype, device=grid.device)
            grid = grid + field.permute(0, 2, 3, 1) * scale
        return grid


class _Draws:
    """Random draws from one generator, moved to the data's device."""

    def __init__(self, generator: torch.Generator | None, device: torch.device):
        self.generator = generator
        self.source = generator.device if generator is not None else torch.device("cpu")
        self.device = device

    def _to(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device)

    def coin(self, b: int, k: int, p: float) -> torch.Tensor:
        return self._to(torch.rand(b, k, generator=self.generator, device=self.source) < p)

    def uniform(self, b: int, low: float, high: float) -> torch.Tensor:
        u = torch.rand(b, generator=self.generator, device=self.source, dtype=torch.float64)
        return self._to(low + (high - low) * u).float()

    def normal(self, *shape: int) -> torch.Tensor:
        return self._to(torch.randn(*shape, generator=self.generator, device=self.source))


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of ``(n, C, H, W)`` with one ``sigma`` (pixels) per sample, edge padding."""
    n, c, h, w = x.shape
    radius = int(math.ceil(3 * float(sigma.max())))
    taps = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (taps.view(1, -1) / sigma.view(-1, 1).to(x.dtype)) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (n * C, K)
    y = x.reshape(1, n * c, h, w)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="replicate"), kernel.view(n * c, 1, -1, 1), groups=n * c)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="replicate"), kernel.view(n * c, 1, 1, -1), groups=n * c)
    return y.view(n, c, h, w)


def _gamma(x: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Gamma change of each sample of ``(n, C, H, W)`` within its own intensity range."""
    flat = x.flatten(1)
    lo = flat.min(1).values.view(-1, 1, 1, 1)
    span = (flat.max(1).values.view(-1, 1, 1, 1) - lo).clamp_min(1e-8)
    return lo + span * ((x - lo) / span).clamp(0, 1) ** gamma.view(-1, 1, 1, 1).to(x.dtype)
