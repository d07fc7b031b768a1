"""``crocnet train``: stage 1 (E-2AUNet and baselines) or stage 2 (specialists on out-of-fold crops).

Run folders: ``OUT/splits.json`` (subject-level test split and folds), ``OUT/stage1-<model>/fold<k>/`` and
``OUT/stage2-<model>/fold<k>/`` with ``config.json``, ``versions.json``, ``log.jsonl``, ``curves.png``,
``last.pt`` (resumable), ``best.pt`` and ``best.safetensors`` (weights + description). A stage-1 fold also
writes ``oof.pt`` and ``oof_native.pt``: its predictions on its own validation subjects (a model that
never trained on them) in the network frame and on the native grid, from which stage 2 makes its crops
(``--crop-from native``, the default: the paper's crop of the original image, or ``frame``: of stage 1's
resampled input)::

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
import warnings
from pathlib import Path

import torch

from crocnet.atomic import atomic_write_text
from crocnet.crop import CropBox, crop_and_resize, heart_box
from crocnet.data import DataError, kfold, load_dataset, read_splits
from crocnet.data.validation import name_list
from crocnet.models import STAGE1_TARGET_FILL, label_masks, stage1_targets, stage1_to_labels, stage2_inputs
from crocnet.outputs import check_output_folder

from .checkpoint import atomic_save, load_model, load_torch_file
from .config import TrainConfig, add_arguments, config_from_args
from .devices import resolve_device
from .engine import check_new_run, fit, is_main_process
from .samples import build_slices, config_preprocess, normalise, slice_key

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
    return {"seed": cfg.split_seed, "test_fraction": cfg.test_fraction, "test": test, "pool": pool,
            "folds": kfold(pool, cfg.folds, cfg.split_seed)}


def prepare_split(cfg: TrainConfig, records, out: Path) -> dict:
    path = out / "splits.json"
    if cfg.split_file:
        given = read_splits(cfg.split_file)  # checked: no subject in two parts or folds, keys present
        test = sorted(given.get("official", {}).get("test", []))
        pool = sorted({s for f in given["folds"] for s in f["val"]})
        split = {"seed": given.get("seed"), "test": test, "pool": pool, "folds": given["folds"], "source": cfg.split_file}
    else:
        split = make_split([r.subject for r in records], cfg)
    check_split_subjects(split, records, cfg)
    if path.is_file():
        saved = read_splits(path)
        check_same_split(saved, split, path, cfg)
        return saved
    atomic_write_text(path, json.dumps(split, indent=2))
    return split


def check_split_subjects(split: dict, records, cfg: TrainConfig) -> None:
    """Refuse a fold to train whose training or validation subjects are none of the data's (a split of other data);
    warn when only some are missing (a partial download trains on fewer subjects than the split lists)."""
    present = sorted({r.subject for r in records})
    source = f"--split-file {cfg.split_file}" if cfg.split_file else "the split"
    for k in cfg.folds_to_run():
        for part, what in (("train", "training"), ("val", "validation")):
            wanted = sorted(split["folds"][k][part])
            missing = sorted(set(wanted) - set(present))
            if len(missing) == len(wanted):
                raise ValueError(f"{source}: fold {k}'s {what} subjects ({name_list(wanted) or 'none'}) are not in "
                                 f"--data {cfg.data} (subjects there: {name_list(present) or 'none'}); use a split of this data")
            if missing:
                warnings.warn(f"{source}: {len(missing)} of fold {k}'s {len(wanted)} {what} subjects are not in --data "
                              f"{cfg.data} ({name_list(missing)}); fold {k} uses the {len(wanted) - len(missing)} present",
                              stacklevel=2)


def check_same_split(saved: dict, split: dict, path: Path, cfg: TrainConfig) -> None:
    """Refuse to train on ``saved`` (``OUT/splits.json``) when ``split`` (this run's) has other settings or subjects."""
    same_fraction = "test_fraction" not in saved or saved["test_fraction"] == split.get("test_fraction")
    if (saved.get("seed") != split["seed"] or len(saved["folds"]) != len(split["folds"]) or not same_fraction
            or bool(saved.get("source")) != bool(split.get("source"))):
        unused = ("; no fold has been trained on it (a run refused before its first fold left it): delete it to "
                  "start over" if not _trained_on(path.parent) else "")
        raise ValueError(f"{path} has {_split_settings(saved)}, got {_requested_split(cfg, split)}; "
                         f"use the same settings or another --out{unused}")
    if saved.get("pool") != split["pool"] or saved.get("test") != split["test"] or saved["folds"] != split["folds"]:
        raise ValueError(f"{path} was made from other subjects or settings; use another --out or delete it")


def _trained_on(out: Path) -> bool:
    """Whether any fold under ``out`` has a checkpoint (or is being trained: a log)."""
    return any((d / name).exists() for d in out.glob("stage*/fold*") for name in ("last.pt", "best.pt", "log.jsonl"))


def _split_settings(split: dict) -> str:
    how = f"from {split['source']}" if split.get("source") else f"seed {split.get('seed')}"
    if "test_fraction" in split:
        how += f", test fraction {split['test_fraction']}"
    return f"{len(split['folds'])} folds ({how})"


def _requested_split(cfg: TrainConfig, split: dict) -> str:
    if cfg.split_file:
        return f"--split-file {cfg.split_file} ({len(split['folds'])} folds)"
    return f"--folds {cfg.folds} --split-seed {cfg.split_seed} --test-fraction {cfg.test_fraction}"


def _is_volume(records) -> bool:
    return any(r.image.shape[2] > 1 for r in records)


def run_dirs(cfg: TrainConfig, out: Path) -> list[Path]:
    """The run folders of the folds this command trains: ``OUT/stage<s>-<model>/fold<k>``."""
    return [out / f"stage{cfg.stage}-{cfg.resolved_model()}" / f"fold{k}" for k in cfg.folds_to_run()]


def run_stage1(cfg: TrainConfig, records, split: dict, out: Path) -> list[Path]:
    runs = []
    for k, run_dir in zip(cfg.folds_to_run(), run_dirs(cfg, out)):
        fold = split["folds"][k]
        train_recs = [r for r in records if r.subject in set(fold["train"])]
        val_recs = [r for r in records if r.subject in set(fold["val"])]
        tr = build_slices(train_recs, cfg.image_size, cfg.target_spacing, labelled_only=_is_volume(train_recs))
        va = build_slices(val_recs, cfg.image_size, cfg.target_spacing)
        print(f"stage 1 fold {k}: {len(train_recs)} train images ({len(tr)} slices), {len(val_recs)} validation images ({len(va)} slices)")
        fit(cfg, run_dir, tr.images, stage1_targets(tr.labels), va.images, stage1_targets(va.labels),
            STAGE1_CHANNELS, k, config_preprocess(cfg),
            label_fill=STAGE1_TARGET_FILL if cfg.outside_label == "background" else 0.0)
        if is_main_process():  # one process writes them, as it writes the checkpoints
            write_oof(run_dir, va, cfg)
        runs.append(run_dir)
    return runs


@torch.inference_mode()
def write_oof(run_dir: Path, slices, cfg: TrainConfig) -> Path:
    """Out-of-fold predictions of this fold's best model on its validation slices: ``oof.pt`` (label maps
    in the network frame) and ``oof_native.pt`` (on each slice's native grid)."""
    model, _ = load_model(run_dir / "best.pt", resolve_device(cfg.device))
    frame, native = oof_predictions(model, slices)
    atomic_save(native, run_dir / "oof_native.pt")
    return atomic_save(frame, run_dir / "oof.pt")


@torch.inference_mode()
def oof_predictions(model, slices, batch_size: int = 16) -> tuple[dict, dict]:
    """Stage-1 label maps of every slice, keyed by :func:`slice_key`: ``(S, S)`` in the network frame, and
    ``(H, W)`` on the native grid, decoded there from the resampled probabilities as inference does."""
    frame, native = {}, {}
    device = next(model.parameters()).device
    for idx in torch.arange(len(slices)).split(batch_size):
        probs = model.predict(slices.images[idx].to(device)).float().cpu()
        labels = stage1_to_labels(probs).to(torch.uint8)
        for i, row in enumerate(idx.tolist()):
            r, z = slices.keys[row]
            key = slice_key(slices.records[r], z)
            frame[key] = labels[i]
            native[key] = stage1_to_labels(slices.transforms[row].invert(probs[i], "probabilities")[None])[0].to(torch.uint8)
    return frame, native


def read_oof(stage1_run: Path, crop_from: str = "native") -> dict:
    stage1_run = Path(stage1_run)
    name = "oof.pt" if crop_from == "frame" else "oof_native.pt"
    files = sorted(stage1_run.glob(f"fold*/{name}"))
    if not files:
        hint = ("train stage 1 with --fold all first" if crop_from == "frame" or not any(stage1_run.glob("fold*/oof.pt"))
                else "this stage-1 run predates native-grid predictions: train its folds again, or use --crop-from frame")
        raise FileNotFoundError(f"no out-of-fold predictions (fold*/{name}) under {stage1_run}; {hint}")
    preds = {}
    for f in files:
        preds.update(_read_oof_file(f))
    return preds


def _read_oof_file(path: Path) -> dict:
    """One fold's ``oof.pt`` / ``oof_native.pt``: slice key -> 2D label map, or a ValueError naming the file."""
    fix = "write it again: train that stage-1 fold once more with --resume (same --out and settings)"
    preds = load_torch_file(path, str(path), fix)
    if not isinstance(preds, dict):
        raise ValueError(f"{path} is not stage 1's out-of-fold predictions: expected a dict of slice key -> label map, "
                         f"got {type(preds).__name__}; {fix}")
    bad = [k for k, v in preds.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor) and v.dim() == 2)]
    if bad:
        hint = " (a checkpoint copied there?)" if "state_dict" in preds else ""
        raise ValueError(f"{path} is not stage 1's out-of-fold predictions: expected a dict of slice key -> 2D label map, "
                         f"got keys {name_list(map(repr, bad))}{hint}; {fix}")
    return preds


def stage2_tensors(slices, oof: dict, crop: int, margin: int, crop_from: str = "native"):
    """Crops of the images and of the out-of-fold stage-1 masks (inputs) and of the truth (targets), cut
    from each slice's native image and labels or (``crop_from="frame"``) from the network frame.
    Returns ``(x (B, C + 3, crop, crop), y (B, 3, crop, crop), missed)``, ``missed`` counting the slices where
    stage 1 found no heart (their crop is the whole image, so training still sees them)."""
    keys = [slice_key(slices.records[r], z) for r, z in slices.keys]
    missing = sorted({k.split(":")[1] for k in keys if k not in oof})
    if missing:
        raise ValueError(f"no out-of-fold stage-1 prediction for {len(missing)} images (e.g. {missing[:3]}); "
                         f"the stage-1 run must cover every fold")
    pick = _native_slice if crop_from == "native" else _frame_slice
    xs, ys, missed = [], [], 0
    for row, key in enumerate(keys):
        image, label = pick(slices, row)
        if not label.any():
            continue
        s1 = oof[key].long()
        if s1.shape != label.shape:
            raise ValueError(f"the {crop_from} stage-1 prediction of {key} is {tuple(s1.shape)}, the image "
                             f"{tuple(label.shape)}: the stage-1 run was made from other data or another frame")
        box = heart_box(s1.numpy() != 0, margin)
        if box is None:
            missed += 1
            box = CropBox(0, 0, *s1.shape)
        xs.append(stage2_inputs(image[None], s1[None], [box], crop))
        ys.append(crop_and_resize(label_masks(label[None]), [box], crop, mode="nearest-exact"))
    if not xs:
        raise ValueError("no slice with a labelled heart to train stage 2 on")
    return torch.cat(xs), torch.cat(ys), missed


def _frame_slice(slices, row: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Image ``(C, S, S)`` and labels ``(S, S)`` of one slice in the network frame."""
    return slices.images[row], slices.labels[row].long()


def _native_slice(slices, row: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised image ``(1, H, W)`` and labels ``(H, W)`` of one slice on its native grid."""
    r, z = slices.keys[row]
    record = slices.records[r]
    if record.label is None:
        return torch.zeros(0), torch.zeros(0, dtype=torch.long)
    image = torch.from_numpy(normalise(record.image[:, :, z]))[None]
    return image, torch.from_numpy(record.label[:, :, z].astype("int64"))


def run_stage2(cfg: TrainConfig, records, split: dict, out: Path) -> list[Path]:
    oof = read_oof(Path(cfg.stage1_run), cfg.crop_from)
    s1_cfg = json.loads((Path(cfg.stage1_run) / "fold0" / "config.json").read_text()) if (Path(cfg.stage1_run) / "fold0" / "config.json").is_file() else {}
    frame = s1_cfg.get("image_size", cfg.image_size)
    spacing = s1_cfg.get("target_spacing", cfg.target_spacing)
    runs = []
    for k, run_dir in zip(cfg.folds_to_run(), run_dirs(cfg, out)):
        fold = split["folds"][k]
        tr = build_slices([r for r in records if r.subject in set(fold["train"])], frame, spacing, labelled_only=True)
        va = build_slices([r for r in records if r.subject in set(fold["val"])], frame, spacing, labelled_only=True)
        x, y, skipped = stage2_tensors(tr, oof, cfg.image_size, cfg.crop_margin, cfg.crop_from)
        vx, vy, vskipped = stage2_tensors(va, oof, cfg.image_size, cfg.crop_margin, cfg.crop_from)
        print(f"stage 2 fold {k}: {len(x)} training crops, {len(vx)} validation crops from the {cfg.crop_from} "
              f"images (stage 1 missed the heart in {skipped + vskipped}: whole image used)")
        fit(cfg, run_dir, x, y, vx, vy, STAGE1_CHANNELS, k, {"image_size": cfg.image_size, "frame": frame, "target_spacing": spacing, "margin": cfg.crop_margin,
             "crop_from": cfg.crop_from})
        runs.append(run_dir)
    return runs


def run(cfg: TrainConfig) -> list[Path]:
    cfg.validate()
    t0 = time.perf_counter()
    out = check_output_folder(cfg.out, "--out", "the runs (splits.json, stage1-*/, stage2-*/)")
    if not cfg.resume:
        for run_dir in run_dirs(cfg, out):
            check_new_run(run_dir)
    records = load_records(cfg)
    if not records:
        raise DataError(f"no images found in {cfg.data} for --dataset {cfg.dataset}")
    unlabelled = [r.source or r.name for r in records if r.label is None]
    if unlabelled:
        records = [r for r in records if r.label is not None]
        if not records:
            raise DataError(f"none of the images in {cfg.data} has a label map: nothing to train on")
        print(f"skipping {len(unlabelled)} image(s) without a label map (neither trained nor validated on): "
              f"{name_list(unlabelled)}")
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
