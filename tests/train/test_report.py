"""``summary.json`` and comparison JSON: standard JSON, an undefined value written as ``null``; the subjects and
overlays of an evaluation report."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from crocnet.data import kfold
from crocnet.data.splits import write_splits
from crocnet.train.evaluate import _write_report, select_subjects
from crocnet.train.report import METRICS, STRUCTURES, strict_json, write_summary


def _refuse(token):
    raise ValueError(f"non-standard JSON token {token}")


def test_undefined_values_are_null_and_the_rest_unchanged(tmp_path):
    summ = {"LV_dice": {"mean": np.float64("nan"), "std": np.float32(1.5), "n": np.int64(3)},
            "hd95": [1.0, float("inf"), -float("inf")], "flags": (np.bool_(True), None, "x")}
    path = write_summary(summ, {"unit": "px", "cases": 3, "spread": np.array([0.5, np.nan])}, tmp_path / "summary.json")
    back = json.loads(path.read_text(), parse_constant=_refuse)
    assert back == {"summary": {"LV_dice": {"mean": None, "std": 1.5, "n": 3}, "hd95": [1.0, None, None],
                                "flags": [True, None, "x"]},
                    "unit": "px", "cases": 3, "spread": [0.5, None]}
    assert "NaN" not in path.read_text() and "Infinity" not in path.read_text()


def test_strict_json_refuses_what_it_cannot_write():
    with pytest.raises(TypeError):
        strict_json({"path": object()})
    assert strict_json([math.nan], indent=None) == "[null]"


def _records(*subjects):
    return [SimpleNamespace(subject=s, name=f"{s}_LA_ED") for s in subjects]


def test_split_test_and_pool_read_a_run_splits_json_and_a_crocnet_splits_file(tmp_path):
    records = _records("001", "002", "003", "004", "201")
    run = write_splits(tmp_path / "run.json", {"test": ["201"], "pool": ["001", "002", "003", "004"],
                                               "folds": kfold(["001", "002", "003", "004"], 2)})
    made = write_splits(tmp_path / "made.json", {"pool": "train", "folds": kfold(["001", "002", "003"], 2),
                                                 "official": {"train": ["001", "002", "003"], "val": [], "test": ["201"]}})
    for path, pool in ((run, ["001", "002", "003", "004"]), (made, ["001", "002", "003"])):
        assert [r.subject for r in select_subjects(records, str(path), "test", None)] == ["201"]
        assert [r.subject for r in select_subjects(records, str(path), "pool", None)] == pool  # also --split cv's


def test_split_test_refuses_official_test_subjects_the_folds_trained_on(tmp_path):
    path = write_splits(tmp_path / "all.json", {"pool": "all", "folds": kfold(["001", "002", "201"], 2),
                                                "official": {"train": ["001", "002"], "val": [], "test": ["201"]}})
    with pytest.raises(ValueError, match="official test subjects 201 are in its folds too \\(pool 'all'\\)"):
        select_subjects(_records("001", "201"), str(path), "test", None)


def test_subjects_not_in_the_data_are_named_with_the_codes_that_are():
    with pytest.raises(ValueError, match="none of the 1 selected subjects \\(1\\) is in the data; it has 2 subjects: 001, 002$"):
        select_subjects(_records("002", "001"), None, None, ["1"])


def test_a_report_rerun_into_the_same_folder_leaves_only_its_own_overlays(tmp_path):
    def report(*names):
        label = np.ones((8, 8, 1), np.uint8)
        cases = [(SimpleNamespace(name=n, image=np.zeros((8, 8, 1)), label=label), label, i) for i, n in enumerate(names)]
        rows = [{"case": n, "method": "stage 1", **{f"{s}_{k}": 1.0 for s in STRUCTURES for k in METRICS}} for n in names]
        _write_report(tmp_path, ["stage 1"], rows, cases, "px", {}, {})

    report("a", "b")
    (tmp_path / "overlays" / "notes.png").write_text("mine")
    (tmp_path / "overlays" / "best_a.txt").write_text("mine")
    report("c", "d")
    assert sorted(p.name for p in (tmp_path / "overlays").iterdir()) == ["best_a.txt", "best_d.png", "notes.png", "worst_c.png"]
