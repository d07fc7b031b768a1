"""Records → 2D training tensors in the network's frame, and back.

Every 2D slice is normalised (percentiles 0.5–99.5 → [0, 1]) and put into an ``image_size`` square frame
by a :class:`~crocnet.data.PlaneTransform`: resampled to ``target_spacing`` mm when given (and the
spacing is known), else scaled so the whole field of view fits; then centre-padded. The transform is kept
per slice, so predictions go back onto the native grid exactly where it is invertible.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from crocnet.data import PlaneTransform, Record

from .config import TrainConfig


def normalise(image: np.ndarray) -> np.ndarray:
    """Clip to the 0.5–99.5 percentiles and scale to [0, 1] (float32); where those are equal (99 % or more of
    the pixels share a value, e.g. padding) the minimum and maximum instead; constant images become 0."""
    lo, hi = np.percentile(image, (0.5, 99.5))
    if hi <= lo:
        lo, hi = float(np.min(image)), float(np.max(image))
    if hi <= lo:
        return np.zeros_like(image, dtype=np.float32)
    return ((np.clip(image, lo, hi) - lo) / (hi - lo)).astype(np.float32)


def plan_transform(shape: tuple[int, int], spacing, image_size: int, target_spacing: float | None) -> PlaneTransform:
    """The frame transform of one slice (see the module docstring)."""
    if target_spacing is not None and spacing is not None:
        return PlaneTransform.plan(shape, spacing, target_spacing, image_size)
    s = spacing if spacing is not None else (1.0, 1.0)
    fit = max(shape[0] * s[0], shape[1] * s[1]) / image_size
    return PlaneTransform.plan(shape, s, (fit, fit), image_size)


@dataclass
class SliceSet:
    """Slices of some records in the network frame.

    Attributes:
        images: ``(M, 1, S, S)`` float32; labels ``(M, S, S)`` uint8 (0 where a record has none).
        keys: ``(record index, slice index)`` per row; transforms: the frame transform per row.
    """

    records: list[Record]
    images: torch.Tensor
    labels: torch.Tensor
    keys: list[tuple[int, int]]
    transforms: list[PlaneTransform] = field(repr=False)

    def __len__(self) -> int:
        return len(self.keys)

    def record_rows(self, index: int) -> list[int]:
        return [row for row, (r, _) in enumerate(self.keys) if r == index]


def check_spacing_known(record: Record, target_spacing, what: str, fix: str) -> None:
    """Raise a ``ValueError`` where resampling to ``target_spacing`` mm needs the voxel size ``record`` lacks
    (:func:`plan_transform` would fit its field of view instead: another scale than the model was trained
    at). ``what`` (formatted with the spacing) and ``fix`` say where the spacing comes from and what to do."""
    if target_spacing is not None and record.in_plane_spacing is None:
        raise ValueError(f"{record.name}: {what.format(target_spacing)} needs each image's voxel size, and this "
                         f"{record.dataset} record has none (h5 volumes store no spacing); {fix}")


def build_slices(records: list[Record], image_size: int, target_spacing: float | None, labelled_only: bool = False) -> SliceSet:
    images, labels, keys, transforms = [], [], [], []
    for r_index, record in enumerate(records):
        check_spacing_known(record, target_spacing, "--target-spacing {} mm", "leave --target-spacing out to fit "
                                                                             "each field of view into --image-size")
        for z in range(record.image.shape[2]):
            label = None if record.label is None else record.label[:, :, z]
            if labelled_only and (label is None or not label.any()):
                continue
            t = plan_transform(record.image.shape[:2], record.in_plane_spacing, image_size, target_spacing)
            images.append(t.apply(normalise(record.image[:, :, z]), "image"))
            labels.append(t.apply(label if label is not None else np.zeros(record.image.shape[:2], np.uint8), "label"))
            keys.append((r_index, z))
            transforms.append(t)
    if not keys:
        raise ValueError(f"no slices to use in {len(records)} records (labelled_only={labelled_only})")
    return SliceSet(
        records=records,
        images=torch.from_numpy(np.stack(images))[:, None].float(),
        labels=torch.from_numpy(np.stack(labels).astype(np.uint8)),
        keys=keys,
        transforms=transforms,
    )


def slice_key(record: Record, z: int) -> str:
    return f"{record.dataset}:{record.name}:{z}"


def config_preprocess(cfg: TrainConfig) -> dict:
    return {"image_size": cfg.image_size, "target_spacing": cfg.target_spacing}
