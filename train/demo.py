"""``crocnet demo``: the whole CroCNet pipeline on synthetic phantoms, end to end, on a CPU.

1. writes phantom subjects in the M&Ms-2 layout (long-axis ED and ES);
2. holds out a test split by subject, and trains stage 1 (E-2AUNet) on every cross-validation fold,
   each fold predicting its own validation subjects (out-of-fold predictions);
3. trains stage 2 (the weight-shared specialist networks with cross-E2A) on crops of the native images
   around those out-of-fold predictions;
4. evaluates stage 1 and CroCNet on the test subjects: ``REPORT/table.md``, ``cases.csv``,
   ``summary.json``, overlays, and the learning curves of every run.

Sizes are chosen for about fifteen minutes on 2 CPU cores (``--quick``: under a minute, for smoke tests).
The demo departs from the paper's schedule because it trains for ~100 epochs on 32 images, not 500 on
thousands: lr 2e-3 (paper 1e-4) dropped at 70 % and 90 % of the epochs (paper 20 % and 40 %), and Dice +
cross-entropy (paper: Dice). ``crocnet train`` defaults to the paper's settings.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from crocnet.atomic import atomic_write_bytes, atomic_write_text
from crocnet.data import DataError, write_phantoms
from crocnet.outputs import check_creatable

from .config import TrainConfig
from .devices import DEVICE_HELP, resolve_device
from .evaluate import evaluate, select_subjects
from .inference import Segmenter
from .train import load_records, run

PRESETS = {
    "full": dict(subjects=40, folds=2, epochs1=120, epochs2=80, width1=16, width2=8, size1=96, size2=64, lr=2e-3),
    "quick": dict(subjects=6, folds=2, epochs1=1, epochs2=1, width1=4, width2=4, size1=32, size2=32, lr=2e-3),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="crocnet demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    ap.add_argument("--quick", action="store_true", help="a tiny version (a minute): smoke test of the pipeline")
    ap.add_argument("--seed", type=int, default=0, help="seed of phantoms, splits and training (default 0)")
    ap.add_argument("--device", default="auto", help=f"{DEVICE_HELP} (default auto)")
    ap.add_argument("--fresh", action="store_true", help="delete --out first (otherwise an interrupted demo resumes); "
                                                         "only a demo's folder (with its demo.json) or an empty one")
    ap.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    args = ap.parse_args(argv)
    try:
        return _run(args)
    except (ValueError, FileNotFoundError, DataError, RuntimeError) as exc:
        print(f"crocnet demo: error: {exc}", file=sys.stderr)
        return 2


def _check_preset(out: Path, preset: str, seed: int) -> None:
    """An interrupted demo resumes; a demo of another preset or seed in the same folder is refused."""
    marker = out / "demo.json"
    wanted = {"preset": preset, "seed": seed}
    if marker.is_file():
        found = json.loads(marker.read_text())
    elif (out / "data" / "dataset_information.csv").is_file():  # written before the marker existed: seed unknown
        subjects = len((out / "data" / "dataset_information.csv").read_text().strip().splitlines()) - 1
        found = {"preset": next((k for k, v in PRESETS.items() if v["subjects"] == subjects), f"{subjects} subjects"), "seed": seed}
    else:
        found = wanted
    if found == wanted:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(marker, json.dumps(wanted))
    else:
        raise ValueError(
            f"{out} holds a demo with preset {found['preset']!r} and seed {found['seed']}, not {preset!r} with seed "
            f"{seed}; add --fresh to replace it, or choose another --out"
        )


def _check_fresh(out: Path) -> None:
    """``--fresh`` deletes ``out`` only if it is a demo's folder (it holds the ``demo.json`` marker every demo
    writes first) or empty: anything else might be someone's data."""
    if out.is_symlink():
        raise ValueError(f"--out {str(out)!r} is a symbolic link (to {str(out.resolve())!r}); --fresh deletes only a demo's "
                         f"own folder: name that folder as --out")
    marker = out / "demo.json"
    entries = sorted(out.iterdir())
    if not entries:
        return
    try:
        found = json.loads(marker.read_text()) if marker.is_file() else None
    except (ValueError, OSError):
        found = None
    if isinstance(found, dict) and {"preset", "seed"} <= set(found):
        return
    listed = ", ".join(e.name + ("/" if e.is_dir() else "") for e in entries[:5]) + (", ..." if len(entries) > 5 else "")
    why = "a demo.json that is not a demo's marker" if marker.exists() else "no demo.json"
    raise ValueError(f"--fresh deletes --out, but {str(out)!r} is not a crocnet demo folder: it holds {why} and "
                     f"{len(entries)} entries ({listed}); nothing was deleted. Choose another --out, or delete it yourself")


def _run(args) -> int:
    preset = "quick" if args.quick else "full"
    p = PRESETS[preset]
    out = Path(args.out)
    resolve_device(args.device)  # every cheap check before anything is deleted or written
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out must be a folder, got the file {str(out)!r}; choose another --out")
    check_creatable(out / "demo.json", "--out")
    if args.fresh and out.exists():
        _check_fresh(out)
        shutil.rmtree(out)
    _check_preset(out, preset, args.seed)
    t0 = time.perf_counter()
    data = out / "data"
    if not (data / "dataset_information.csv").is_file():
        write_phantoms(data, subjects=p["subjects"], seed=args.seed)
        print(f"[1/4] wrote {p['subjects']} phantom subjects to {data}")
    common = dict(data=str(data), dataset="phantom", folds=p["folds"], split_seed=args.seed, test_fraction=0.2,
                  batch_size=8, lr=p["lr"], loss="dice_ce", lr_milestones=(0.7, 0.9), out=str(out), seed=args.seed, device=args.device, resume=True,
                  progress=args.progress)
    t1 = time.perf_counter()
    stage1 = TrainConfig(stage=1, fold="all", epochs=p["epochs1"], base_width=p["width1"], image_size=p["size1"], **common)
    run(stage1)
    print(f"[2/4] stage 1 trained on {p['folds']} folds in {time.perf_counter() - t1:.0f} s")
    t2 = time.perf_counter()
    stage1_run = out / "stage1-e2aunet"
    stage2 = TrainConfig(stage=2, fold="0", epochs=p["epochs2"], base_width=p["width2"], image_size=p["size2"],
                         stage1_run=str(stage1_run), **common)
    run(stage2)
    print(f"[3/4] stage 2 trained on out-of-fold crops in {time.perf_counter() - t2:.0f} s")
    records = select_subjects(load_records(stage1), str(out / "splits.json"), "test", None)
    segmenter = Segmenter(stage1_run / "fold0" / "best.pt", out / "stage2-crocnet_specialists" / "fold0" / "best.pt",
                          device=args.device)
    report = out / "report"
    result = evaluate(records, segmenter, report, progress=args.progress)
    for run_dir in sorted(out.glob("stage*/fold*")):
        if (run_dir / "curves.png").is_file():
            copy = report / f"curves-{run_dir.parent.name}-{run_dir.name}.png"
            atomic_write_bytes(copy, (run_dir / "curves.png").read_bytes())
    print(f"[4/4] evaluated on {len(records)} held-out phantom images\n")
    print(result["table"])
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f} s; report: {report}/ (table.md, cases.csv, summary.json, overlays/, curves-*.png)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
