"""CroCNet's crop (paper §3.3, Fig. 2): find the heart in the stage-1 prediction, crop, resize, paste back.

The heart is the largest connected component of the stage-1 foreground (every pixel not labelled
background); its bounding box, grown by ``margin`` pixels on every side and clipped to the image, is the
crop. Image and masks are cut to the box and resized to the stage-2 size; stage-2 outputs are resized back
to the box and pasted onto the original grid. Everything is batched: B images, one box each.

Differences from the authors' script: the foreground is every pixel the stage-1 labels (the argmax over
background, LV, MYO, RV, the labels the stage-2 masks are made from) do not call background, theirs every
pixel whose background sigmoid is below 0.5 (the sigmoid channels are independent: the two differ where no
class is confident); the component is the largest by pixel count (theirs: by bounding-box area); the margin
is ``margin`` on every side, clipped at the image border side by side (theirs is ``margin`` above and left,
``margin − 1`` below and right, and 1 px / 0 px when the top or left margin would leave the image); and
crops are resized to the stage-2 size (theirs are zero-padded or centre-cropped to 128).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .arguments import is_integral


@dataclass(frozen=True)
class CropBox:
    """A half-open pixel box ``[top, bottom) × [left, right)`` on the original image grid."""

    top: int
    left: int
    bottom: int
    right: int

    def __post_init__(self):
        values = (self.top, self.left, self.bottom, self.right)
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
            raise TypeError(f"CropBox expects integer pixel bounds, got {values}")
        if min(self.top, self.left) < 0 or self.bottom <= self.top or self.right <= self.left:
            raise ValueError(
                f"CropBox expects 0 <= top < bottom and 0 <= left < right, got top={self.top}, left={self.left}, "
                f"bottom={self.bottom}, right={self.right}"
            )

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def slices(self) -> tuple[slice, slice]:
        """``(rows, cols)`` slices: ``image[..., *box.slices]`` is the crop."""
        return slice(self.top, self.bottom), slice(self.left, self.right)


#: the ``mode`` values of :func:`crop_and_resize` and :func:`paste_back` (``F.interpolate``'s, for 2D maps)
RESIZE_MODES = ("nearest", "nearest-exact", "bilinear", "bicubic", "area")


def as_size(size, name: str = "size") -> tuple[int, int]:
    """``size`` (an int or ``(h, w)``) as ``(h, w)`` of positive ints, or a ``ValueError`` saying what was got."""
    pair = (size, size) if is_integral(size) else size
    try:
        pair = tuple(pair)
    except TypeError:
        pair = ()
    if len(pair) != 2 or not all(is_integral(n) and n > 0 for n in pair):
        raise ValueError(f"{name} must be a positive int or (h, w) of positive ints, got {size!r}")
    return int(pair[0]), int(pair[1])


def check_margin(margin) -> None:
    if not is_integral(margin) or margin < 0:
        raise ValueError(f"margin must be an int >= 0 (pixels), got {margin!r}")


def check_connectivity(connectivity) -> None:
    if isinstance(connectivity, bool) or connectivity not in (1, 2):
        raise ValueError(f"connectivity must be 1 (edge neighbours) or 2 (also diagonal), got {connectivity!r}")


def _check_mask(mask, name: str = "foreground") -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.size == 0:
        raise ValueError(f"expected a non-empty (H, W) {name} mask, got shape {mask.shape}")
    if mask.dtype == bool:
        return mask
    if np.issubdtype(mask.dtype, np.integer) and np.isin(mask, (0, 1)).all():
        return mask.astype(bool)
    raise ValueError(
        f"expected a boolean {name} mask (or 0/1 integers; e.g. labels != 0, probabilities > 0.5), "
        f"got dtype {mask.dtype} with values in [{mask.min()}, {mask.max()}]"
    )


def largest_component(mask: np.ndarray, connectivity: int = 1) -> np.ndarray:
    """The largest connected component (by pixel count) of a boolean ``(H, W)`` mask, as a boolean mask.

    ``connectivity`` 1 joins edge neighbours (4-connectivity, ``scipy.ndimage.label``'s default), 2 also
    diagonal ones. Ties go to the component met first in raster order; an empty mask gives an empty mask.
    """
    check_connectivity(connectivity)
    structure = ndimage.generate_binary_structure(2, connectivity)
    labelled, count = ndimage.label(_check_mask(mask), structure=structure)
    if count == 0:
        return np.zeros(labelled.shape, dtype=bool)
    sizes = np.bincount(labelled.ravel())[1:]
    return labelled == 1 + int(np.argmax(sizes))


def heart_box(foreground: np.ndarray, margin: int = 15, connectivity: int = 1) -> CropBox | None:
    """Box of the largest component of a boolean ``(H, W)`` foreground, grown by ``margin`` px on every
    side and clipped to the image; ``None`` when there is no foreground."""
    check_margin(margin)
    component = largest_component(foreground, connectivity)
    rows, cols = np.flatnonzero(component.any(axis=1)), np.flatnonzero(component.any(axis=0))
    if rows.size == 0:
        return None
    H, W = component.shape
    return CropBox(
        top=max(int(rows[0]) - margin, 0),
        left=max(int(cols[0]) - margin, 0),
        bottom=min(int(rows[-1]) + 1 + margin, H),
        right=min(int(cols[-1]) + 1 + margin, W),
    )


def heart_boxes(foreground: torch.Tensor, margin: int = 15, connectivity: int = 1) -> list[CropBox | None]:
    """:func:`heart_box` of every image of a boolean ``(B, H, W)`` foreground (on any device)."""
    if not isinstance(foreground, torch.Tensor):
        raise TypeError(f"expected a boolean (B, H, W) torch tensor (use heart_box for one NumPy mask), "
                        f"got {type(foreground).__name__}")
    if foreground.dim() != 3:
        raise ValueError(f"expected a (B, H, W) foreground mask, got shape {tuple(foreground.shape)}")
    if foreground.dtype != torch.bool:
        raise ValueError(f"expected a boolean (B, H, W) foreground mask (e.g. labels != 0), got {foreground.dtype}")
    masks = foreground.detach().cpu().numpy()
    return [heart_box(mask, margin, connectivity) for mask in masks]


def _check_resize(x: torch.Tensor, mode: str, what: str) -> None:
    if mode not in RESIZE_MODES:
        raise ValueError(f"mode must be one of {RESIZE_MODES}, got {mode!r}")
    if x.dtype == torch.bool:
        if mode not in ("nearest", "nearest-exact"):
            raise ValueError(f"boolean masks are resized with mode 'nearest' or 'nearest-exact', got {mode!r}")
    elif not x.is_floating_point() and mode not in ("nearest", "nearest-exact"):
        raise TypeError(f"{what} of dtype {x.dtype} are resized with mode 'nearest' or 'nearest-exact' (or pass floats), "
                        f"got {mode!r}")


def _resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    if x.dtype == torch.bool:
        return F.interpolate(x.to(torch.uint8), size=size, mode=mode).bool()
    if not x.is_floating_point() and x.dtype != torch.uint8:  # nearest only: values copied, exact below 2**53
        return F.interpolate(x.double(), size=size, mode=mode).to(x.dtype)
    if mode in ("bilinear", "bicubic"):
        return F.interpolate(x, size=size, mode=mode, align_corners=False)
    return F.interpolate(x, size=size, mode=mode)


def _check_boxes(boxes: Sequence[CropBox | None], count: int, image_size: tuple[int, int], what: str) -> None:
    if isinstance(boxes, CropBox) or not isinstance(boxes, Sequence):
        raise TypeError(f"expected a sequence of CropBox, one per {what}, got {type(boxes).__name__}")
    if len(boxes) != count:
        raise ValueError(f"need one box per {what}: {count} {what}s, {len(boxes)} boxes")
    H, W = image_size
    for i, box in enumerate(boxes):
        if not isinstance(box, CropBox):
            raise ValueError(
                f"box {i}: expected a CropBox, got {box!r}"
                + (" (no foreground found: give that image a box of its own, e.g. CropBox(0, 0, H, W))" if box is None else "")
            )
        if box.bottom > H or box.right > W:
            raise ValueError(f"box {i}: {box} reaches outside the {H}x{W} image")


def crop_and_resize(
    x: torch.Tensor, boxes: Sequence[CropBox], size: int | tuple[int, int], mode: str = "bilinear"
) -> torch.Tensor:
    """Cut ``boxes[i]`` out of image i of ``x (B, C, H, W)`` and resize every crop to ``size``: ``(B, C, h, w)``.

    Use ``mode="bilinear"`` for intensities and ``"nearest-exact"`` for masks (they stay binary) and
    integer label maps (they keep their dtype); ``mode`` is one of :data:`RESIZE_MODES`.
    """
    size = as_size(size)
    if x.dim() != 4:
        raise ValueError(f"expected images (B, C, H, W), got shape {tuple(x.shape)}")
    _check_resize(x, mode, "images")
    _check_boxes(boxes, x.shape[0], tuple(x.shape[-2:]), "image")
    crops = [_resize(x[i : i + 1, :, box.slices[0], box.slices[1]], size, mode) for i, box in enumerate(boxes)]
    return torch.cat(crops) if crops else x.new_empty((0, x.shape[1], *size))


def paste_back(
    crops: torch.Tensor,
    boxes: Sequence[CropBox],
    image_size: tuple[int, int],
    fill: float = 0.0,
    mode: str = "bilinear",
) -> torch.Tensor:
    """Resize crop i of ``crops (B, C, h, w)`` to ``boxes[i]`` and place it on a ``fill``-valued canvas of
    ``image_size (H, W)``: ``(B, C, H, W)``. Inverse of :func:`crop_and_resize` up to resampling."""
    if crops.dim() != 4:
        raise ValueError(f"expected crops (B, C, h, w), got shape {tuple(crops.shape)}")
    image_size = as_size(image_size, "image_size")
    _check_resize(crops, mode, "crops")
    _check_boxes(boxes, crops.shape[0], image_size, "crop")
    out = crops.new_full((crops.shape[0], crops.shape[1], *image_size), fill)
    for i, box in enumerate(boxes):
        out[i, :, box.slices[0], box.slices[1]] = _resize(crops[i : i + 1], (box.height, box.width), mode)[0]
    return out
