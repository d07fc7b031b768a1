r"""``crocnet evaluate``: segment a dataset with a stage-1 checkpoint (and a stage-2 one for CroCNet) and
report Dice, HD and HD95 per structure on the native grid, in mm (pixels when the spacing is unknown).

Writes ``OUT/cases.csv`` (one row per case and method), ``OUT/summary.json`` (mean, std, median and
undefined counts), ``OUT/table.md`` (Table-1 style, stage 1 and CroCNet side by side) and
``OUT/overlays/`` (best and worst cases). Metrics are per image: 2D for long-axis images, 3D over the
stack for short-axis volumes (e.g. ACDC: per-volume 3D Dice, HD95 in pixels as no spacing is stored).
Several ``--stage1`` checkpoints are evaluated as one ensemble; ``--tta`` averages over flips; ``--split cv``
scores a whole cross-validation out of fold (each fold's checkpoint on its own validation subjects; with
``--stage2``, each fold's whole CroCNet too; several stage folders: each fold's ensemble, of stage-1 or of
stage-2 models)::

    crocnet evaluate --stage1 runs/exp/stage1-e2aunet/fold0 --stage2 runs/exp/stage2-crocnet_specialists/fold0 \
        --data data/phantom --split-file runs/exp/splits.json --split test --out runs/exp/eval
    crocnet evaluate --stage1 results/acdc/e2aunet/e2aunet-w8-acdc-fold0.safetensors --dataset acdc_h5 \
        --data ../shared/data/acdc_h5 --split-file results/acdc/splits.json --split fold:0 --per-case
    crocnet evaluate --stage1 runs/exp/stage1-e2aunet --split cv --data data/phantom \
        --split-file runs/exp/splits.json --out runs/exp/eval-cv
    crocnet evaluate --stage1 runs/exp/stage1-e2aunet --stage2 runs/exp/stage2-crocnet_specialists --split cv \
        --data data/phantom --split-file runs/exp/splits.json --out runs/exp/eval-cv-crocnet
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from crocnet.atomic import atomic_write_text, exclusive
from crocnet.data import DataError, read_splits
from crocnet.data.validation import name_list
from crocnet.metrics import segmentation_metrics
from crocnet.outputs import check_output_folder
from crocnet.postprocess import POSTPROCESS_MODES

from .checkpoint import read_checkpoint
from .config import DATASET_CHOICES, TrainConfig
from .devices import DEVICE_HELP, resolve_device
from .inference import Segmenter
from .report import (METRICS, OVERLAY_TAGS, STRUCTURES, case_table, fold_table, overlay_png, remove_stale_overlays, summary,
                     table, write_cases_csv, write_summary)
from .train import load_records


def select_subjects(records, split_file: str | None, split: str | None, subjects: list[str] | None):
    """The records of ``subjects``, or of a split (``test``, ``pool``, ``fold:K``) of a ``splits.json`` (a
    training run's, or one written by ``crocnet splits``), or all."""
    if subjects:
        wanted = set(subjects)
    elif split_file:
        data = read_splits(split_file)
        split = split or "test"
        if split in ("test", "pool"):
            wanted = _listed_subjects(data, split, split_file)
            if not wanted:
                why = ("its official test part is empty" if "test" not in data and "official" in data
                       else "the run held none out: no --test-fraction")
                raise ValueError(f"{split_file} has no {split} subjects ({why}); use --split pool, fold:K or cv")
        elif split.startswith("fold:"):
            k, n = split[5:], len(data["folds"])
            if not (k.isdigit() and int(k) < n):
                raise ValueError(f"--split fold:K must name a fold K in 0..{n - 1} of {split_file}, got {split!r}")
            wanted = set(data["folds"][int(k)]["val"])
        else:
            raise ValueError(f"--split must be test, pool, fold:K or cv, got {split!r}")
    elif split is not None:
        raise ValueError(f"--split {split} needs --split-file (the splits.json that defines it); without both, "
                         f"every image in --data is evaluated")
    else:
        return records
    chosen = [r for r in records if r.subject in wanted]
    present = sorted({r.subject for r in records})
    if not chosen:
        raise ValueError(f"none of the {len(wanted)} selected subjects ({name_list(sorted(wanted))}) is in the data; "
                         f"it has {len(present)} subjects: {name_list(present)}")
    absent = sorted(wanted - set(present))
    if absent and subjects:
        raise ValueError(f"--subjects: {name_list(absent)} not in the data (it has {len(present)} subjects: "
                         f"{name_list(present)})")
    if absent:
        warnings.warn(f"{len(absent)} of the {len(wanted)} subjects of --split {split} are not in the data, "
                      f"evaluating the other {len(wanted) - len(absent)}: missing {name_list(absent)}", stacklevel=2)
    return chosen


def _listed_subjects(data: dict, split: str, split_file: str) -> set[str]:
    """The ``test`` or ``pool`` subjects of a split file: a training run's lists, or of a ``crocnet splits``
    file its official test part and, for a pool given by name (``"all"``), every fold's validation subjects."""
    if split == "pool":
        pool = data.get("pool")
        return set(pool) if isinstance(pool, list) else {s for f in data["folds"] for s in f["val"]}
    if "test" in data or "official" not in data:
        return set(data.get("test", []))
    test = set(data["official"]["test"])
    seen = sorted(test & {s for f in data["folds"] for s in f["train"] + f["val"]})
    if seen:
        raise ValueError(f"{split_file}: its official test subjects {name_list(seen)} are in its folds too (pool "
                         f"{data.get('pool')!r}): models trained on these folds have seen them. Expected a split file "
                         f"made with `crocnet splits --pool train` or `--pool trainval`; or use --split pool, fold:K or cv")
    return test


def score(records, segmenter: Segmenter, unit: str, progress: bool = True, desc: str = "evaluating",
          extra: dict | None = None):
    """Segment and score ``records``: one row per case and method (``extra`` columns first), the final
    prediction and mean Dice of each case (for the overlays), and the stage-1 fallback slice count. Distances
    are in ``unit``: ``"mm"`` (each record's voxel size) or ``"px"``."""
    methods = ["stage 1"] + (["CroCNet"] if segmenter.pipeline is not None else [])
    rows, cases, fallback = [], [], 0
    for record in tqdm(records, desc=desc, unit="image", disable=not progress):
        if record.label is None:
            raise DataError(f"{record.source or record.name}: no label map to evaluate against")
        seg = segmenter.segment(record)
        fallback += seg.fallback_slices
        preds = {"stage 1": seg.stage1, "CroCNet": seg.labels}
        for m in methods:
            scores = segmentation_metrics(preds[m], record.label, record.spacing if unit == "mm" else None)
            row = {**(extra or {}), "case": record.name, "subject": record.subject, "phase": record.phase,
                   "view": record.view, "vendor": record.vendor, "dataset": record.dataset, "method": m, "unit": unit}
            for s in STRUCTURES:
                for k in METRICS:
                    row[f"{s}_{k}"] = scores[s][k]
            rows.append(row)
        cases.append((record, preds[methods[-1]], np.nanmean([rows[-1][f"{s}_dice"] for s in STRUCTURES])))
    return methods, rows, cases, fallback


def _write_report(out: Path, methods, rows, cases, unit: str, extra: dict, names: dict, appendix: str = ""):
    """``cases.csv``, ``summary.json`` (the summary, ``unit``, ``cases`` and ``extra``), ``table.md`` (the
    Table-1 style table, then ``appendix``) and the overlays of the worst and best case.

    A previous report in ``out`` is removed first and ``summary.json`` written last, under ``out``'s lock: a
    kill part-way leaves an incomplete report (no ``summary.json``), never one mixing two runs' files, and two
    evaluations into one folder at once are refused."""
    out.mkdir(parents=True, exist_ok=True)
    with exclusive(out, "writing an evaluation report"):
        remove_stale_overlays(out / "overlays", [])
        for name in ("summary.json", "table.md", "cases.csv"):
            (out / name).unlink(missing_ok=True)
        write_cases_csv(rows, out / "cases.csv")
        summ = summary(rows, methods)
        text = table(summ, unit, names) + appendix
        ranked = sorted(cases, key=lambda c: c[2])
        for tag, (record, pred, score_) in zip(OVERLAY_TAGS, (ranked[0], ranked[-1])):
            z = int(np.argmax((record.label > 0).sum((0, 1)))) if record.label.any() else record.image.shape[2] // 2
            overlay_png(record.image[:, :, z], record.label[:, :, z], pred[:, :, z],
                        out / "overlays" / f"{tag}_{record.name}.png",
                        f"{tag}: {record.name} ({methods[-1]}, mean Dice {score_:.3f})")
        atomic_write_text(out / "table.md", text + "\n")
        write_summary(summ, {"unit": unit, "cases": len(cases), **extra}, out / "summary.json")
    return summ, text


def distance_unit(records) -> str:
    """One unit for a report's distances: ``"mm"`` when every record has a voxel size, else ``"px"`` for all
    of them (a mean of millimetres and pixels means nothing), with a warning naming those without one."""
    missing = [r.source or r.name for r in records if r.spacing is None]
    if missing and len(missing) < len(records):
        warnings.warn(f"{len(missing)} of {len(records)} images have no voxel size ({name_list(missing)}): every "
                      f"distance of this report is in pixels, those with one included", stacklevel=2)
    return "px" if missing else "mm"


def evaluate(records, segmenter: Segmenter, out: Path, progress: bool = True) -> dict:
    """Segment and score ``records``; write the report files into ``out``; return summary, table, rows."""
    unit = distance_unit(records)
    methods, rows, cases, fallback = score(records, segmenter, unit, progress)
    summ, text = _write_report(out, methods, rows, cases, unit,
                               {"fallback_slices": fallback, "postprocess": segmenter.postprocess, "tta": segmenter.tta},
                               segmenter.names)
    return {"summary": summ, "table": text, "unit": unit, "fallback_slices": fallback, "rows": rows}


def fold_checkpoints(paths: list[str], n_folds: int, flag: str = "--stage1") -> list[list[Path]]:
    """The checkpoints of each fold, fold 0 first: one per fold (``paths`` itself), or the ``fold0`` …
    ``fold<n-1>`` run folders inside stage folders (``runs/exp/stage1-e2aunet``); several stage folders make
    each fold an ensemble of their fold-k models. ``flag`` names the option in errors."""
    stages = [Path(p) for p in paths if (Path(p) / "fold0").is_dir()]
    if stages and len(stages) == len(paths):
        for stage in stages:
            missing = [f"fold{k}" for k in range(n_folds) if not (stage / f"fold{k}").is_dir()]
            if missing:
                raise ValueError(f"--split cv: {flag} {stage} has no {', '.join(missing)} (the split file has {n_folds} folds)")
        return [[stage / f"fold{k}" for stage in stages] for k in range(n_folds)]
    if len(paths) != n_folds:
        raise ValueError(f"--split cv needs one {flag} checkpoint per fold ({n_folds} in the split file, fold 0 first) "
                         f"or stage folders holding fold0 … fold{n_folds - 1}; got {len(paths)}")
    return [[Path(p)] for p in paths]


def fold_member(path: str | Path, k: int, flag: str) -> Path:
    """``path/fold<k>`` where ``path`` is a stage folder (holding ``fold0`` ...), else ``path``."""
    path = Path(path)
    if not (path / "fold0").is_dir():
        return path
    if not (path / f"fold{k}").is_dir():
        raise ValueError(f"--split fold:{k}: {flag} {path} is a stage folder without fold{k}")
    return path / f"fold{k}"


def check_trained_folds(paths: list[list[Path | str]], folds: list[int], what: str) -> None:
    """Refuse checkpoints scored on fold k's validation subjects that were trained as another fold (they saw
    some of those subjects): ``paths[i]``, the checkpoints of fold ``folds[i]``. A checkpoint that records no
    fold passes."""
    wrong = []
    for k, members in zip(folds, paths):
        for path in members or ():
            trained = read_checkpoint(path).get("fold")
            if trained is not None and str(trained) != str(k):
                wrong.append(f"{path} (trained as fold {trained}, given for fold {k})")
    if wrong:
        raise ValueError(f"{what}: each fold's validation subjects must be scored by the checkpoint of that fold, "
                         f"which never saw them; got {'; '.join(wrong)}. " +
                         ("Give the checkpoints fold 0 first, or the stage folder holding fold0 ..."
                          if len(set(map(str, folds))) > 1 else f"Give fold {folds[0]}'s checkpoint, or the stage folder "
                          f"holding fold{folds[0]}"))


def _json_paths(paths: list[Path]) -> str | list[str]:
    """One checkpoint as its path, an ensemble as the list of its paths (``summary.json``'s ``folds``)."""
    return str(paths[0]) if len(paths) == 1 else [str(p) for p in paths]


def evaluate_cross_validation(records, split_file: str, stage1: list[str], out: Path, progress: bool = True,
                              stage2: list[str] | None = None, **segmenter_kwargs) -> dict:
    """Out-of-fold evaluation: the checkpoint of fold k segments the validation subjects of fold k, and the
    report pools every fold (each subject scored once, by the one model that did not train on it). With
    ``stage2`` (one stage-2 checkpoint per fold, or their stage folder; several stage folders: each fold's
    stage 2 an ensemble of their fold-k models) the whole CroCNet of fold k (its stage 1 and its stage 2) is
    scored too, next to its stage 1.

    Writes the same files as :func:`evaluate` (``cases.csv`` gains a ``fold`` column) plus a per-fold table
    per method in ``table.md`` and ``folds`` (each fold's summary) in ``summary.json``.
    """
    folds = read_splits(split_file)["folds"]
    paths = fold_checkpoints(stage1, len(folds))
    paths2 = fold_checkpoints(stage2, len(folds), "--stage2") if stage2 else [None] * len(folds)
    check_trained_folds(paths, list(range(len(folds))), "--split cv --stage1")
    check_trained_folds(paths2, list(range(len(folds))), "--split cv --stage2")
    unit = distance_unit([r for r in records if any(r.subject in fold["val"] for fold in folds)])
    rows, cases, fallback, per_fold, names = [], [], 0, [], {}
    for k, (fold, members, members2) in enumerate(zip(folds, paths, paths2)):
        val = set(fold["val"])
        mine = [r for r in records if r.subject in val]
        if not mine:
            raise ValueError(f"none of the {len(fold['val'])} validation subjects of fold {k} is in the data")
        segmenter = Segmenter(members, members2, **segmenter_kwargs)
        for method, name in segmenter.names.items():
            names.setdefault(method, set()).add(name)
        methods, r, c, f = score(mine, segmenter, unit, progress, desc=f"fold {k}", extra={"fold": k})
        rows += r
        cases += c
        fallback += f
        per_fold.append({"fold": k, "checkpoint": _json_paths(members), **({"stage2": _json_paths(members2)} if members2 else {}),
                         "cases": len(mine), "summary": summary(r, methods)})
    labels = {m: f"{', '.join(sorted(n))}, {len(folds)} folds out-of-fold" for m, n in names.items()}
    extra = {"fallback_slices": fallback, "postprocess": segmenter.postprocess, "tta": segmenter.tta,
             "cross_validation": True, "folds": per_fold}
    appendix = "".join(f"\n\nPer fold{', ' + m if len(methods) > 1 else ''}:\n\n" + fold_table(per_fold, unit, m) for m in methods)
    summ, text = _write_report(out, methods, rows, cases, unit, extra, labels, appendix)
    return {"summary": summ, "table": text, "unit": unit, "fallback_slices": fallback, "rows": rows, "folds": per_fold}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="crocnet evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage1", required=True, nargs="+",
                    help="stage-1 checkpoint (best.pt / best.safetensors) or its run folder; several: an ensemble (their "
                         "probabilities averaged; with --stage2 only for a stage 2 trained on native crops)")
    ap.add_argument("--stage2", nargs="+",
                    help="stage-2 checkpoint or run folder: evaluate the whole CroCNet pipeline too; several: one stage 2 "
                         "averaging their probabilities (e.g. seeds trained on the same crops). With --split cv: one per "
                         "fold, fold 0 first, or the stage folder holding fold0 ... (several: each fold's stage 2 an "
                         "ensemble of their fold-k models)")
    ap.add_argument("--data", required=True, help="dataset folder")
    ap.add_argument("--dataset", default="phantom", choices=DATASET_CHOICES, help="layout of --data (default phantom)")
    ap.add_argument("--views", nargs="+", default=["LA"], choices=("LA", "SA"), help="M&Ms-2 views (default LA)")
    ap.add_argument("--split-file", help="splits.json of a training run, to pick subjects with --split")
    ap.add_argument("--split",
                    help="with --split-file: test (default), pool, fold:K (the validation subjects of fold K; a stage "
                         "folder given to --stage1/--stage2 gives its foldK) or cv "
                         "(every fold, each by its own checkpoint: --stage1 takes one per fold, fold 0 first, or the "
                         "stage folder holding fold0 ... (several: each fold an ensemble of their fold-k models); the "
                         "report pools them, out of fold)")
    ap.add_argument("--subjects", nargs="+", help="evaluate only these subjects")
    ap.add_argument("--device", default="cpu", help=f"{DEVICE_HELP} (default cpu)")
    ap.add_argument("--postprocess", default="none", choices=POSTPROCESS_MODES,
                    help="remove islands: keep the largest component of the heart, of each structure, or both (default none)")
    ap.add_argument("--tta", action="store_true", help="test-time augmentation: average the probabilities over the four flips (4x the time)")
    ap.add_argument("--per-case", action="store_true", help="also print one line per case: Dice and HD95 per structure")
    ap.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    ap.add_argument("--out", default="runs/evaluation", help="report folder (default runs/evaluation)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        check_output_folder(args.out, "--out", "the report (cases.csv, summary.json, table.md, overlays/)")
        cfg = TrainConfig(data=args.data, dataset=args.dataset, views=tuple(args.views))
        if not Path(args.data).exists():
            raise FileNotFoundError(f"--data {args.data!r} does not exist")
        resolve_device(args.device)
        if args.split == "cv":
            if not args.split_file:
                raise ValueError("--split cv needs --split-file (the splits.json the folds were trained on)")
            if args.subjects:
                raise ValueError("--split cv evaluates every fold's validation subjects; --subjects works with one fold (--split fold:K)")
            records = select_subjects(load_records(cfg), args.split_file, "pool", None)
            result = evaluate_cross_validation(records, args.split_file, args.stage1, Path(args.out), progress=args.progress,
                                               stage2=args.stage2, device=args.device, postprocess=args.postprocess, tta=args.tta)
        else:
            stage1, stage2 = args.stage1, args.stage2
            fold = args.split[5:] if args.split and args.split.startswith("fold:") else None
            if fold is not None and fold.isdigit():  # a stage folder gives its fold-K run
                stage1 = [fold_member(p, int(fold), "--stage1") for p in stage1]
                stage2 = stage2 and [fold_member(p, int(fold), "--stage2") for p in stage2]
            segmenter = Segmenter(stage1, stage2, device=args.device, postprocess=args.postprocess, tta=args.tta)
            records = select_subjects(load_records(cfg), args.split_file, args.split, args.subjects)
            if fold is not None:
                check_trained_folds([stage1, stage2 or []], [fold, fold], f"--split {args.split}")
            result = evaluate(records, segmenter, Path(args.out), progress=args.progress)
    except (ValueError, FileNotFoundError, DataError, RuntimeError) as exc:  # RuntimeError: --out locked
        print(f"crocnet evaluate: error: {exc}", file=sys.stderr)
        return 2
    if args.per_case:
        print(case_table(result["rows"], result["unit"]) + "\n")
    print(result["table"])
    n_images = len({row["case"] for row in result["rows"]})
    print(f"\n{n_images} images in {time.perf_counter() - t0:.0f} s; report in {args.out}/ (cases.csv, summary.json, table.md, overlays/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
