"""Out-of-fold stage-1 predictions (``oof.pt``, ``oof_native.pt``) from exported fold checkpoints, so stage 2
can be trained on a cross-validation whose stage-1 run folders are gone (e.g. from committed safetensors)::

    python tools/oof_from_checkpoints.py --data ../shared/data/acdc_h5 --dataset acdc_h5 \\
        --split-file results/acdc/splits.json --out runs/s192-l234/stage1-e2aunet \\
        results/acdc/e2aunet_l234_s192e42/*.safetensors results/acdc/cv_s192_l234/fold[1-4]/*.safetensors
    crocnet train --stage 2 --stage1-run runs/s192-l234/stage1-e2aunet --crop-from native ...

Checkpoint k predicts the validation subjects of fold k, in the frame its checkpoint records.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from crocnet.atomic import atomic_write_text
from crocnet.train.checkpoint import atomic_save, load_model
from crocnet.train.config import TrainConfig
from crocnet.train.samples import build_slices
from crocnet.train.train import load_records, oof_predictions


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+", help="one stage-1 checkpoint per fold, fold 0 first")
    ap.add_argument("--data", required=True)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--split-file", required=True)
    ap.add_argument("--out", required=True, help="the stage-1 run folder to write (fold<k>/oof*.pt)")
    args = ap.parse_args(argv)
    folds = json.loads(Path(args.split_file).read_text())["folds"]
    if len(args.checkpoints) != len(folds):
        ap.error(f"{args.split_file} has {len(folds)} folds, got {len(args.checkpoints)} checkpoints")
    records = load_records(TrainConfig(data=args.data, dataset=args.dataset, split_file=args.split_file))
    for k, (ckpt, fold) in enumerate(zip(args.checkpoints, folds)):
        model, meta = load_model(ckpt, "cpu")
        pre = meta["preprocess"]
        slices = build_slices([r for r in records if r.subject in set(fold["val"])], pre["image_size"], pre["target_spacing"])
        frame, native = oof_predictions(model, slices)
        run = Path(args.out) / f"fold{k}"
        run.mkdir(parents=True, exist_ok=True)
        atomic_save(frame, run / "oof.pt")
        atomic_save(native, run / "oof_native.pt")
        if k == 0:  # stage 2 reads the frame (image size, spacing) from fold 0's config
            atomic_write_text(run / "config.json", json.dumps(pre, indent=2))
        print(f"fold {k}: {len(frame)} slices of {len(fold['val'])} subjects from {ckpt}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
