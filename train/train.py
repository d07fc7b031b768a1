"""``crocnet train``: stage 1 (E-2AUNet and baselines) or stage 2 (specialists on out-of-fold crops).

Run folders: ``OUT/splits.json`` (subject-level test split and folds), ``OUT/stage1-<model>/fold<k>/`` and
``OUT/stage2-<model>/fold<k>/`` with ``config.json``, ``versions.json``, ``log.jsonl``, ``curves.png``,
``last.pt`` (resumable), ``best.pt`` and ``best.safetensors`` (weights + description). A stage-1 fold also
writes ``oof.pt``: its predictions on its own validation subjects (a model that never trained on them),
from which stage 2 makes its crops::

    crocnet train --data data/phantom --stage 1 --fold all --epochs 100 --out runs/exp
    crocnet train --data data/phantom --stage 2 --fold 0 --stage1-run runs/exp/stage1-e2aunet --out runs/exp

Under ``torchrun --nproc_per_node=N`` the batches are sharded over the processes (DDP).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import torch

from crocnet.crop import CropBox, crop_and_resize, heart_boxes
from crocnet.data import DataError, kfold, load_dataset
from crocnet.models import label_masks, stage1_targets, stage1_to_labels, stage2_inputs

from .checkpoint import atomic_save, atomic_write_text, load_model
from .config import TrainConfig, add_arguments, config_from_args
from .engine import fit, resolve_device
from .samples import build_slices, config_preprocess, slice_key

STAGE1_CHANNELS = ["LV", "MYO", "RV"]


def load_records(cfg: TrainConfig):
    root = Path(cfg.data)
    if cfg.dataset in ("phantom", "mnm2"):
        return load_dataset("mnm2", root, views=cfg.views)
    return load_dataset(cfg.dataset, root)


def make_split(subjects: list[str], cfg: TrainConfig) -> dict:
    """Subject-level test split (``test_fraction``) and ``folds`` cross-validation folds of the rest."""
    subjects = sorted(set(subjects))
    rng = random.Random(cfg.split_seed)
    shuffled = subjects[:]
    rng.shuffle(shuffled)
    n_test = int(round(cfg.test_fraction * len(subjects)))
    test = sorted(shuffled[:n_test])
    pool = sorted(shuffled[n_test:])
    return {"seed": cfg.split_seed, "test": test, "pool": pool, "folds": kfold(pool, cfg.folds, cfg.split_seed)}


def prepare_split(cfg: TrainConfig, records, out: Path) -> dict:
    path = out / "splits.json"
    if cfg.split_file:
        given = json.loads(Path(cfg.split_file).read_text())
        test = sorted(given.get("official", {}).get("test", []))
        pool = sorted({s for f in given["folds"] for s in f["val"]})
        split = {"seed": given.get("seed"), "test": test, "pool": pool, "folds": given["folds"], "source": cfg.split_file}
    else:
        split = make_split([r.subject for r in records], cfg)
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved["pool"] != split["pool"] or saved["test"] != split["test"]:
            raise ValueError(f"{path} was made from other subjects or settings; use another --out or delete it")
        return saved
    atomic_write_text(path, json.dumps(split, indent=2))
    return split


def _is_volume(records) -> bool:
    return any(r.image.shape[2] > 1 for r in records)


def run_stage1(cfg: TrainConfig, records, split: dict, out: Path) -> list[Path]:
    runs = []
    stage_dir = out / f"stage1-{cfg.resolved_model()}"
    for k in cfg.folds_to_run():
        fold = split["folds"][k]
        train_recs = [r for r in records if r.subject in set(fold["train"])]
        val_recs = [r for r in records if r.subject in set(fold["val"])]
        tr = build_slices(train_recs, cfg.image_size, cfg.target_spacing, labelled_only=_is_volume(train_recs))
        va = build_slices(val_recs, cfg.image_size, cfg.target_spacing)
        print(f"stage 1 fold {k}: {len(train_recs)} train images ({len(tr)} slices), {len(val_recs)} validation images ({len(va)} slices)")
        run_dir = stage_dir / f"fold{k}"
        fit(cfg, run_dir, tr.images, stage1_targets(tr.labels), va.images, stage1_targets(va.labels),
            STAGE1_CHANNELS, k, config_preprocess(cfg))
        write_oof(run_dir, va, cfg)
        runs.append(run_dir)
    return runs


@torch.inference_mode()
def write_oof(run_dir: Path, slices, cfg: TrainConfig) -> Path:
    """Predictions of this fold's best model on its validation slices (out of fold), in the network frame."""
    model, _ = load_model(run_dir / "best.pt", resolve_device(cfg.device))
    preds = {}
    device = next(model.parameters()).device
    for idx in torch.arange(len(slices)).split(16):
        labels = stage1_to_labels(model.predict(slices.images[idx].to(device))).to(torch.uint8).cpu()
        for i, row in enumerate(idx.tolist()):
            r, z = slices.keys[row]
            preds[slice_key(slices.records[r], z)] = labels[i]
    return atomic_save(preds, run_dir / "oof.pt")


def read_oof(stage1_run: Path) -> dict:
    stage1_run = Path(stage1_run)
    files = sorted(stage1_run.glob("fold*/oof.pt"))
    if not files:
        raise FileNotFoundError(f"no out-of-fold predictions (fold*/oof.pt) under {stage1_run}; train stage 1 with --fold all first")
    preds = {}
    for f in files:
        preds.update(torch.load(f, map_location="cpu", weights_only=False))
    return preds


def stage2_tensors(slices, oof: dict, crop: int, margin: int):
    """Crops of the frame images and of the out-of-fold stage-1 masks (inputs) and of the truth (targets)."""
    keys = [slice_key(slices.records[r], z) for r, z in slices.keys]
    missing = sorted({k.split(":")[1] for k in keys if k not in oof})
    if missing:
        raise ValueError(f"no out-of-fold stage-1 prediction for {len(missing)} images (e.g. {missing[:3]}); "
                         f"the stage-1 run must cover every fold")
    s1 = torch.stack([oof[k].long() for k in keys])
    boxes = heart_boxes(s1 != 0, margin)
    # where stage 1 missed the heart, the whole frame is the crop (training still sees the image)
    whole = CropBox(0, 0, s1.shape[1], s1.shape[2])
    missed = sum(b is None for b in boxes)
    boxes = [whole if b is None else b for b in boxes]
    keep = [i for i in range(len(keys)) if slices.labels[i].any()]
    if not keep:
        raise ValueError("no slice with a labelled heart to train stage 2 on")
    kept_boxes = [boxes[i] for i in keep]
    x = stage2_inputs(slices.images[keep], s1[keep], kept_boxes, crop)
    y = crop_and_resize(label_masks(slices.labels[keep].long()), kept_boxes, crop, mode="nearest-exact")
    return x, y, missed


def run_stage2(cfg: TrainConfig, records, split: dict, out: Path) -> list[Path]:
    oof = read_oof(Path(cfg.stage1_run))
    s1_cfg = json.loads((Path(cfg.stage1_run) / "fold0" / "config.json").read_text()) if (Path(cfg.stage1_run) / "fold0" / "config.json").is_file() else {}
    frame = s1_cfg.get("image_size", cfg.image_size)
    spacing = s1_cfg.get("target_spacing", cfg.target_spacing)
    runs = []
    stage_dir = out / f"stage2-{cfg.resolved_model()}"
    for k in cfg.folds_to_run():
        fold = split["folds"][k]
        tr = build_slices([r for r in records if r.subject in set(fold["train"])], frame, spacing, labelled_only=True)
        va = build_slices([r for r in records if r.subject in set(fold["val"])], frame, spacing, labelled_only=True)
        x, y, skipped = stage2_tensors(tr, oof, cfg.image_size, cfg.crop_margin)
        vx, vy, vskipped = stage2_tensors(va, oof, cfg.image_size, cfg.crop_margin)
        print(f"stage 2 fold {k}: {len(x)} training crops, {len(vx)} validation crops "
              f"(stage 1 missed the heart in {skipped + vskipped}: whole frame used)")
        run_dir = stage_dir / f"fold{k}"
        fit(cfg, run_dir, x, y, vx, vy, STAGE1_CHANNELS, k, {"image_size": cfg.image_size, "frame": frame, "target_spacing": spacing, "margin": cfg.crop_margin})
        runs.append(run_dir)
    return runs


def run(cfg: TrainConfig) -> list[Path]:
    cfg.validate()
    t0 = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    records = load_records(cfg)
    if not records:
        raise DataError(f"no images found in {cfg.data} for --dataset {cfg.dataset}")
    split = prepare_split(cfg, records, out)
    runs = run_stage1(cfg, records, split, out) if cfg.stage == 1 else run_stage2(cfg, records, split, out)
    if os.environ.get("RANK", "0") == "0":  # under torchrun only the first process writes logs
        print(training_summary(runs, time.perf_counter() - t0))
    return runs


def training_summary(runs: list[Path], seconds: float) -> str:
    """A few lines per fold from its ``log.jsonl``: epochs, best validation Dice (and where), last loss."""
    lines = [f"trained {len(runs)} fold(s) in {seconds:.0f} s:"]
    for run_dir in runs:
        log = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines() if x.strip()]
        scored = [r for r in log if "val_dice_mean" in r]
        best = max(scored, key=lambda r: r["val_dice_mean"]) if scored else None
        text = f"  {run_dir}: {len(log)} epochs, final train loss {log[-1]['train_loss']:.4f}" if log else f"  {run_dir}: no epochs"
        if best:
            per = ", ".join(f"{n} {best[f'val_dice_{n}']:.3f}" for n in STAGE1_CHANNELS if f"val_dice_{n}" in best)
            text += f"; best validation Dice {best['val_dice_mean']:.4f} at epoch {best['epoch']} ({per})"
        lines.append(text)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="crocnet train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    args = ap.parse_args(argv)
    try:
        cfg = config_from_args(args)
        run(cfg)
    except (ValueError, FileNotFoundError, DataError, RuntimeError) as exc:
        print(f"crocnet train: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
