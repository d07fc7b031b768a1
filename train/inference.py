"""Segment records with trained checkpoints: stage 1 alone (one model or an ensemble), or the whole CroCNet
pipeline, on the native grid."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from crocnet.data import Record
from crocnet.data.validation import check_image
from crocnet.models import CroCNet, FlipTTA, MeanEnsemble, merge_binary_maps, stage1_to_labels
from crocnet.postprocess import POSTPROCESS_MODES, postprocess_labels

from .checkpoint import load_model
from .devices import resolve_device
from .report import display_name
from .samples import check_spacing_known, normalise, plan_transform


def _load_stage(path: str | Path, stage: int, device: torch.device):
    """``(model, checkpoint)`` of a checkpoint that must be of ``stage`` (checkpoints without one are stage 1)."""
    model, ckpt = load_model(path, device)
    if ckpt.get("stage", 1) != stage:
        raise ValueError(f"{path} is a stage-{ckpt.get('stage', 1)} checkpoint; expected stage {stage}")
    return model, ckpt


def check_record_image(record: Record) -> None:
    """Raise a ``ValueError`` naming ``record`` unless its image is a NumPy array ``(H, W, Z)`` (each >= 1) of a real
    numeric dtype whose voxels are all finite (:func:`~crocnet.data.validation.check_image`): a NaN voxel would
    make the normalisation of its whole slice NaN, and the slice background."""
    where = f"record {record.name}" + (f" ({record.source})" if record.source is not None else "")
    image = record.image
    expected = "expected image (H, W, Z) with H, W, Z >= 1 and a real numeric dtype"
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{where}: {expected} (a NumPy array), got a {type(image).__module__}.{type(image).__name__}"
                         + (f" of shape {tuple(image.shape)}" if hasattr(image, "shape") else ""))
    real = (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)) and image.dtype != bool
    if image.ndim != 3 or min(image.shape, default=0) < 1 or not real:
        raise ValueError(f"{where}: {expected}, got shape {image.shape} and dtype {image.dtype}")
    check_image(image, where)  # DataError (a ValueError) on NaN/inf voxels or values beyond float32


def _counted(names: Counter) -> str:
    """``"A, 2 × B"``: each model name once, with its count when above one."""
    return ", ".join(name if n == 1 else f"{n} × {name}" for name, n in sorted(names.items()))


@dataclass
class Segmentation:
    """Native-grid results for one record (arrays ``(H, W, Z)``)."""

    labels: np.ndarray  # final labels (CroCNet when a stage-2 model is given, else stage 1)
    stage1: np.ndarray
    probabilities: np.ndarray  # stage-1 probabilities (H, W, Z, 4): LV, MYO, RV, background
    fallback_slices: int  # slices where stage 1 found no heart (stage-2 not applied)


def check_same_frame(stage1_pre: dict, stage2_pre: dict, stage1_path, stage2_path) -> None:
    """Refuse a stage 2 trained on frame crops behind a stage 1 whose network frame (size, target spacing) is
    not the one it was trained behind: the crop would give it another field of view and scale. Checkpoints
    that record no ``frame`` pass."""
    if "frame" not in stage2_pre:
        return
    trained = (stage2_pre["frame"], stage2_pre.get("target_spacing"))
    given = (stage1_pre["image_size"], stage1_pre.get("target_spacing"))
    if trained != given:
        raise ValueError(f"{stage2_path} was trained on crops of a {trained[0]} px stage-1 frame (target spacing "
                         f"{trained[1]}), got {stage1_path} with a {given[0]} px frame (target spacing {given[1]}): the "
                         f"crops would have another field of view and scale. Give the stage 1 it was trained behind")


class Segmenter:
    """Load stage-1 checkpoint(s) (and optionally a stage-2 one) and segment records slice by slice.

    Every slice is resampled to each network's frame (the preprocessing its checkpoint records); the
    probabilities, not the labels, are taken back to the native grid (bilinear) and decoded there: stage 1
    by argmax over LV, MYO, RV and background, CroCNet by thresholding the pasted stage-2 maps
    (:func:`~crocnet.models.merge_binary_maps`).

    Args:
        stage1: a stage-1 checkpoint (``.pt``, ``.safetensors`` or run folder), or several: an ensemble
            whose native-grid probabilities are averaged (each member keeps its own input size). With a
            stage 2 trained on native crops, CroCNet crops around the ensemble's labels; a stage 2 trained
            on frame crops takes one stage-1 model (the frame is that model's).
        stage2: a stage-2 checkpoint: also run the whole CroCNet pipeline (``labels``); or several, trained
            on the same kind of crop (crop source, crop size, margin), e.g. seeds: one stage 2 averaging their
            probabilities in the crop (:class:`~crocnet.models.MeanEnsemble`).
        margin: the crop margin in pixels of the grid cropped (default: the one stage 2 was trained with).
            Stage 2 crops where it was trained to: the network frame of stage 1, or (checkpoints trained with
            ``--crop-from native``) the native image, around the stage-1 labels decoded on the native grid.
        postprocess: one of :data:`crocnet.postprocess.POSTPROCESS_MODES` (default ``"none"``): remove
            islands from the stage-1 and the final label volumes once they are assembled on the native
            grid (:func:`crocnet.postprocess.postprocess_labels`); the probabilities are left as they are.
        tta: wrap every network in :class:`~crocnet.models.FlipTTA` (mean over the four flips; four
            times the inference cost).
    """

    def __init__(self, stage1: str | Path | Sequence[str | Path], stage2: str | Path | Sequence[str | Path] | None = None, device: str = "cpu",
                 margin: int | None = None, batch_size: int = 8, postprocess: str = "none", tta: bool = False):
        if postprocess not in POSTPROCESS_MODES:
            raise ValueError(f"postprocess must be one of {POSTPROCESS_MODES}, got {postprocess!r}")
        if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, (bool, np.bool_)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer (slices per forward pass), got {batch_size!r}")
        batch_size = int(batch_size)
        paths = [stage1] if isinstance(stage1, (str, Path)) else list(stage1)
        if not paths:
            raise ValueError("need at least one stage-1 checkpoint")
        self.postprocess, self.tta, self.batch_size = postprocess, tta, batch_size
        self.device = resolve_device(str(device), "device")
        self.members = []  # (model, preprocessing) per stage-1 checkpoint
        kinds = Counter()
        for path in paths:
            model, ckpt = _load_stage(path, 1, self.device)
            self.members.append((FlipTTA(model) if tta else model, ckpt["preprocess"]))
            kinds[display_name(ckpt["model"], ckpt.get("model_kwargs"))] += 1
        self.names = {"stage 1": f"stage 1 ({_counted(kinds)})" if len(paths) == 1
                      else f"stage 1 (ensemble of {len(paths)}: {_counted(kinds)})"}
        self.pipeline, self.crop_from = None, None
        paths2 = [] if stage2 is None else [stage2] if isinstance(stage2, (str, Path)) else list(stage2)
        if paths2:
            models2, crops = [], {}
            for path in paths2:
                model2, ckpt2 = _load_stage(path, 2, self.device)
                pre = ckpt2["preprocess"]
                crops[str(path)] = (pre.get("crop_from", "frame"), pre["image_size"], pre.get("margin", 15))  # frame: checkpoints before native crops
                models2.append((model2, ckpt2))
            if len(set(crops.values())) > 1:
                raise ValueError("the stage-2 checkpoints of one ensemble must be trained on the same crops (crop source, "
                                 "crop size, margin); got " + "; ".join(f"{p}: {c}" for p, c in crops.items()))
            self.crop_from, crop_size, trained_margin = next(iter(crops.values()))
            if len(paths) > 1 and self.crop_from != "native":
                raise ValueError(f"CroCNet with frame crops takes one stage-1 checkpoint, got {len(paths)}: {paths2[0]} was "
                                 f"trained on crops of stage 1's network frame; an ensemble needs a stage 2 trained "
                                 f"with --crop-from native (or evaluate the ensemble without --stage2)")
            if self.crop_from == "frame":
                check_same_frame(self.members[0][1], models2[0][1]["preprocess"], paths[0], paths2[0])
            if margin is None:
                margin = trained_margin
            nets = [FlipTTA(m) if tta else m for m, _ in models2]
            self.pipeline = CroCNet(self.members[0][0], nets[0] if len(nets) == 1 else MeanEnsemble(nets),
                                    crop_size=crop_size, margin=margin).eval()
            kinds2 = _counted(Counter(display_name(c["model"]) for _, c in models2))
            self.names["CroCNet"] = f"CroCNet ({kinds2})" if len(nets) == 1 else f"CroCNet (stage 2: ensemble of {len(nets)}: {kinds2})"

    @torch.inference_mode()
    def segment(self, record: Record) -> Segmentation:
        check_record_image(record)
        for _, pre in self.members:
            check_spacing_known(record, pre["target_spacing"], "a model trained at {} mm (its checkpoint's "
                                "target_spacing)", "segment images whose files give their voxel size")
        H, W, Z = record.image.shape
        labels = np.zeros((H, W, Z), np.uint8)
        probs = np.zeros((H, W, Z, 4), np.float32)
        fell = np.zeros(Z, bool)  # slices where stage 1 found no heart: CroCNet keeps the stage-1 labels
        images = np.stack([normalise(record.image[:, :, z]) for z in range(Z)])  # (Z, H, W), native grid
        for model, pre in self.members:
            t = plan_transform((H, W), record.in_plane_spacing, pre["image_size"], pre["target_spacing"])
            frames = torch.stack([torch.from_numpy(t.apply(images[z], "image")) for z in range(Z)])
            for start in range(0, Z, self.batch_size):
                x = frames[start : start + self.batch_size, None].float().to(self.device)
                p1 = model.predict(x).float()
                probs[:, :, start : start + x.shape[0]] += np.moveaxis(t.invert(p1.cpu().numpy(), "probabilities"), (0, 1), (2, 3))
                if self.pipeline is None or self.crop_from == "native":
                    continue
                out = self.pipeline.refine(x, stage1_to_labels(p1))
                fell[start : start + x.shape[0]] = out.fallback.cpu().numpy()
                native2 = torch.from_numpy(t.invert(out.probabilities.float().cpu().numpy(), "probabilities"))
                labels[:, :, start : start + x.shape[0]] = merge_binary_maps(native2, self.pipeline.threshold).permute(1, 2, 0).numpy()
        probs /= len(self.members)
        stage1 = stage1_to_labels(torch.from_numpy(probs).permute(2, 3, 0, 1)).permute(1, 2, 0).numpy().astype(np.uint8)
        if self.pipeline is None:
            labels = stage1.copy()
        elif self.crop_from == "native":
            s1 = torch.from_numpy(stage1).permute(2, 0, 1).long()
            for start in range(0, Z, self.batch_size):
                stop = min(start + self.batch_size, Z)
                x = torch.from_numpy(images[start:stop, None]).to(self.device)
                out = self.pipeline.refine(x, s1[start:stop].to(self.device))
                fell[start:stop] = out.fallback.cpu().numpy()
                labels[:, :, start:stop] = out.labels.permute(1, 2, 0).cpu().numpy()
        else:
            labels[:, :, fell] = stage1[:, :, fell]
        if self.postprocess != "none":
            stage1 = postprocess_labels(stage1, self.postprocess)
            labels = postprocess_labels(labels, self.postprocess)
        return Segmentation(labels, stage1, probs, int(fell.sum()))
