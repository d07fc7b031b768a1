"""The committed ACDC checkpoints still give the committed numbers.

``results/`` publishes checkpoints with their per-case tables. Each case here re-evaluates published
checkpoints (stage 1 at width 8, and at width 16 stored as float16 with two tensors kept in float32; a
192-px one, and an ensemble of two, with flips and post-processing; a frame-crop and a native-crop
CroCNet; a native-crop CroCNet whose stage 2 is the ensemble of two seeds) on one ACDC validation patient
(two volumes), and the CroCNet on the real M&Ms-2 subject 001 (LA and SA, HD95 in mm), with ``crocnet
evaluate``, and checks every Dice and HD95 against the committed ``cases.csv`` rows: a change to
reading, resampling, decoding, cropping or the metrics that would move a published number fails here.
Tolerance: 1e-6 on Dice (a fraction) and on HD95 (pixels or mm), room for float summation order across
thread counts, far below what one pixel of one volume changes (about 1e-4 Dice).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from crocnet.train import evaluate

RESULTS = Path(__file__).resolve().parents[2] / "results"
ACDC = RESULTS / "acdc"
TOL = 1e-6


def _one(folder: str) -> str:
    files = sorted((ACDC / folder).glob("*.safetensors"))
    assert len(files) == 1, f"expected one checkpoint in results/acdc/{folder}, found {len(files)}"
    return str(files[0])


def _all(folders) -> list[str]:
    return [_one(f) for f in ((folders,) if isinstance(folders, str) else folders)]


CASES = {  # report folder under results/: (stage 1: a folder or several, stage 2: None, a folder or
    # several[, the fold of a cross-validation report whose first patient is checked; default: the report's
    # first row]), folders under results/acdc/
    "acdc/e2aunet": ("e2aunet", None),
    "acdc/e2aunet_l234_w16": ("e2aunet_l234_w16", None),  # float16 with two running_var tensors kept in float32
    "acdc/inference_options/s192e42-tta-structures": ("e2aunet_noattn_s192e42", None),
    "acdc/inference_options/e2aunet_l234_w16_ft192-tta": ("e2aunet_l234_w16_ft192", None),  # fine-tuned with --init
    "acdc/e2aunet_l234_s192_ft256": ("e2aunet_l234_s192_ft256", None),  # 256 px, fine-tuned with --init
    "acdc/label_fill_ab/fill/postprocess-structures": ("label_fill_ab/fill", None),  # --outside-label background
    "acdc/e2aunet_noattn_s192e42_cont30": ("e2aunet_noattn_s192e42_cont30", None),  # 30 more epochs with --init
    "acdc/cv_s192_noattn_cont30/fold1/report": ("cv_s192_noattn_cont30/fold1", None),
    "acdc/cv_s192_l234_cont30/fold2/report": ("cv_s192_l234_cont30/fold2", None),  # the E2A hybrid continued
    "acdc/cv_s192_noattn_cont30": ("cv_s192_noattn_cont30/fold3", None, 3),  # the five-fold report, fold 3's weights
    "acdc/inference_options/cv_ensemble2_s192_cont30_both-tta-structures": (  # the best five-fold number
        ("cv_s192_noattn_cont30/fold4", "cv_s192_l234_cont30/fold4"), None, 4),
    "acdc/crocnet_specialists": ("e2aunet", "crocnet_specialists"),
    "acdc/cv_crocnet_s192_l234_native/fold1/report": ("cv_s192_l234/fold1", "cv_crocnet_s192_l234_native/fold1"),
    "acdc/cv_crocnet_s192_l234_native_seeds01": (  # its first rows are fold 0's
        "e2aunet_l234_s192e42", ("cv_crocnet_s192_l234_native/fold0", "cv_crocnet_s192_l234_native_seed1/fold0")),
    "mnm2_001_domain_gap/acdc": ("e2aunet", "crocnet_specialists"),
}
METRICS = [f"{s}_{m}" for s in ("LV", "MYO", "RV") for m in ("dice", "hd95")]


@pytest.mark.parametrize("report", list(CASES))
def test_published_checkpoint_reproduces_its_cases(report, request, tmp_path):
    summary = json.loads((RESULTS / report / "summary.json").read_text())
    published = list(csv.DictReader((RESULTS / report / "cases.csv").open()))
    stage1, stage2, *fold = CASES[report]
    subject = next(r["subject"] for r in published if not fold or r["fold"] == str(fold[0]))
    if report.startswith("mnm2"):
        data = ["--data", str(request.getfixturevalue("mnm2_subject").parent), "--dataset", "mnm2", "--views", "LA", "SA"]
    else:
        data = ["--data", str(request.getfixturevalue("acdc_h5").parent), "--dataset", "acdc_h5"]
    argv = ["--stage1", *_all(stage1), *data, "--subjects", subject, "--no-progress", "--out", str(tmp_path),
            "--postprocess", summary.get("postprocess", "none")]
    if stage2:
        argv += ["--stage2", *_all(stage2)]
    if summary.get("tta"):
        argv.append("--tta")
    assert evaluate.main(argv) == 0

    expected = {(r["case"], r["method"]): r for r in published if r["subject"] == subject}
    got = {(r["case"], r["method"]): r for r in csv.DictReader((tmp_path / "cases.csv").open())}
    assert set(got) == set(expected) and len(got) == len({r["case"] for r in published if r["subject"] == subject}) * (2 if stage2 else 1)
    for key, row in expected.items():
        for metric in METRICS:
            want, have = float(row[metric]), float(got[key][metric])
            assert have == pytest.approx(want, abs=TOL, nan_ok=True), f"{report} {key} {metric}: {have} != {want}"
