"""Connected-component post-processing of label maps (the "keep the largest component" step of nnU-Net).

A segmentation network sometimes labels a few pixels far from the heart (a bright vessel, a stomach
wall); one such island barely moves the Dice but sets the Hausdorff distance to the island's distance.
The heart is one connected object and each of its structures is one connected object, so islands can be
removed without looking at the image:

* ``"heart"``: keep the largest connected component of the foreground (all structures together); every
  other foreground voxel becomes background. A structure touching the heart is kept even when it is in
  pieces of its own.
* ``"structures"``: keep, per structure, its largest connected component.
* ``"both"``: ``"heart"``, then ``"structures"``.

Components are face-connected (6-neighbourhood in 3D, 4 in 2D) over all axes of the array, so a short-axis
stack ``(H, W, Z)`` is treated as one 3D object, as nnU-Net does; axes of length 1 connect nothing, so a
long-axis image ``(H, W, 1)`` is post-processed in 2D. Removed voxels become background (0), never
another structure. Whether a mode helps is an empirical question for each model and dataset: measure it
on validation data (``crocnet evaluate --postprocess``) before using it on a test set.
"""

from __future__ import annotations

from collections.abc import Sequence, Set

import numpy as np
from scipy import ndimage

__all__ = ["POSTPROCESS_MODES", "keep_largest_component", "postprocess_labels"]

#: accepted ``mode`` values of :func:`postprocess_labels`
POSTPROCESS_MODES = ("none", "heart", "structures", "both")


def keep_largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest face-connected component of a boolean ``mask`` (any dimension), as a new boolean array.

    An empty mask is returned empty. Ties between equally large components keep the first in scan order.
    """
    mask = np.asarray(mask)
    if mask.dtype != bool:
        raise TypeError(f"keep_largest_component: expected a boolean mask, got dtype {mask.dtype}")
    components, count = ndimage.label(mask)
    if count <= 1:
        return mask.copy()
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == int(np.argmax(sizes))


def _structure_values(structures) -> tuple[int, ...]:
    """``structures`` as a tuple of ints, or a ``TypeError``/``ValueError`` saying what was expected."""
    expected = "postprocess_labels: expected structures as a non-empty sequence of ints (label values, e.g. (1, 2, 3))"
    if isinstance(structures, np.ndarray):
        if structures.ndim != 1 or not np.issubdtype(structures.dtype, np.integer):
            raise TypeError(f"{expected}, got an array of shape {structures.shape} and dtype {structures.dtype}")
        structures = structures.tolist()
    if isinstance(structures, (str, bytes)) or not isinstance(structures, (Sequence, Set)):
        raise TypeError(f"{expected}, got {type(structures).__name__} {structures!r}")
    bad = [v for v in structures if not isinstance(v, (int, np.integer)) or isinstance(v, (bool, np.bool_))]
    if bad:
        raise TypeError(f"{expected}, got {structures!r} (not ints: {', '.join(map(repr, bad))})")
    if not structures:
        raise ValueError(f"{expected}, got an empty {type(structures).__name__}")
    if 0 in structures:
        raise ValueError(f"{expected}, got {structures!r} (0 is the background, not a structure)")
    return tuple(int(v) for v in structures)


def postprocess_labels(labels: np.ndarray, mode: str = "both", structures=(1, 2, 3)) -> np.ndarray:
    """Remove islands from an integer label map ``labels`` (any shape, 0 = background); returns a new array.

    Args:
        labels: label map, e.g. ``(H, W)`` or ``(H, W, Z)``, integer dtype.
        mode: one of :data:`POSTPROCESS_MODES` (see the module docstring); ``"none"`` returns a copy.
        structures: the label values treated as structures, a non-empty sequence of ints other than 0
            (default the project's 1 LV, 2 MYO, 3 RV).
    """
    if not isinstance(mode, str) or mode not in POSTPROCESS_MODES:
        raise ValueError(f"post-processing mode must be one of {POSTPROCESS_MODES}, got {mode!r}")
    structures = _structure_values(structures)
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"postprocess_labels: expected an integer label map, got dtype {labels.dtype}")
    out = labels.copy()
    if mode in ("heart", "both"):
        foreground = np.isin(out, structures)
        out[foreground & ~keep_largest_component(foreground)] = 0
    if mode in ("structures", "both"):
        for value in structures:
            mask = out == value
            out[mask & ~keep_largest_component(mask)] = 0
    return out
