"""Segmentation metrics: Dice and Hausdorff distances in millimetres, 2D and 3D, per structure.

Conventions
-----------
* Masks are boolean (or 0/1) arrays of any dimension; label maps are integer arrays in the project's
  convention (0 background, 1 LV blood pool, 2 LV myocardium, 3 RV blood pool). NumPy arrays and CPU or
  CUDA torch tensors are accepted.
* ``spacing`` is one voxel size in mm per array axis (``None``: 1 per axis, distances in voxels).
* **Axes of length 1 are dropped** (with their spacing) before surfaces are taken: a long-axis image stored
  as ``(H, W, 1)`` is a 2D image, not a one-voxel slab whose every voxel lies on the surface.
* The surface of a mask is the mask minus its erosion by the face-connected structuring element, with
  voxels on the array border counting as surface (exactly as ``medpy.metric.binary`` does).

Hausdorff distances
-------------------
``hausdorff_distance(pred, gt, spacing)`` is the largest distance from a surface voxel of one mask to the
nearest surface voxel of the other, both directions. With ``percentile=95`` it is medpy's ``hd95``: the
95th percentile (``numpy.percentile``, linear interpolation) of the *pooled* directed surface distances
``pred → gt`` and ``gt → pred``, which is what the CroCNet code reported.

Empty-mask policy
-----------------
================  ==========  =========================
case              ``dice``    ``hausdorff_distance``
================  ==========  =========================
both empty        1.0         0.0
one empty         0.0         NaN ("undefined")
================  ==========  =========================

No metric raises on empty masks, so a batch never crashes. (Arrays with no voxels at all, size 0, are
not masks of an image and are refused.) NaN is never averaged away silently:
:func:`summarize` reports the mean over the defined values *and* how many values were undefined, and
evaluation code should print both (e.g. ``HD95 LV 3.1 mm (2 of 40 cases undefined)``).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage

#: the structures of the project's label convention, value -> name
STRUCTURES: dict[int, str] = {1: "LV", 2: "MYO", 3: "RV"}

__all__ = [
    "STRUCTURES",
    "MetricSummary",
    "dice",
    "hausdorff_distance",
    "segmentation_metrics",
    "summarize",
    "surface_distances",
]


def _as_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor on any device
        x = x.detach().cpu()
        x = (x.float() if x.is_floating_point() and x.element_size() < 4 else x).numpy()  # bfloat16 has no NumPy dtype
    return np.asarray(x)


def _binary(name: str, x) -> np.ndarray:
    x = _as_numpy(x)
    if x.dtype != bool and not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"{name} must be a mask (bool or 0/1), got dtype {x.dtype}; for structure k of a label map "
                         f"pass (labels == k)")
    if x.dtype != bool:
        other = (x != 0) & (x != 1)
        if other.any():
            raise ValueError(f"{name} must be a mask (bool or 0/1), got the value {x[other].flat[0].item()!r}; for "
                             f"structure k of a label map pass (labels == k)")
    return x.astype(bool)


def _as_masks(pred, gt) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = _binary("pred", pred), _binary("gt", gt)
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt must have the same shape, got {pred.shape} and {gt.shape}")
    if pred.size == 0 or pred.ndim == 0:
        raise ValueError(f"expected non-empty arrays of at least one dimension, got shape {pred.shape}")
    return pred, gt


def _labels(name: str, x, allowed: set[int]) -> np.ndarray:
    """``x`` as a NumPy label map, after checking (as ``crocnet.data.validation.check_label`` does) that it is
    numeric and every value is an integer in ``allowed``."""
    x = _as_numpy(x)
    if not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"{name}: expected an integer label map, got dtype {x.dtype}")
    values = np.unique(x)
    bad = values[~np.isin(values, sorted(allowed))]  # NaN, inf and non-integers are never in `allowed`
    if bad.size:
        raise ValueError(f"{name}: expected integer labels in {{{', '.join(map(str, sorted(allowed)))}}}, "
                         f"got {', '.join(f'{v:g}' for v in bad[:5])}{', ...' if bad.size > 5 else ''}")
    return x


def _check_structures(structures) -> None:
    valid = isinstance(structures, Mapping) and len(structures) > 0 and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) and v != 0 and isinstance(n, str)
        for v, n in structures.items()
    )
    if not valid:
        raise ValueError(f"structures must be a non-empty mapping of label value (int, not 0) -> name, e.g. {STRUCTURES}, "
                         f"got {structures!r}")


def _percentile(percentile) -> float:
    if isinstance(percentile, bool) or not isinstance(percentile, numbers.Real) or not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be a number in [0, 100] (e.g. 95 for HD95), got {percentile!r}")
    return float(percentile)


def _spacing(spacing, ndim: int) -> np.ndarray:
    if spacing is None:
        return np.ones(ndim)
    spacing = np.asarray(spacing, dtype=np.float64).ravel()
    if spacing.size != ndim:
        raise ValueError(f"spacing must have one value per axis ({ndim}), got {tuple(spacing.tolist())}")
    if not np.all(np.isfinite(spacing) & (spacing > 0)):
        raise ValueError(f"spacing must be finite and > 0, got {tuple(spacing.tolist())}")
    return spacing


def dice(pred, gt) -> float:
    """Dice overlap ``2|P ∩ G| / (|P| + |G|)`` of two masks of the same shape (any dimension).

    Returns 1.0 when both masks are empty and 0.0 when exactly one is (see the module's policy).
    """
    pred, gt = _as_masks(pred, gt)
    total = int(pred.sum()) + int(gt.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, gt).sum()) / total


def _surface(mask: np.ndarray) -> np.ndarray:
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def surface_distances(pred, gt, spacing=None) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances in mm: ``(pred → gt, gt → pred)``.

    Element ``i`` of the first array is the distance from the ``i``-th surface voxel of ``pred`` (in C
    order) to the nearest surface voxel of ``gt``; the second is the reverse. Both masks must be non-empty.
    Computed with one Euclidean distance transform per direction on the bounding box of the two masks.

    Args:
        pred, gt: masks of the same shape, 2D or 3D (axes of length 1 are dropped).
        spacing: voxel size in mm per axis of the input, or ``None`` for voxel units.
    """
    pred, gt = _as_masks(pred, gt)
    sp = _spacing(spacing, pred.ndim)
    if not pred.any() or not gt.any():
        raise ValueError("surface distances need two non-empty masks (see hausdorff_distance for the policy)")
    keep = np.array([n > 1 for n in pred.shape])
    if keep.any() and not keep.all():  # drop singleton axes (a single slice is 2D)
        shape = tuple(n for n in pred.shape if n > 1)
        pred, gt, sp = pred.reshape(shape), gt.reshape(shape), sp[keep]
    # Crop to the union's bounding box plus one voxel (clamped to the array): erosion and nearest surface
    # voxels are unchanged, and the distance transforms are much smaller.
    union = pred | gt
    box = tuple(
        slice(max(int(idx.min()) - 1, 0), min(int(idx.max()) + 2, n))
        for idx, n in zip(np.nonzero(union), union.shape)
    )
    pred_surface, gt_surface = _surface(pred[box]), _surface(gt[box])
    to_gt = ndimage.distance_transform_edt(~gt_surface, sampling=sp)
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=sp)
    return to_gt[pred_surface], to_pred[gt_surface]


def hausdorff_distance(pred, gt, spacing=None, percentile: float | None = None) -> float:
    """Symmetric Hausdorff distance between the surfaces of two masks, in mm.

    Args:
        pred, gt: masks of the same shape, 2D or 3D (axes of length 1 are dropped).
        spacing: voxel size in mm per axis, or ``None`` for voxel units.
        percentile: ``None`` for the maximum (classic Hausdorff); ``95`` for medpy's HD95, the 95th
            percentile of the pooled directed surface distances in both directions (any number in [0, 100]).

    Returns:
        The distance; 0.0 when both masks are empty and NaN when exactly one is (see the module's policy).
    """
    pred, gt = _as_masks(pred, gt)
    _spacing(spacing, pred.ndim)  # checked even where the masks make it unused
    if percentile is not None:
        _percentile(percentile)
    has_pred, has_gt = bool(pred.any()), bool(gt.any())
    if not has_pred and not has_gt:
        return 0.0
    if has_pred != has_gt:
        return math.nan
    to_gt, to_pred = surface_distances(pred, gt, spacing)
    if percentile is None:
        return float(max(to_gt.max(), to_pred.max()))
    return float(np.percentile(np.concatenate([to_gt, to_pred]), percentile))


def segmentation_metrics(
    pred,
    gt,
    spacing=None,
    structures: Mapping[int, str] = STRUCTURES,
    percentile: float = 95,
) -> dict[str, dict[str, float]]:
    """Dice, Hausdorff (max) and HD at ``percentile`` for each structure of a pair of label maps.

    Args:
        pred, gt: integer label maps of the same shape, 2D or 3D (e.g. a long-axis slice ``(H, W)`` or
            ``(H, W, 1)``, a short-axis stack ``(H, W, Z)``).
        spacing: voxel size in mm per axis, or ``None`` for voxel units.
        structures: label value -> structure name (default: 1 LV, 2 MYO, 3 RV).
        percentile: the percentile of the second Hausdorff distance, a number in [0, 100] (95 → key
            ``"hd95"``); not ``None``, since the maximum is always reported as ``"hd"``.

    Returns:
        ``{name: {"dice": d, "hd": h, "hd95": h95}}`` per structure, following the module's empty-mask
        policy (NaN Hausdorff distances where exactly one of the two masks of a structure is empty).

    Raises:
        ValueError: a label value that is not an integer in {0, 1, 2, 3} or a key of ``structures`` (e.g.
            4.5, NaN, 7), label maps of different shapes or of size 0, a bad ``spacing`` or ``percentile``.
    """
    percentile = _percentile(percentile)
    _check_structures(structures)
    allowed = {0, *STRUCTURES, *structures}
    pred, gt = _labels("pred", pred, allowed), _labels("gt", gt, allowed)
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt must have the same shape, got {pred.shape} and {gt.shape}")
    key = f"hd{percentile:g}"
    out = {}
    for value, name in structures.items():
        p, g = pred == value, gt == value
        out[name] = {
            "dice": dice(p, g),
            "hd": hausdorff_distance(p, g, spacing),
            key: hausdorff_distance(p, g, spacing, percentile=percentile),
        }
    return out


@dataclass(frozen=True)
class MetricSummary:
    """Summary of one metric over cases: statistics of the defined (finite) values and the count of the rest.

    Attributes:
        mean, std, median: over the ``n_defined`` finite values (NaN when there are none).
        n: number of cases.
        n_undefined: cases whose value is NaN (e.g. a Hausdorff distance with exactly one empty mask).
    """

    mean: float
    std: float
    median: float
    n: int
    n_undefined: int

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        text = f"{self.mean:.4g} ± {self.std:.3g} (n={self.n}"
        return text + (f", {self.n_undefined} undefined)" if self.n_undefined else ")")


def summarize(values: Sequence[float]) -> MetricSummary:
    """Mean, std and median of the finite values, with the number of cases and of NaN (undefined) ones.

    Infinite values are not expected from this module and are rejected, as is anything that is not a real
    number (``None`` would otherwise become NaN and pass for an undefined case).
    """
    values = list(values)
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (numbers.Real, np.floating, np.integer)):
            raise TypeError(f"summarize takes real numbers (NaN for an undefined case), got {v!r} at index {i}")
    values = np.asarray(values, dtype=np.float64)
    if np.isinf(values).any():
        raise ValueError("summarize got an infinite value; metrics here are finite or NaN")
    defined = values[~np.isnan(values)]
    if defined.size == 0:
        return MetricSummary(math.nan, math.nan, math.nan, int(values.size), int(values.size))
    return MetricSummary(
        mean=float(defined.mean()),
        std=float(defined.std()),
        median=float(np.median(defined)),
        n=int(values.size),
        n_undefined=int(values.size - defined.size),
    )
