"""``summary.json`` and comparison JSON: standard JSON, an undefined value written as ``null``."""

import json
import math

import numpy as np
import pytest

from crocnet.train.report import strict_json, write_summary


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
