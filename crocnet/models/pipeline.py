"""The whole CroCNet pipeline as one module: stage 1 → crop → stage 2 → paste back → label map."""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..crop import CropBox, as_size, check_connectivity, check_margin, crop_and_resize, heart_boxes, paste_back


@dataclass
class CroCNetOutput:
    """What :class:`CroCNet` returns for a batch of B images of size H × W.

    Attributes:
        labels: ``(B, H, W)`` int64 label map: 0 background, 1 LV, 2 MYO, 3 RV.
        stage1_labels: ``(B, H, W)`` int64, the stage-1 label map (same convention).
        boxes: per image, the crop box on the input grid, or ``None`` where stage 1 found no heart.
        fallback: ``(B,)`` bool, True where stage 1 found no heart and ``labels`` is ``stage1_labels``.
        probabilities: ``(B, 3, H, W)``, the stage-2 probabilities (LV, MYO, RV) pasted on the input grid,
            0 outside the box and for fallback images; resample these (bilinear) rather than ``labels`` to
            take the result to another grid, then :func:`merge_binary_maps`.
    """

    labels: torch.Tensor
    stage1_labels: torch.Tensor
    boxes: list[CropBox | None]
    fallback: torch.Tensor
    probabilities: torch.Tensor


def check_labels(labels: torch.Tensor, what: str = "labels") -> None:
    """Raise unless ``labels`` is an integer label map ``(B, H, W)`` with values in 0 bg, 1 LV, 2 MYO, 3 RV."""
    if not isinstance(labels, torch.Tensor) or labels.dim() != 3:
        shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"expected {what} (B, H, W) (0 bg, 1 LV, 2 MYO, 3 RV), got {shape}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"expected integer {what} (0 bg, 1 LV, 2 MYO, 3 RV), got dtype {labels.dtype}")
    if labels.numel() and (labels.min() < 0 or labels.max() > 3):
        raise ValueError(f"expected {what} in 0..3 (0 bg, 1 LV, 2 MYO, 3 RV), got values in "
                         f"[{labels.min().item()}, {labels.max().item()}]")


def label_masks(labels: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Label map ``(B, H, W)`` (0 bg, 1 LV, 2 MYO, 3 RV) → binary masks ``(B, 3, H, W)`` in order LV, MYO, RV:
    the stage-2 mask channels, and the stage-2 training targets."""
    check_labels(labels)
    return _label_masks(labels, dtype)


def _label_masks(labels: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return F.one_hot(labels.long(), 4)[..., 1:].permute(0, 3, 1, 2).to(dtype)


#: :func:`stage1_targets` of a background pixel: what augmentation fills in outside the field of view.
STAGE1_TARGET_FILL = (0.0, 0.0, 0.0, 1.0)


def stage1_targets(labels: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Label map ``(B, H, W)`` → one-hot ``(B, 4, H, W)`` in the stage-1 channel order (LV, MYO, RV, background)."""
    masks = label_masks(labels, dtype)
    return torch.cat([masks, (labels == 0).unsqueeze(1).to(dtype)], dim=1)


def stage2_inputs(
    image: torch.Tensor, stage1_labels: torch.Tensor, boxes: list[CropBox], crop_size: int | tuple[int, int]
) -> torch.Tensor:
    """The stage-2 input of B crops: image ``(B, C, H, W)`` cut to ``boxes`` and resized (bilinear) to
    ``crop_size``, then the LV, MYO and RV masks of ``stage1_labels (B, H, W)`` likewise (nearest):
    ``(B, C + 3, h, w)``. Crop the ground truth for stage-2 training with
    ``crop_and_resize(label_masks(gt), boxes, crop_size, mode="nearest-exact")``."""
    check_images(image, "stage2_inputs")
    if stage1_labels.shape != (image.shape[0], *image.shape[-2:]):
        raise ValueError(f"stage2_inputs: expected stage-1 labels (B, H, W) on the image's grid "
                         f"{(image.shape[0], *image.shape[-2:])}, got {tuple(stage1_labels.shape)}")
    check_labels(stage1_labels)
    return _stage2_inputs(image, stage1_labels, boxes, crop_size)


def _stage2_inputs(image, stage1_labels, boxes, crop_size) -> torch.Tensor:
    """:func:`stage2_inputs` on inputs already checked (one check per entry point: each is a device sync)."""
    return torch.cat(
        [
            crop_and_resize(image, boxes, crop_size, mode="bilinear"),
            crop_and_resize(_label_masks(stage1_labels, image.dtype), boxes, crop_size, mode="nearest-exact"),
        ],
        dim=1,
    )


def stage1_to_labels(probs: torch.Tensor) -> torch.Tensor:
    """Stage-1 probabilities ``(B, 4, H, W)`` in channel order (LV, MYO, RV, background) → labels ``(B, H, W)``:
    the argmax over (background, LV, MYO, RV), i.e. 0 bg, 1 LV, 2 MYO, 3 RV. Used for sigmoid and softmax heads."""
    if probs.dim() != 4 or probs.shape[1] != 4:
        raise ValueError(
            f"expected stage-1 probabilities (B, 4, H, W) ordered LV, MYO, RV, background, got {tuple(probs.shape)}"
        )
    return torch.cat([probs[:, 3:], probs[:, :3]], dim=1).argmax(dim=1)


def check_threshold(threshold) -> None:
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not 0 < threshold <= 1:
        raise ValueError(f"threshold must be a probability in (0, 1], got {threshold!r}")


def check_images(image: torch.Tensor, owner: str) -> None:
    """Raise unless ``image`` is a non-empty floating-point ``(B, C, H, W)`` batch of finite values."""
    if not isinstance(image, torch.Tensor) or image.dim() != 4:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"{owner}: expected images (B, C, H, W), got {shape}")
    if 0 in image.shape:
        raise ValueError(f"{owner}: expected non-empty images (B, C, H, W), got {tuple(image.shape)}")
    if not image.is_floating_point():
        raise TypeError(f"{owner}: expected floating-point images, got {image.dtype}")
    bad = (~torch.isfinite(image)).flatten(1).any(dim=1).nonzero().flatten().tolist()
    if bad:
        raise ValueError(f"{owner}: expected finite images, got NaN or inf in image(s) {bad} of the batch")


def merge_binary_maps(probs: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Three binary probability maps ``(B, 3, H, W)`` (LV, MYO, RV) → labels ``(B, H, W)``.

    A pixel is background unless some map reaches ``threshold`` (in (0, 1]); then it takes the label (1 LV,
    2 MYO, 3 RV) of the most probable map, which also settles overlaps.
    """
    if not isinstance(probs, torch.Tensor) or probs.dim() != 4 or probs.shape[1] != 3:
        shape = tuple(probs.shape) if isinstance(probs, torch.Tensor) else type(probs).__name__
        raise ValueError(f"expected binary probability maps (B, 3, H, W) ordered LV, MYO, RV, got {shape}")
    check_threshold(threshold)
    best, index = probs.max(dim=1)
    return torch.where(best >= threshold, index + 1, torch.zeros_like(index))


_STAGE1_MAPS, _STAGE2_MAPS = ("LV", "MYO", "RV", "background"), ("LV", "MYO", "RV")


def _size_divisor(stage: nn.Module) -> int:
    return int(getattr(stage, "size_divisor", 1))


def check_stages(stage1: nn.Module, stage2: nn.Module) -> None:
    """Raise unless both stages have ``predict`` and, where they declare them, CroCNet's channel counts:
    stage 1 ``num_classes == 4``, stage 2 ``num_classes == 3`` and ``in_chans`` = stage 1's + 3."""
    for name, stage in (("stage1", stage1), ("stage2", stage2)):
        if not callable(getattr(stage, "predict", None)):
            raise TypeError(f"CroCNet's {name} must be a model with a predict method (e.g. E2AUNet, SpecialistNets), "
                            f"got {type(stage).__name__}")
    for name, stage, maps in (("stage1", stage1, _STAGE1_MAPS), ("stage2", stage2, _STAGE2_MAPS)):
        n = getattr(stage, "num_classes", None)
        if n is not None and n != len(maps):
            raise ValueError(f"CroCNet's {name} must predict {len(maps)} maps ({', '.join(maps)}), "
                             f"got num_classes={n} ({type(stage).__name__})")
    c1, c2 = getattr(stage1, "in_chans", None), getattr(stage2, "in_chans", None)
    if c1 is not None and c2 is not None and c2 != c1 + 3:
        raise ValueError(f"CroCNet's stage2 takes the image and the 3 stage-1 masks: in_chans = stage 1's {c1} + 3 = "
                         f"{c1 + 3}, got {c2}")


class CroCNet(nn.Module):
    """Crop and Couple: image ``(B, C, H, W)`` of any size → :class:`CroCNetOutput` (label map 0 bg, 1 LV,
    2 MYO, 3 RV on the input grid, crop boxes, fallback flags).

    1. ``stage1`` (an :class:`~crocnet.models.E2AUNet`, 4 output channels LV, MYO, RV, background) runs on
       the image, zero-padded (centred) to a multiple of its ``size_divisor``; :func:`stage1_to_labels`.
    2. The crop: the largest connected component of the stage-1 foreground (labels ≠ 0), box grown by
       ``margin`` px and clipped (:mod:`crocnet.crop`). Image (bilinear) and the stage-1 LV, MYO and RV masks
       (one-hot of the stage-1 labels, nearest) are cut to the box and resized to ``crop_size``.
    3. ``stage2`` (:class:`~crocnet.models.SpecialistNets` or ``crocnet_single``: input image + 3 masks,
       output 3 logit maps LV, MYO, RV) runs on the crops; its sigmoid probabilities are resized back to
       the box (bilinear) and pasted on the input grid, probability 0 outside the box (the crop removes
       stage-1 outliers there); :func:`merge_binary_maps` with ``threshold`` gives the labels.
    4. Images where stage 1 finds no foreground keep the stage-1 labels, with ``fallback`` set.

    Both stages run in whatever mode the module is in: call ``.eval()`` and run it under
    ``torch.inference_mode()`` for inference.

    Checked before anything runs: the stages fit together (:func:`check_stages`), ``crop_size`` is positive
    and a multiple of stage 2's ``size_divisor``, ``margin`` an int >= 0, ``threshold`` in (0, 1],
    ``connectivity`` 1 or 2; images are non-empty, floating point and finite (a NaN image would otherwise
    come back as "no heart", background everywhere).
    """

    def __init__(
        self,
        stage1: nn.Module,
        stage2: nn.Module,
        crop_size: int | tuple[int, int] = 128,
        margin: int = 15,
        threshold: float = 0.5,
        connectivity: int = 1,
    ):
        super().__init__()
        check_stages(stage1, stage2)
        self.crop_size = as_size(crop_size, "crop_size")
        divisor = _size_divisor(stage2)
        if any(s % divisor for s in self.crop_size):
            raise ValueError(f"crop_size {self.crop_size} must be a multiple of stage 2's size_divisor {divisor}")
        check_margin(margin)
        check_threshold(threshold)
        check_connectivity(connectivity)
        self.stage1, self.stage2 = stage1, stage2
        self.margin, self.threshold, self.connectivity = margin, threshold, connectivity

    def stage1_probabilities(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` of any size → stage-1 probabilities ``(B, 4, H, W)`` (LV, MYO, RV, background)."""
        H, W = image.shape[-2:]
        m = _size_divisor(self.stage1)
        ph, pw = -H % m, -W % m
        top, left = ph // 2, pw // 2
        padded = F.pad(image, (left, pw - left, top, ph - top))
        return self.stage1.predict(padded)[..., top : top + H, left : left + W]

    def forward(self, image: torch.Tensor) -> CroCNetOutput:
        check_images(image, "CroCNet")
        return self._refine(image, stage1_to_labels(self.stage1_probabilities(image)))

    def refine(self, image: torch.Tensor, stage1_labels: torch.Tensor) -> CroCNetOutput:
        """Steps 2–4 on given stage-1 labels ``(B, H, W)`` of ``image (B, C, H, W)``: crop, stage 2, paste back
        (for callers that already have the stage-1 output, so stage 1 is not run twice)."""
        check_images(image, "CroCNet")
        if stage1_labels.shape != (image.shape[0], *image.shape[-2:]):
            raise ValueError(
                f"expected images (B, C, H, W) and stage-1 labels (B, H, W) on the same grid, got "
                f"{tuple(image.shape)} and {tuple(stage1_labels.shape)}"
            )
        check_labels(stage1_labels, "stage-1 labels")
        return self._refine(image, stage1_labels)

    def _refine(self, image: torch.Tensor, stage1_labels: torch.Tensor) -> CroCNetOutput:
        stage1_labels = stage1_labels.long()
        H, W = image.shape[-2:]
        boxes = heart_boxes(stage1_labels != 0, self.margin, self.connectivity)
        found = [i for i, box in enumerate(boxes) if box is not None]
        labels = stage1_labels.clone()
        pasted = image.new_zeros((image.shape[0], 3, H, W), dtype=torch.float32)
        if found:
            kept = [boxes[i] for i in found]
            probs = self.stage2.predict(_stage2_inputs(image[found], stage1_labels[found], kept, self.crop_size))
            expected = (len(found), 3, *self.crop_size)
            if not isinstance(probs, torch.Tensor) or probs.shape != expected:
                got = tuple(probs.shape) if isinstance(probs, torch.Tensor) else type(probs).__name__
                raise ValueError(f"CroCNet: stage 2 must predict (B, 3, h, w) = {expected} on the crops (LV, MYO, RV), "
                                 f"got {got}")
            pasted[found] = paste_back(probs, kept, (H, W)).float()
            labels[found] = merge_binary_maps(pasted[found], self.threshold)
        fallback = torch.tensor([box is None for box in boxes], dtype=torch.bool, device=image.device)
        return CroCNetOutput(labels=labels, stage1_labels=stage1_labels, boxes=boxes, fallback=fallback,
                             probabilities=pasted)
