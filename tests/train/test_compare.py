"""``crocnet compare``: paired per-case differences of two evaluation reports."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import wilcoxon

from crocnet.train import compare as cmp
from crocnet.train.report import METRICS, STRUCTURES, write_cases_csv


def _rows(dice: dict[str, list[float]], hd95: float = 2.0, order=None) -> list[dict]:
    n = len(dice["LV"])
    rows = []
    for i in order if order is not None else range(n):
        row = {"case": f"p{i // 2:03d}_{'ED' if i % 2 == 0 else 'ES'}", "subject": f"p{i // 2:03d}", "method": "stage 1"}
        for s in STRUCTURES:
            for k in METRICS:
                row[f"{s}_{k}"] = dice[s][i] if k == "dice" else hd95
        rows.append(row)
    return rows


@pytest.fixture
def base():
    rng = np.random.default_rng(0)
    return {s: list(rng.uniform(0.7, 0.95, 12)) for s in STRUCTURES}


def test_a_constant_gain_is_found_exactly_and_pairing_ignores_row_order(base, tmp_path):
    better = {s: [v + 0.01 for v in base[s]] for s in STRUCTURES}
    write_cases_csv(_rows(base), tmp_path / "a.csv")
    write_cases_csv(_rows(better, order=list(range(11, -1, -1))), tmp_path / "b.csv")  # reversed rows
    rows = cmp.compare(cmp.read_cases(tmp_path / "a.csv"), cmp.read_cases(tmp_path / "b.csv"), "dice")
    assert [r["structure"] for r in rows] == ["LV", "RV", "MYO", "avg"]
    for r in rows:
        assert r["cases"] == 12 and r["wins"] == 12 and r["losses"] == 0
        assert r["diff"] == pytest.approx(1.0, abs=1e-9)
        assert r["ci"][0] == pytest.approx(1.0, abs=1e-9) and r["ci"][1] == pytest.approx(1.0, abs=1e-9)
        assert r["p"] < 0.001  # 12 wins out of 12: exact two-sided p = 2 / 2**12


def test_identical_reports_tie_and_a_real_difference_matches_scipy(base, tmp_path):
    a = cmp.read_cases(write_cases_csv(_rows(base), tmp_path / "a.csv"))
    same = cmp.compare(a, a, "dice")
    assert all(r["p"] == 1.0 and r["ties"] == 12 and r["diff"] == 0.0 for r in same)
    rng = np.random.default_rng(1)
    noisy = {s: [v + e for v, e in zip(base[s], rng.normal(0.005, 0.02, 12))] for s in STRUCTURES}
    b = cmp.read_cases(write_cases_csv(_rows(noisy), tmp_path / "b.csv"))
    lv = cmp.compare(a, b, "dice")[0]
    d = (np.array(noisy["LV"]) - np.array(base["LV"])) * 100
    assert lv["diff"] == pytest.approx(d.mean()) and lv["p"] == pytest.approx(wilcoxon(d).pvalue)
    assert lv["ci"][0] < d.mean() < lv["ci"][1] and lv["wins"] == int((d > 0).sum())


def test_hd95_lower_is_better_and_undefined_cases_are_left_out(base, tmp_path):
    a = _rows(base, hd95=3.0)
    b = _rows(base, hd95=2.0)
    b[0]["LV_hd95"] = float("nan")
    rows = cmp.compare(cmp.read_cases(write_cases_csv(a, tmp_path / "a.csv")),
                       cmp.read_cases(write_cases_csv(b, tmp_path / "b.csv")), "hd95")
    assert rows[0]["cases"] == 11 and rows[0]["undefined"] == 1 and rows[0]["wins"] == 11
    assert rows[1]["diff"] == pytest.approx(-1.0) and rows[1]["undefined"] == 0


def test_cli_writes_json_and_rejects_different_case_sets(base, tmp_path, capsys):
    write_cases_csv(_rows(base), tmp_path / "a.csv")
    write_cases_csv(_rows({s: v[:10] for s, v in base.items()}), tmp_path / "b.csv")
    assert cmp.main([str(tmp_path / "a.csv"), str(tmp_path / "b.csv")]) == 2
    assert ("the reports must cover the same cases: 2 only in the first (e.g. p005_ED, p005_ES), 0 only in the second\n"
            in capsys.readouterr().err)
    assert cmp.main([str(tmp_path / "a.csv"), str(tmp_path / "none.csv")]) == 2
    assert "none.csv not found" in capsys.readouterr().err
    assert cmp.main([str(tmp_path / "a.csv"), str(tmp_path / "a.csv"), "--out", str(tmp_path / "c.json")]) == 0
    assert "12 paired cases; B − A on the dice average: +0.00" in capsys.readouterr().out
    saved = json.loads((tmp_path / "c.json").read_text())
    assert set(saved["metrics"]) == {"dice", "hd95"} and saved["metrics"]["dice"][3]["structure"] == "avg"
    with pytest.raises(ValueError, match="no rows for method 'CroCNet'"):
        cmp.read_cases(tmp_path / "a.csv", "CroCNet")


def test_cli_refuses_an_out_that_is_a_report_or_a_folder(base, tmp_path, capsys):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    write_cases_csv(_rows(base), a)
    write_cases_csv(_rows(base), b)
    saved = a.read_bytes(), b.read_bytes()
    assert cmp.main([str(a), str(b), "--out", str(a)]) == 2
    assert f"--out must be a JSON file path ending in .json, got {str(a)!r}" in capsys.readouterr().err
    (tmp_path / "link.json").symlink_to(b)
    assert cmp.main([str(a), str(b), "--out", str(tmp_path / "link.json")]) == 2
    assert f"--out {tmp_path / 'link.json'} is report B; choose another path" in capsys.readouterr().err
    assert cmp.main([str(a), str(b), "--out", str(tmp_path)]) == 2
    assert f"--out must be a JSON file path ending in .json, got the folder {str(tmp_path)!r}" in capsys.readouterr().err
    image = tmp_path / "image.nii.gz"
    image.write_bytes(b"precious")
    assert cmp.main([str(a), str(b), "--out", str(image)]) == 2
    assert f"--out must be a JSON file path ending in .json, got {str(image)!r}" in capsys.readouterr().err
    assert (a.read_bytes(), b.read_bytes(), image.read_bytes()) == (*saved, b"precious")


def test_bootstrap_below_one_is_a_clear_error(base, tmp_path, capsys):
    a = write_cases_csv(_rows(base), tmp_path / "a.csv")
    for n in ("0", "-5"):
        assert cmp.main([str(a), str(a), "--bootstrap", n]) == 2
        assert f"--bootstrap must be >= 1, got {n}" in capsys.readouterr().err
    with pytest.raises(ValueError, match="n_boot .bootstrap resamples. must be an integer >= 1, got 0"):
        cmp.compare(cmp.read_cases(a), cmp.read_cases(a), "dice", n_boot=0)


def test_report_names_say_which_levels_carry_attention():
    from crocnet.train.report import display_name

    assert display_name("e2aunet") == "E-2AUNet"
    assert display_name("e2aunet", {"attention_levels": [4, 2, 3]}) == "E-2AUNet, attention on levels 2-4"
    assert display_name("e2aunet_mhsa", {"attention_levels": [1, 3]}) == "MHSA-UNet, attention on levels 1, 3"
    assert display_name("e2aunet", {"attention_levels": []}) == "E-2AUNet, no attention block"
    assert display_name("my_net", {"depth": 4}) == "my_net"


def test_cli_compares_two_methods_of_one_report(base, tmp_path, capsys):
    rows = _rows(base)
    second = [{**r, "method": "CroCNet", **{f"{s}_dice": r[f"{s}_dice"] - 0.02 for s in STRUCTURES}} for r in rows]
    write_cases_csv(rows + second, tmp_path / "cases.csv")
    path = str(tmp_path / "cases.csv")
    assert cmp.main([path, path, "--method-b", "CroCNet", "--metric", "dice"]) == 0
    out = capsys.readouterr().out
    assert f"A: {tmp_path.name} (stage 1) | B: {tmp_path.name} (CroCNet)" in out
    assert "B − A on the dice average: -2.00" in out and "| avg | 12 |" in out


def test_read_cases_names_the_file_line_and_column_of_what_it_cannot_use(base, tmp_path):
    path = tmp_path / "cases.csv"
    rows = _rows(base)
    rows[1]["RV_hd95"] = "abc"
    for written, message in [
        (rows, "expected a number (or nan) in column RV_hd95 of case 'p000_ES' (line 3), got 'abc'"),
        (rows[:1] * 2, "expected one row per case and method, got case 'p000_ED' of method 'stage 1' twice (lines 2 and 3)"),
        ([{k: v for k, v in r.items() if k != "LV_dice"} for r in rows[:1]],
         "expected the columns of a crocnet evaluate cases.csv (case, subject, method, LV_dice, LV_hd, LV_hd95, "
         "RV_dice, RV_hd, RV_hd95, MYO_dice, MYO_hd, MYO_hd95), missing LV_dice"),
    ]:
        write_cases_csv(written, path)
        with pytest.raises(ValueError) as info:
            cmp.read_cases(path)
        assert str(info.value) == f"{path}: {message}"
    assert cmp.read_cases(path, metrics=("hd95",))["p000_ED"]["RV_hd95"] == 2.0  # only the compared columns needed
    path.write_bytes(b"\xffcase,subject")
    with pytest.raises(ValueError) as info:
        cmp.read_cases(path)
    assert str(info.value) == (f"{path}: expected a cases.csv written by crocnet evaluate (UTF-8 text), got bytes "
                               "that are not UTF-8 text (byte 0: invalid start byte)")
