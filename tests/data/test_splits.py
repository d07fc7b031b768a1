"""Subject-level splits: official M&Ms-2 split, seeded k-fold, JSON, CLI."""

from __future__ import annotations

import json
import shutil

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


def test_official_mnm2_split_takes_subject_numbers_and_refuses_other_types():
    assert mnm2_official_split([170, 1, "201"]) == {"train": ["001"], "val": ["170"], "test": ["201"]}
    with pytest.raises(ValueError, match="'361' is not an M&Ms-2 code"):
        mnm2_official_split([361])
    with pytest.raises(TypeError, match="subject codes must be strings like '001' .* got float 1.0"):
        mnm2_official_split([1.0])
    with pytest.raises(TypeError, match="got the string '001'"):
        mnm2_official_split("001")


SPLITS = {
    "dataset": "mnm2", "subjects": ["001", "002", "161", "201"],
    "official": {"train": ["001", "002"], "val": ["161"], "test": ["201"]},
    "folds": [{"fold": 0, "train": ["002", "161"], "val": ["001"]}, {"fold": 1, "train": ["001", "161"], "val": ["002"]}],
}


@pytest.mark.parametrize("change, message", [
    ({"official": {"train": ["001", "002"], "val": ["002", "161"], "test": ["201"]}},
     "expected disjoint parts in the official split, got 002 in both train and val"),
    ({"official": {"train": ["001"], "val": ["161"], "test": ["001", "201"]}},
     "expected disjoint parts in the official split, got 001 in both train and test"),
    ({"official": {"train": ["001"], "val": ["161", "201"], "test": ["201"]}},
     "expected disjoint parts in the official split, got 201 in both val and test"),
    ({"folds": [{"fold": 0, "train": ["002", "001"], "val": ["001"]}]},
     "expected disjoint parts in fold 0, got 001 in both train and val"),
    ({"folds": [{"fold": 0, "train": ["002", "161", "002"], "val": ["001"]}]},
     "expected each subject once in fold 0 'train', got 002 more than once"),
    ({"official": {"train": ["001", "001"], "val": ["161"], "test": ["201"]}},
     "expected each subject once in official 'train', got 001 more than once"),
    ({"folds": [{"fold": 0, "train": ["161"], "val": ["001", "002"]}, {"fold": 1, "train": ["161"], "val": ["002"]}]},
     "expected each subject in the val list of at most one fold, got 002 in both fold 0 and fold 1"),
    ({"folds": [{"fold": 0, "train": ["002"]}]},
     "fold 0 is missing 'val'; expected keys 'train', 'val', got 'fold', 'train'"),
    ({"official": {"train": ["001"], "test": ["201"]}},
     "'official' is missing 'val'; expected keys 'train', 'val', 'test', got 'train', 'test'"),
    ({"folds": None}, "expected 'folds' to be a list, got NoneType"),
    ({"folds": [{"fold": 0, "train": [1], "val": ["001"]}]},
     "expected fold 0 'train' to be a list of subject codes (strings), got [1]"),
    ({"test": ["001"], "pool": ["001", "002"]}, "expected 'test' subjects in no fold, got 001 in 'test' and fold 0"),
], ids=["official-train-val", "official-train-test", "official-val-test", "fold-train-val", "fold-repeat",
        "official-repeat", "val-in-two-folds", "fold-missing-val", "official-missing-val", "folds-not-list",
        "int-subject", "test-in-fold"])
def test_read_splits_rejects_overlaps_repeats_and_missing_keys(tmp_path, change, message):
    path = write_splits(tmp_path / "splits.json", {**SPLITS, **change})
    with pytest.raises(ValueError) as info:
        read_splits(path)
    assert str(info.value) == f"{path}: {message}"


def test_read_splits_names_the_file_when_it_is_not_a_split_description(tmp_path):
    path = tmp_path / "splits.json"
    for text, message in [("{}", "the split description is missing 'folds'; expected keys 'folds', got none"),
                          ('{"train": []}', "is missing 'folds'; expected keys 'folds', got 'train'"),
                          ("[]", "expected a JSON object with 'folds', got list"),
                          ("{", "expected a JSON split description, got invalid JSON")]:
        path.write_text(text)
        with pytest.raises(ValueError, match="splits.json: ") as info:
            read_splits(path)
        assert str(info.value).startswith(f"{path}: ") and message in str(info.value), text
    path.write_bytes(b"\xff{}")
    with pytest.raises(ValueError) as info:
        read_splits(path)
    assert str(info.value) == (f"{path}: expected a JSON split description (UTF-8 text), got bytes that are not "
                               "UTF-8 text (byte 0: invalid start byte)")
    path = write_splits(path, SPLITS)
    assert read_splits(path) == SPLITS  # a valid description, and a training run's layout, still load
    run_layout = {"seed": 0, "test": ["201"], "pool": ["001", "002"], "folds": SPLITS["folds"]}
    assert read_splits(write_splits(path, run_layout)) == run_layout


@pytest.mark.parametrize("argv, message", [
    (["--folds", "1"], "--folds must be at least 2 (and at most the number of subjects), got 1"),
    (["--folds", "4"], "the number of folds (--folds) must be between 2 and the 3 subjects of the pool 'all', got 4"),
    (["--data", "{tmp}/missing"], "missing: M&Ms-2 folder not found"),
    (["--out", "{tmp}"], "--out must be a JSON file path ending in .json, got the folder '{tmp}'"),
    (["--out", "{tmp}/afile/s.json"], "its folder cannot be created, '{tmp}/afile' is a file"),
    (["--out", "{tmp}/afile"], "--out must be a JSON file path ending in .json, got '{tmp}/afile'"),
    (["--dataset", "acdc"], "expected ACDC patient folders"),
])
def test_cli_errors_are_one_line_on_stderr(phantom_root, tmp_path, capsys, argv, message):
    (tmp_path / "afile").write_text("precious")
    argv = [a.format(tmp=tmp_path) for a in argv]
    base = {"--data": str(phantom_root), "--out": str(tmp_path / "s.json"), "--folds": "3"}
    base.update(zip(argv[::2], argv[1::2]))
    assert cli(["splits", *[x for kv in base.items() for x in kv]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("crocnet splits: error: ") and message.format(tmp=tmp_path) in err and "Traceback" not in err
    assert not (tmp_path / "s.json").exists() and (tmp_path / "afile").read_text() == "precious"


def test_cli_writes_no_file_of_the_data_folder_but_its_own_split_file(phantom_root, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(phantom_root, data)
    image = data / "dataset" / "001" / "001_LA_ED.nii.gz"
    saved = image.read_bytes(), (data / "dataset_information.csv").read_bytes()
    (data / "notes.json").write_text('{"labels": {}}')
    for out, message in [(image, f"--out must be a JSON file path ending in .json, got {str(image)!r}"),
                         (data / "notes.json", f"--out {str(data / 'notes.json')!r} is a file of the --data folder "
                                               f"{str(data)!r}, not a split description; choose another path")]:
        assert cli(["splits", "--data", str(data), "--out", str(out), "--folds", "3"]) == 2
        assert message in capsys.readouterr().err
    assert (image.read_bytes(), (data / "dataset_information.csv").read_bytes()) == saved
    assert (data / "notes.json").read_text() == '{"labels": {}}'
    for _ in range(2):  # the README's --out MnM2/splits.json, written and then rewritten
        assert cli(["splits", "--data", str(data), "--out", str(data / "splits.json"), "--folds", "3"]) == 0
        assert f"wrote {data / 'splits.json'}: 3 subjects" in capsys.readouterr().out
