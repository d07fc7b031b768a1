"""One distance unit per evaluation report: millimetres only when every image has a voxel size."""

from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import numpy as np
import pytest

from crocnet.data import Record
from crocnet.metrics import hausdorff_distance
from crocnet.train import compare as cmp
from crocnet.train import evaluate


class _Shifted:
    """A stand-in segmenter: the ground truth moved 3 rows down (so every HD95 is 3 pixels)."""

    pipeline, postprocess, tta, names = None, "none", False, {"stage 1": "shifted truth"}

    def segment(self, record):
        pred = np.roll(record.label, 3, axis=0)
        return SimpleNamespace(stage1=pred, labels=pred, fallback_slices=0)


def _record(subject: str, spacing) -> Record:
    label = np.zeros((32, 32, 1), np.uint8)
    label[8:20, 8:20] = 3
    label[10:18, 10:14] = 2
    label[11:17, 11:13] = 1
    return Record(np.random.default_rng(0).random(label.shape, dtype=np.float32), label, spacing, None, subject,
                  "ED", "LA", "mnm2")


def test_a_report_with_and_without_voxel_sizes_is_in_pixels_throughout(tmp_path):
    records = [_record("001", (2.0, 2.0, 1.0)), _record("002", None)]
    with pytest.warns(UserWarning, match=r"1 of 2 images have no voxel size \(002_LA_ED\): every distance of this "
                                         r"report is in pixels"):
        result = evaluate.evaluate(records, _Shifted(), tmp_path / "report", progress=False)
    assert result["unit"] == "px"
    rows = list(csv.DictReader((tmp_path / "report" / "cases.csv").open()))
    assert [r["unit"] for r in rows] == ["px", "px"]
    truth = records[0].label[..., 0] == 3
    px = hausdorff_distance(np.roll(truth, 3, axis=0), truth, percentile=95)
    assert px == pytest.approx(3.0)
    # the record with a voxel size is scored in pixels too (it gave 6 mm, averaged with the other's 3 px)
    assert [float(r["RV_hd95"]) for r in rows] == [pytest.approx(px)] * 2
    assert json.loads((tmp_path / "report" / "summary.json").read_text())["unit"] == "px"

    mm = evaluate.evaluate(records[:1], _Shifted(), tmp_path / "mm", progress=False)
    assert mm["unit"] == "mm" and float(mm["rows"][0]["RV_hd95"]) == pytest.approx(2 * px)


def test_compare_refuses_distances_in_two_units(tmp_path):
    evaluate.evaluate([_record("001", (2.0, 2.0, 1.0))], _Shifted(), tmp_path / "mm", progress=False)
    with pytest.warns(UserWarning):
        evaluate.evaluate([_record("001", (2.0, 2.0, 1.0)), _record("001b", None)], _Shifted(), tmp_path / "mixed",
                          progress=False)
    a = cmp.read_cases(tmp_path / "mm" / "cases.csv")
    b = {k: v for k, v in cmp.read_cases(tmp_path / "mixed" / "cases.csv").items() if k in a}
    assert cmp.compare(a, b, "dice")[0]["ties"] == 1  # Dice has no unit
    with pytest.raises(ValueError, match="hd95: the first report's distances are in mm, the second's in px"):
        cmp.compare(a, b, "hd95")
    # reports written before the unit column are compared as before
    old = {k: {c: v for c, v in row.items() if c != "unit"} for k, row in b.items()}
    assert cmp.compare(a, old, "hd95")[0]["cases"] == 1


def test_a_report_killed_part_way_is_incomplete_never_mixed(tmp_path, monkeypatch):
    """Re-evaluating into a folder: the old report goes first and summary.json comes last, so a kill while
    writing (here while drawing the overlays) leaves this run's cases.csv and no summary.json, not the new
    cases.csv beside the old summary and overlays; a second evaluation into the folder at once is refused."""
    out = tmp_path / "report"
    evaluate.evaluate([_record("001", (2.0, 2.0, 1.0)), _record("002", (2.0, 2.0, 1.0))], _Shifted(), out, progress=False)
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["best_002_LA_ED.png", "worst_001_LA_ED.png"]

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate, "overlay_png", killed)
    with pytest.raises(KeyboardInterrupt):
        evaluate.evaluate([_record("003", None)], _Shifted(), out, progress=False)
    assert not (out / "summary.json").exists() and not (out / "table.md").exists()
    assert [r["case"] for r in csv.DictReader((out / "cases.csv").open())] == ["003_LA_ED"]
    assert list((out / "overlays").iterdir()) == []
    monkeypatch.undo()

    from crocnet.atomic import exclusive

    with exclusive(out, "testing"):
        with pytest.raises(RuntimeError, match=r"report: another process is writing an evaluation report into this "
                                               r"folder \(it holds .crocnet.lock there\)"):
            evaluate.evaluate([_record("001", None)], _Shifted(), out, progress=False)
    evaluate.evaluate([_record("001", None)], _Shifted(), out, progress=False)  # released with the block
    assert json.loads((out / "summary.json").read_text())["cases"] == 1
