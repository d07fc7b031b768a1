"""Invertible in-plane preprocessing: resample to a target pixel size, then centre crop / pad to a fixed size.

A :class:`PlaneTransform` is planned once per image from its native shape and spacing and kept beside the
sample; predictions go back onto the native grid with :meth:`PlaneTransform.invert`, ready for metrics
in mm and for NIfTI output with the record's affine.

It acts on the **last two axes** of NumPy arrays or torch tensors (CPU or CUDA): ``(H, W)``,
``(C, H, W)``, ``(B, C, H, W)``; a record's ``(H, W, Z)`` volume becomes ``(Z, H, W)`` with
``np.moveaxis(volume, -1, 0)``. Images are resampled bilinearly (antialiased when shrinking), label maps
with nearest neighbours (``"nearest-exact"``: pixel centres map to pixel centres), probabilities
bilinearly. When the resampled shape equals the native one, no interpolation happens, so a crop/pad-only
transform is inverted exactly on the pixels it keeps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["PlaneTransform"]

_KINDS = ("image", "label", "probabilities")


def _pair(value, name: str) -> tuple:
    values = tuple(value) if isinstance(value, (tuple, list, np.ndarray)) else (value, value)
    if len(values) != 2:
        raise ValueError(f"{name} must be one value or two (H, W), got {value!r}")
    return values


def _positive_pair(value, name: str, integer: bool = False) -> tuple:
    """``_pair`` whose entries must be finite and > 0 (and whole numbers when ``integer``)."""
    values = _pair(value, name)
    try:
        ok = all(np.isfinite(float(v)) and float(v) > 0 and (not integer or float(v) == int(v)) for v in values)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        kind = "positive whole numbers" if integer else "finite and > 0"
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    return tuple(int(v) for v in values) if integer else tuple(float(v) for v in values)


@dataclass(frozen=True)
class PlaneTransform:
    """Resample ``native_shape`` → ``resampled_shape``, then place it in a ``size`` frame at ``offset``.

    Attributes:
        native_shape: ``(H, W)`` of the native grid.
        resampled_shape: ``(h, w)`` after resampling (equal to ``native_shape`` when not resampling).
        size: ``(h_out, w_out)`` of the output frame.
        offset: position of the resampled grid's first pixel in the output frame; negative values crop.
            ``output[a + offset] = resampled[a]`` wherever both exist; padding is 0 (background).
    """

    native_shape: tuple[int, int]
    resampled_shape: tuple[int, int]
    size: tuple[int, int]
    offset: tuple[int, int]

    @classmethod
    def plan(
        cls,
        shape: Sequence[int],
        spacing: Sequence[float] | None = None,
        target_spacing: float | Sequence[float] | None = None,
        size: int | Sequence[int] | None = None,
        center: Sequence[float] | None = None,
    ) -> "PlaneTransform":
        """Plan the transform of one image.

        Args:
            shape: the native array's shape ``(..., H, W)`` (its last two entries are used).
            spacing: native pixel size in mm ``(s_H, s_W)`` (``record.in_plane_spacing``); ``None``
                (unknown) disables resampling.
            target_spacing: pixel size to resample to, one value or ``(t_H, t_W)``; ``None`` keeps the grid.
                The resampled shape is ``round(n * s / t)``, so the exact output pixel size is
                :meth:`output_spacing`.
            size: output ``(H, W)`` (or one value for a square); ``None`` keeps the resampled shape.
            center: the native pixel ``(row, col)`` placed at the output's centre (e.g. the centre of the
                heart); default: the image centre.
        """
        native = _positive_pair(tuple(shape[-2:]), "shape (H, W)", integer=True)
        if spacing is not None and target_spacing is not None:
            s, t = _positive_pair(spacing, "spacing"), _positive_pair(target_spacing, "target_spacing")
            resampled = tuple(max(1, int(round(n * a / b))) for n, a, b in zip(native, s, t))
        else:
            resampled = native
        out = resampled if size is None else _positive_pair(size, "size", integer=True)
        if center is None:
            offset = tuple((o - r) // 2 for o, r in zip(out, resampled))
        else:
            # native pixel centre c sits at resampled coordinate (c + 0.5) * r / n - 0.5
            offset = tuple(
                int(round((o - 1) / 2 - ((c + 0.5) * r / n - 0.5)))
                for o, r, n, c in zip(out, resampled, native, _pair(center, "center"))
            )
        return cls(native, resampled, out, offset)

    @classmethod
    def for_record(
        cls,
        record,
        target_spacing: float | Sequence[float] | None = None,
        size: int | Sequence[int] | None = None,
        center: Sequence[float] | None = None,
    ) -> "PlaneTransform":
        """:meth:`plan` for the slices of a :class:`~crocnet.data.Record` (shape ``(H, W, Z)``)."""
        return cls.plan(record.image.shape[:2], record.in_plane_spacing, target_spacing, size, center)

    def output_spacing(self, spacing: Sequence[float]) -> tuple[float, float]:
        """Pixel size in mm of the output frame given the native in-plane ``spacing`` ``(s_H, s_W)``."""
        return tuple(float(a) * n / r for a, n, r in zip(spacing, self.native_shape, self.resampled_shape))

    def apply(self, x, kind: str = "image"):
        """Native → output frame. ``x``: ``(..., H, W)`` array or tensor; returns the same type and dtype.

        ``kind``: ``"image"`` (bilinear), ``"label"`` (nearest) or ``"probabilities"`` (bilinear).
        """
        t, back = _as_tensor(x, self.native_shape, kind)
        return back(_place(_resample(t, self.resampled_shape, kind), self.size, self.offset))

    def invert(self, y, kind: str = "label"):
        """Output frame → native grid. ``y``: ``(..., h_out, w_out)``; pixels cropped away come back as 0.

        ``kind="probabilities"`` (or ``"image"``) interpolates bilinearly, e.g. softmax maps ``(C, h, w)``
        before an argmax on the native grid; ``kind="label"`` uses nearest neighbours.
        """
        t, back = _as_tensor(y, self.size, kind)
        undo = tuple(-o for o in self.offset)
        return back(_resample(_place(t, self.resampled_shape, undo), self.native_shape, kind))


def _as_tensor(x, expected: tuple[int, int], kind: str):
    """``x`` as a tensor (sharing memory) and the function that converts a result back to ``x``'s type."""
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
    if tuple(x.shape[-2:]) != tuple(expected):
        raise ValueError(f"expected an array (..., {expected[0]}, {expected[1]}), got shape {tuple(x.shape)}")
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x)), lambda t: t.numpy()
    return x, lambda t: t


def _resample(t: torch.Tensor, shape: tuple[int, int], kind: str) -> torch.Tensor:
    if tuple(t.shape[-2:]) == tuple(shape):
        return t
    lead = t.shape[:-2]
    flat = t.reshape(-1, 1, *t.shape[-2:])
    work = flat.float() if not flat.is_floating_point() else flat
    if kind == "label":
        out = F.interpolate(work, size=shape, mode="nearest-exact")
    else:
        shrinking = shape[0] < t.shape[-2] or shape[1] < t.shape[-1]
        out = F.interpolate(work, size=shape, mode="bilinear", align_corners=False, antialias=shrinking)
    if not t.is_floating_point():
        out = out.round()
    return out.to(t.dtype).reshape(*lead, *shape)


def _place(t: torch.Tensor, shape: tuple[int, int], offset: tuple[int, int]) -> torch.Tensor:
    """Copy ``t`` into a zero frame of ``shape`` with its first pixel at ``offset`` (crops what falls outside)."""
    out = t.new_zeros(*t.shape[:-2], *shape)
    src, dst = [], []
    for n, m, o in zip(t.shape[-2:], shape, offset):
        lo, hi = max(0, -o), min(n, m - o)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo + o, hi + o))
    out[(..., *dst)] = t[(..., *src)]
    return out
