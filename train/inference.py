"""Segment records with trained checkpoints: stage 1 alone, or the whole CroCNet pipeline, on the native grid."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from crocnet.data import Record
from crocnet.models import CroCNet, stage1_to_labels
from crocnet.postprocess import POSTPROCESS_MODES, postprocess_labels

from .checkpoint import load_model
from .report import display_name
from .samples import normalise, plan_transform


@dataclass
class Segmentation:
    """Native-grid results for one record (arrays ``(H, W, Z)``)."""

    labels: np.ndarray  # final labels (CroCNet when a stage-2 model is given, else stage 1)
    stage1: np.ndarray
    probabilities: np.ndarray  # stage-1 probabilities (H, W, Z, 4): LV, MYO, RV, background
    fallback_slices: int  # slices where stage 1 found no heart (stage-2 not applied)


class Segmenter:
    """Load a stage-1 checkpoint (and optionally a stage-2 one) and segment records slice by slice.

    ``postprocess`` (one of :data:`crocnet.postprocess.POSTPROCESS_MODES`, default ``"none"``) removes
    islands from the stage-1 and the final label volumes once they are assembled on the native grid
    (:func:`crocnet.postprocess.postprocess_labels`); the probabilities are left as the network gave them.
    """

    def __init__(self, stage1: str | Path, stage2: str | Path | None = None, device: str = "cpu", margin: int | None = None,
                 batch_size: int = 8, postprocess: str = "none"):
        if postprocess not in POSTPROCESS_MODES:
            raise ValueError(f"postprocess must be one of {POSTPROCESS_MODES}, got {postprocess!r}")
        self.postprocess = postprocess
        self.device = torch.device(device)
        self.stage1, self.ckpt1 = load_model(stage1, self.device)
        if self.ckpt1.get("stage", 1) != 1:
            raise ValueError(f"{stage1} is a stage-{self.ckpt1.get('stage')} checkpoint; expected stage 1")
        self.pre = self.ckpt1["preprocess"]
        self.pipeline = None
        self.names = {"stage 1": f"stage 1 ({display_name(self.ckpt1['model'])})"}
        if stage2 is not None:
            model2, ckpt2 = load_model(stage2, self.device)
            if ckpt2.get("stage") != 2:
                raise ValueError(f"{stage2} is a stage-{ckpt2.get('stage')} checkpoint; expected stage 2")
            crop = ckpt2["preprocess"]["image_size"]
            if margin is None:
                margin = ckpt2["preprocess"].get("margin", 15)
            self.pipeline = CroCNet(self.stage1, model2, crop_size=crop, margin=margin).eval()
            self.names["CroCNet"] = f"CroCNet ({display_name(ckpt2['model'])})"
        self.batch_size = batch_size

    @torch.inference_mode()
    def segment(self, record: Record) -> Segmentation:
        H, W, Z = record.image.shape
        labels = np.zeros((H, W, Z), np.uint8)
        stage1 = np.zeros((H, W, Z), np.uint8)
        probs = np.zeros((H, W, Z, 4), np.float32)
        fallback = 0
        transforms = [plan_transform((H, W), record.in_plane_spacing, self.pre["image_size"], self.pre["target_spacing"])
                      for _ in range(Z)]
        frames = torch.stack([torch.from_numpy(t.apply(normalise(record.image[:, :, z]), "image")) for z, t in enumerate(transforms)])
        for start in range(0, Z, self.batch_size):
            x = frames[start : start + self.batch_size, None].float().to(self.device)
            p1 = self.stage1.predict(x)
            l1 = stage1_to_labels(p1)
            if self.pipeline is not None:
                out = self.pipeline(x)
                final, fallback = out.labels, fallback + int(out.fallback.sum())
            else:
                final = l1
            for i in range(x.shape[0]):
                t = transforms[start + i]
                z = start + i
                stage1[:, :, z] = t.invert(l1[i].to(torch.uint8).cpu().numpy(), "label")
                labels[:, :, z] = t.invert(final[i].to(torch.uint8).cpu().numpy(), "label")
                probs[:, :, z] = np.moveaxis(t.invert(p1[i].float().cpu().numpy(), "probabilities"), 0, -1)
        if self.postprocess != "none":
            stage1 = postprocess_labels(stage1, self.postprocess)
            labels = postprocess_labels(labels, self.postprocess)
        return Segmentation(labels, stage1, probs, fallback)
