"""Subject-level splits: official M&Ms-2 split, seeded k-fold, JSON, CLI."""

from __future__ import annotations

import json

import pytest

from crocnet.cli import main as cli
from crocnet.data import kfold, load_mnm2, make_splits, mnm2_official_split, read_splits, select, write_splits


def test_official_mnm2_split():
    split = mnm2_official_split()
    assert [len(split[p]) for p in ("train", "val", "test")] == [160, 40, 160]
    assert (split["train"][0], split["train"][-1], split["val"][0], split["val"][-1]) == ("001", "160", "161", "200")
    assert (split["test"][0], split["test"][-1]) == ("201", "360")
    assert mnm2_official_split(["200", "001", "201"]) == {"train": ["001"], "val": ["200"], "test": ["201"]}
    with pytest.raises(ValueError, match="361"):
        mnm2_official_split(["361"])


def test_kfold_partitions_by_subject_and_is_seeded():
    subjects = [f"{n:03d}" for n in range(1, 24)]
    folds = kfold(subjects, k=5, seed=0)
    vals = [set(f["val"]) for f in folds]
    assert sorted(s for v in vals for s in v) == subjects  # every subject validated exactly once
    assert sorted(len(v) for v in vals) == [4, 4, 5, 5, 5]
    for fold in folds:
        assert set(fold["train"]) | set(fold["val"]) == set(subjects) and not set(fold["train"]) & set(fold["val"])
    assert kfold(list(reversed(subjects)), 5, 0) == folds  # depends on the set, not the order
    assert kfold(subjects, 5, 1) != folds
    with pytest.raises(ValueError):
        kfold(subjects[:3], k=5)


def test_kfold_stratified_balances_each_stratum():
    subjects = [f"{n:03d}" for n in range(1, 31)]
    strata = {s: ("A" if int(s) <= 20 else "B") for s in subjects}
    for fold in kfold(subjects, 5, seed=2, strata=strata):
        assert [strata[s] for s in fold["val"]].count("A") == 4
        assert [strata[s] for s in fold["val"]].count("B") == 2


def test_records_of_a_subject_never_split(phantom_root):
    records = load_mnm2(phantom_root, views=("LA",))
    for fold in kfold([r.subject for r in records], k=3, seed=0):
        train, val = select(records, fold["train"]), select(records, fold["val"])
        assert len(train) + len(val) == len(records)
        assert not {r.subject for r in train} & {r.subject for r in val}
        assert all(sum(r.subject == v.subject for r in val) == 2 for v in val)  # ED and ES together


def test_make_splits_json_round_trip_and_cli(phantom_root, tmp_path, capsys):
    splits = make_splits("mnm2", phantom_root, k=3, seed=0, stratify="vendor")
    assert splits["subjects"] == ["001", "002", "003"] and splits["official"]["train"] == ["001", "002", "003"]
    path = write_splits(tmp_path / "s.json", splits)
    assert read_splits(path) == splits
    out = tmp_path / "cli.json"
    assert cli(["splits", "--data", str(phantom_root), "--out", str(out), "--folds", "3", "--seed", "0",
                "--stratify", "vendor"]) == 0
    assert json.loads(out.read_text()) == json.loads(path.read_text())
    assert "3 folds" in capsys.readouterr().out
    bad = dict(splits, folds=[{"fold": 0, "train": ["001"], "val": ["001"]}])
    write_splits(tmp_path / "bad.json", bad)
    with pytest.raises(ValueError, match="both train and val"):
        read_splits(tmp_path / "bad.json")
    with pytest.raises(SystemExit):
        cli(["splits", "-h"])
    assert "--pool" in capsys.readouterr().out
