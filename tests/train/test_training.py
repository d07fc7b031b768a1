"""Training, evaluation and prediction end to end, at tiny sizes (phantoms, 1-3 epochs, widths 4)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch

from crocnet import cli
from crocnet.data import write_phantoms
from crocnet.models import MHSABlock2d
from crocnet.train import checkpoint as ckpt_mod
from crocnet.train import export as export_mod
from crocnet.train import compare, demo, evaluate, predict, train
from crocnet.train.inference import Segmenter

TINY = ["--base-width", "4", "--image-size", "32", "--folds", "2", "--no-progress", "--batch-size", "4"]


@pytest.fixture(scope="session")
def phantoms(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phantoms")
    write_phantoms(root, subjects=4, seed=3)
    return root


def test_demo_quick_writes_the_whole_report(demo_run):
    report = demo_run / "report"
    for name in ("table.md", "cases.csv", "summary.json"):
        assert (report / name).is_file(), name
    assert len(list((report / "overlays").glob("*.png"))) == 2
    assert list(report.glob("curves-*.png"))
    table = (report / "table.md").read_text()
    assert "stage 1 (E-2AUNet)" in table and "CroCNet (specialists)" in table and "HD95 LV (mm)" in table and "Dice avg (%)" in table
    summary = json.loads((report / "summary.json").read_text())
    assert summary["summary"]["CroCNet"]["cases"] == summary["cases"] > 0
    for run in ("stage1-e2aunet/fold0", "stage1-e2aunet/fold1", "stage2-crocnet_specialists/fold0"):
        for name in ("config.json", "versions.json", "log.jsonl", "curves.png", "last.pt", "best.pt", "best.safetensors"):
            assert (demo_run / run / name).is_file(), f"{run}/{name}"
    # the out-of-fold predictions of the two stage-1 folds cover the whole cross-validation pool, disjointly
    splits = json.loads((demo_run / "splits.json").read_text())
    oof = [torch.load(demo_run / f"stage1-e2aunet/fold{k}/oof.pt", weights_only=False) for k in range(2)]
    subjects = [{key.split(":")[1].split("_")[0] for key in o} for o in oof]
    assert subjects[0] == set(splits["folds"][0]["val"]) and subjects[1] == set(splits["folds"][1]["val"])
    assert not subjects[0] & subjects[1] and not (subjects[0] | subjects[1]) & set(splits["test"])


def test_demo_refuses_a_folder_holding_another_preset(demo_run, capsys):
    assert demo.main(["--out", str(demo_run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{demo_run} holds a demo with preset 'quick' and seed 0, not 'full' with seed 0; add --fresh" in err
    assert demo.main(["--quick", "--seed", "1", "--out", str(demo_run), "--no-progress"]) == 2
    assert "not 'quick' with seed 1" in capsys.readouterr().err


def test_demo_fresh_deletes_only_a_demo_folder_and_checks_the_arguments_first(tmp_path, capsys):
    mine = tmp_path / "mine"
    (mine / "thesis").mkdir(parents=True)
    (mine / "notes.txt").write_text("precious")
    assert demo.main(["--quick", "--fresh", "--out", str(mine), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert (f"--fresh deletes --out, but {str(mine)!r} is not a crocnet demo folder: it holds no demo.json and 2 entries "
            f"(notes.txt, thesis/); nothing was deleted") in err
    (mine / "demo.json").write_text("[]")
    assert demo.main(["--quick", "--fresh", "--out", str(mine), "--no-progress"]) == 2
    assert "it holds a demo.json that is not a demo's marker and 3 entries (demo.json, notes.txt, thesis/)" in capsys.readouterr().err
    assert (mine / "notes.txt").read_text() == "precious" and (mine / "thesis").is_dir()
    # a demo's own folder: bad arguments are refused before --fresh deletes it
    old = tmp_path / "old-demo"
    old.mkdir()
    (old / "demo.json").write_text(json.dumps({"preset": "quick", "seed": 0}))
    (old / "kept.txt").write_text("x")
    for extra, message in ((["--device", "gpu"], "--device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
                           (["--seed", "-1"], "--seed must be >= 0, got -1")):
        assert demo.main(["--quick", "--fresh", "--out", str(old), "--no-progress", *extra]) == 2
        assert message in capsys.readouterr().err
        assert sorted(p.name for p in old.iterdir()) == ["demo.json", "kept.txt"]
    assert demo.main(["--quick", "--fresh", "--out", str(mine / "notes.txt"), "--no-progress"]) == 2
    assert f"--out must be a folder, got the file {str(mine / 'notes.txt')!r}" in capsys.readouterr().err
    assert (mine / "notes.txt").read_text() == "precious"


def _final_weights(run: Path) -> dict:
    return torch.load(run / "last.pt", weights_only=False)["state_dict"]


def test_resume_after_a_kill_gives_the_same_weights(phantoms, tmp_path, monkeypatch):
    args = ["--data", str(phantoms), "--stage", "1", "--fold", "0", "--epochs", "3", *TINY]
    assert train.main([*args, "--out", str(tmp_path / "straight")]) == 0

    saves = {"n": 0}
    real = ckpt_mod.atomic_save

    def killed_after_epoch_two(obj, path):
        real(obj, path)
        if Path(path).name == "last.pt":
            saves["n"] += 1
            if saves["n"] == 2:
                raise KeyboardInterrupt  # the process dies right after writing epoch 2
    import crocnet.train.engine as engine

    monkeypatch.setattr(engine, "atomic_save", killed_after_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train.main([*args, "--out", str(tmp_path / "killed")])
    monkeypatch.setattr(engine, "atomic_save", real)
    run = tmp_path / "killed" / "stage1-e2aunet" / "fold0"
    assert torch.load(run / "last.pt", weights_only=False)["epoch"] == 2
    assert train.main([*args, "--out", str(tmp_path / "killed"), "--resume"]) == 0
    a, b = _final_weights(tmp_path / "straight" / "stage1-e2aunet" / "fold0"), _final_weights(run)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6, msg=key)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in log] == [1, 2, 3]


def test_a_kill_between_the_log_and_the_checkpoint_trains_that_epoch_once_more_and_logs_it_once(phantoms, tmp_path, monkeypatch):
    args = ["--data", str(phantoms), "--stage", "1", "--fold", "0", "--epochs", "2", *TINY, "--out", str(tmp_path)]
    real = ckpt_mod.atomic_save
    import crocnet.train.engine as engine

    def killed_before_epoch_two_is_saved(obj, path):
        if Path(path).name == "last.pt" and obj["epoch"] == 2:
            raise KeyboardInterrupt  # epoch 2 is in log.jsonl, last.pt still holds epoch 1
        real(obj, path)

    monkeypatch.setattr(engine, "atomic_save", killed_before_epoch_two_is_saved)
    with pytest.raises(KeyboardInterrupt):
        train.main(args)
    run = tmp_path / "stage1-e2aunet" / "fold0"
    assert [json.loads(line)["epoch"] for line in (run / "log.jsonl").read_text().splitlines()] == [1, 2]
    monkeypatch.setattr(engine, "atomic_save", real)
    (run / ".last.pt.x1y2z3.tmp").write_bytes(b"half a checkpoint")  # what a kill inside atomic_save leaves
    assert train.main([*args, "--resume"]) == 0
    assert not list(run.glob(".*.tmp"))
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in log] == [1, 2]
    umask = os.umask(0)
    os.umask(umask)
    for name in ("config.json", "last.pt", "best.safetensors", "curves.png"):  # not mkstemp's private 0600
        assert (run / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
    assert log[0]["lr"] == 1e-4  # the rate epoch 1 trained at (the default), not the next epoch's


@pytest.mark.parametrize("change, named", [
    (dict(views=("SA",)), "views ('LA',) (now ('SA',))"),
    (dict(dataset="mnm2"), "dataset 'phantom' (now 'mnm2')"),
    (dict(stage=2, crop_from="frame"), "crop_from None (now 'frame')"),
    (dict(stage=2, crop_margin=5), "crop_margin 15 (now 5)"),
    (dict(stage=2, stage1_run="runs/b"), "stage1_run 'runs/a' (now 'runs/b')"),
])
def test_resume_refuses_other_data_settings(change, named, tmp_path):
    """What a run trains and validates on is part of it: another view, dataset, crop or stage-1 run would
    mix two trainings in one set of weights."""
    from crocnet.train import engine
    from crocnet.train.config import TrainConfig

    base = dict(stage=change.get("stage", 1), stage1_run="runs/a" if change.get("stage") == 2 else None)
    state = {"model": "m", "model_kwargs": {}, "config": TrainConfig(**base).to_json()}
    engine.check_resumable(state, TrainConfig(**base), "m", {}, tmp_path / "last.pt")  # the same: resumes
    with pytest.raises(ValueError, match="was written with other settings") as err:
        engine.check_resumable(state, TrainConfig(**{**base, **change}), "m", {}, tmp_path / "last.pt")
    assert named in str(err.value)


def test_resume_refuses_other_settings_and_says_which(phantoms, tmp_path, capsys):
    args = ["--data", str(phantoms), "--stage", "1", "--fold", "0", "--epochs", "1", *TINY, "--out", str(tmp_path)]
    assert train.main([*args, "--resume"]) == 0  # nothing to resume yet: a new run, said so
    assert "no last.pt to resume from yet, starting at epoch 1" in capsys.readouterr().out
    width = TINY[TINY.index("--base-width") + 1]
    rest = [a for i, a in enumerate(TINY) if a != "--base-width" and (i == 0 or TINY[i - 1] != "--base-width")]
    other = ["--data", str(phantoms), "--stage", "1", "--fold", "0", "--epochs", "3", *rest, "--base-width", str(2 * int(width)),
             "--out", str(tmp_path), "--resume"]
    assert train.main(other) == 2
    err = capsys.readouterr().err
    assert "was written with other settings" in err and "epochs 1 (now 3)" in err and f"base_width {width} (now {2 * int(width)})" in err
    # a checkpoint from before a setting existed had its default behaviour
    last = tmp_path / "stage1-e2aunet" / "fold0" / "last.pt"
    state = torch.load(last, weights_only=False)
    del state["config"]["outside_label"]
    torch.save(state, last)
    assert train.main([*args, "--resume", "--outside-label", "background"]) == 2
    assert "outside_label 'none' (now 'background')" in capsys.readouterr().err
    assert train.main([*args, "--resume"]) == 0
    state = torch.load(last, weights_only=False)
    key = next(k for k in state["state_dict"] if k.endswith(".weight"))
    state["state_dict"][key] = state["state_dict"][key][:1]
    torch.save(state, last)
    assert train.main([*args, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "the weights of --resume checkpoint" in err and f"1 shape mismatches, saved vs model (first: {key} (1," in err
    assert len(err.strip().splitlines()) == 1


def test_resume_without_last_pt_keeps_a_later_best_pt(phantoms, tmp_path, capsys):
    """``--resume`` with best.pt but no last.pt: a kill between the two writes of epoch 1 restarts at epoch 1;
    a best.pt of a later epoch (last.pt removed) is refused, not overwritten by the restart's epoch 1."""
    args = ["--data", str(phantoms), "--stage", "1", "--fold", "0", "--epochs", "1", *TINY, "--out", str(tmp_path), "--resume"]
    assert train.main(args) == 0
    run = tmp_path / "stage1-e2aunet" / "fold0"
    (run / "last.pt").unlink()
    capsys.readouterr()
    assert train.main(args) == 0  # best.pt is epoch 1's: trained again
    assert "no last.pt to resume from yet, starting at epoch 1" in capsys.readouterr().out
    (run / "last.pt").unlink()
    state = torch.load(run / "best.pt", weights_only=False)
    state["epoch"] = 7
    torch.save(state, run / "best.pt")
    before = (run / "best.pt").read_bytes()
    assert train.main(args) == 2
    err = capsys.readouterr().err
    assert f"--resume: {run} has no last.pt (the training state a run continues from) but has best.pt from epoch 7" in err
    assert (run / "best.pt").read_bytes() == before and not (run / "last.pt").exists()
    torch.save({"state_dict": state["state_dict"]}, run / "best.pt")  # weights alone, no epoch
    assert train.main(args) == 2
    assert "but has best.pt without a recorded epoch, which starting again" in capsys.readouterr().err
    (run / "best.pt").write_bytes(b"torn")
    assert train.main(args) == 2
    assert f"--resume: {run / 'best.pt'} could not be read" in capsys.readouterr().err


def test_resume_from_a_torn_or_foreign_last_pt_is_a_clear_error(phantoms, tmp_path, capsys):
    """A truncated or empty last.pt, or best.pt copied over it, used to end in a traceback (OSError, EOFError,
    KeyError 'optimizer'); now: exit 2, one line naming last.pt and what to do."""
    args = ["--data", str(phantoms), "--stage", "1", "--fold", "0", "--epochs", "1", *TINY, "--out", str(tmp_path)]
    assert train.main(args) == 0
    run = tmp_path / "stage1-e2aunet" / "fold0"
    last = run / "last.pt"
    data = last.read_bytes()
    fix = f"Delete or rename {last} to start this run from epoch 1, or train into another --out"
    for content, message in ((data[: len(data) // 2], f"--resume: {last} could not be read ("),
                             (b"", f"--resume: {last} could not be read (EOFError"),
                             ((run / "best.pt").read_bytes(), f"--resume: {last} is not a training checkpoint: expected "
                              "state_dict, optimizer, scheduler, history, best, epoch, missing optimizer, scheduler, "
                              "history, best (a copy of best.pt?")):
        last.write_bytes(content)
        capsys.readouterr()
        assert train.main([*args, "--resume"]) == 2
        err = capsys.readouterr().err
        assert message in err and fix in err and len(err.strip().splitlines()) == 1, err
        assert last.read_bytes() == content  # left as it was, for the user to look at


def _contents(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_training_again_without_resume_is_refused_for_every_fold_before_any_is_trained(phantoms, tmp_path, capsys, monkeypatch):
    args = ["--data", str(phantoms), "--stage", "1", "--epochs", "1", "--max-train-batches", "1", *TINY, "--out", str(tmp_path)]
    assert train.main([*args, "--fold", "1"]) == 0
    before = _contents(tmp_path)
    monkeypatch.setattr(train, "fit", lambda *a, **k: pytest.fail("trained before every fold was checked"))
    capsys.readouterr()
    assert train.main([*args, "--fold", "all"]) == 2
    run = tmp_path / "stage1-e2aunet" / "fold1"
    assert (f"{run} already holds a run (last.pt at epoch 1 of 1); pass --resume to continue it, or choose another "
            f"--out") in capsys.readouterr().err
    assert _contents(tmp_path) == before and not (tmp_path / "stage1-e2aunet" / "fold0").exists()
    (run / "last.pt").unlink()  # kept only best.pt: still a run to keep
    assert train.main([*args, "--fold", "1"]) == 2
    assert f"{run} already holds a run (best.pt); pass --resume" in capsys.readouterr().err


def test_a_saved_split_with_other_settings_is_refused_naming_both(phantoms, tmp_path, capsys, monkeypatch):
    """``OUT/splits.json`` of 2 folds used to be reused for --folds 3 (IndexError, or two folds trained before it)
    and for another --split-seed (silently, while config.json recorded the new seed)."""
    records = train.load_records(train.TrainConfig(data=str(phantoms)))
    train.prepare_split(train.TrainConfig(data=str(phantoms), folds=2), records, tmp_path)
    saved = (tmp_path / "splits.json").read_text()
    monkeypatch.setattr(train, "fit", lambda *a, **k: pytest.fail("trained on a split of other settings"))
    base = ["--data", str(phantoms), "--epochs", "1", *TINY[:2], "--image-size", "32", "--no-progress", "--out", str(tmp_path)]
    for extra, got in ((["--fold", "2", "--folds", "3"], "--folds 3 --split-seed 0 --test-fraction 0.0"),
                       (["--fold", "all", "--folds", "3"], "--folds 3 --split-seed 0 --test-fraction 0.0"),
                       (["--folds", "2", "--split-seed", "9"], "--folds 2 --split-seed 9 --test-fraction 0.0"),
                       (["--folds", "2", "--test-fraction", "0.25"], "--folds 2 --split-seed 0 --test-fraction 0.25")):
        assert train.main([*base, *extra]) == 2, extra
        assert (f"{tmp_path / 'splits.json'} has 2 folds (seed 0, test fraction 0.0), got {got}; use the same settings "
                f"or another --out") in capsys.readouterr().err, extra
    assert (tmp_path / "splits.json").read_text() == saved and [p.name for p in tmp_path.iterdir()] == ["splits.json"]
    older = {k: v for k, v in json.loads(saved).items() if k != "test_fraction"}  # written before it was stored
    (tmp_path / "splits.json").write_text(json.dumps(older))
    assert train.prepare_split(train.TrainConfig(data=str(phantoms), folds=2), records, tmp_path) == older
    with pytest.raises(ValueError, match=r"has 2 folds \(seed 0\), got --folds 2 --split-seed 1 "):
        train.prepare_split(train.TrainConfig(data=str(phantoms), folds=2, split_seed=1), records, tmp_path)


def test_train_out_must_be_a_folder_that_can_be_made(phantoms, tmp_path, capsys):
    taken = tmp_path / "notes.txt"
    taken.write_text("keep")
    args = ["--data", str(phantoms), "--epochs", "1", *TINY]
    assert train.main([*args, "--out", str(taken)]) == 2
    assert (f"--out must be a folder for the runs (splits.json, stage1-*/, stage2-*/), got the file {str(taken)!r}; "
            f"choose another path") in capsys.readouterr().err
    assert train.main([*args, "--out", str(taken / "sub")]) == 2
    assert f"its folder cannot be created, {str(taken)!r} is a file" in capsys.readouterr().err
    assert taken.read_text() == "keep"


def test_torn_or_foreign_out_of_fold_files_are_named_with_what_was_found(tmp_path):
    good = {"mnm2:001_LA_ED:0": torch.zeros(40, 48, dtype=torch.uint8)}
    for k in range(2):
        (tmp_path / f"fold{k}").mkdir()
        torch.save(good, tmp_path / f"fold{k}" / "oof_native.pt")
    assert train.read_oof(tmp_path).keys() == good.keys()
    path = tmp_path / "fold1" / "oof_native.pt"
    data = path.read_bytes()
    checkpoint = {"model": "e2aunet", "model_kwargs": {}, "state_dict": {"w": torch.zeros(2)}, "epoch": 1}
    fix = "write it again: train that stage-1 fold once more with --resume (same --out and settings)"
    for content, message in ((data[: len(data) // 2], f"{path} could not be read ("),
                             (b"", f"{path} could not be read (EOFError"),
                             (checkpoint, f"{path} is not stage 1's out-of-fold predictions: expected a dict of slice key "
                              "-> 2D label map, got keys 'model', 'model_kwargs', 'state_dict', 'epoch' (a checkpoint copied there?)"),
                             ([1, 2], f"{path} is not stage 1's out-of-fold predictions: expected a dict of slice key -> "
                              "label map, got list")):
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            torch.save(content, path)
        with pytest.raises(ValueError) as info:
            train.read_oof(tmp_path)
        assert message in str(info.value) and fix in str(info.value), str(info.value)


def test_init_fine_tunes_from_a_checkpoint_each_fold_from_its_own(phantoms, tmp_path, capsys):
    args = ["--data", str(phantoms), "--stage", "1", "--epochs", "1", *TINY]
    assert train.main([*args, "--fold", "all", "--out", str(tmp_path / "pre")]) == 0
    pre = tmp_path / "pre" / "stage1-e2aunet"
    # lr 0: Adam moves nothing, so every parameter must still be the initial checkpoint's (fold 1's own)
    assert train.main([*args, "--fold", "1", "--lr", "0", "--init", str(pre), "--out", str(tmp_path / "ft")]) == 0
    assert f"starting from the weights of {pre / 'fold1' / 'best.pt'}" in capsys.readouterr().out
    run = tmp_path / "ft" / "stage1-e2aunet" / "fold1"
    tuned = torch.load(run / "last.pt", weights_only=False)["state_dict"]
    start = torch.load(pre / "fold1" / "best.pt", weights_only=False)["state_dict"]
    fresh = torch.load(pre / "fold0" / "best.pt", weights_only=False)["state_dict"]
    params = [k for k in tuned if "running" not in k and "num_batches" not in k]
    assert params and all(torch.equal(tuned[k], start[k]) for k in params)
    assert not all(torch.equal(tuned[k], fresh[k]) for k in params)
    assert json.loads((run / "config.json").read_text())["init"] == str(pre)
    # one checkpoint of another fold: allowed (another dataset's, say), with a warning about leakage
    with pytest.warns(UserWarning, match="was trained as fold 0, this run is fold 1"):
        assert train.main([*args, "--fold", "1", "--init", str(pre / "fold0" / "best.pt"), "--out", str(tmp_path / "x")]) == 0
    # another architecture: a clear error naming both
    assert train.main([*args, "--fold", "0", "--base-width", "8", "--init", str(pre), "--out", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert "'base_width': 4" in err and "'base_width': 8" in err and "pass the same --model" in err
    assert "the file has base_width 4 (this run: 8)" in err
    # refused before its first fold: the splits.json it wrote is kept (another fold's job may be using it), and a
    # corrected run with other --folds is told it may delete it
    assert train.main([*args, "--fold", "0", "--base-width", "8", "--folds", "3", "--out", str(tmp_path / "y")]) == 2
    assert ("has 2 folds (seed 0, test fraction 0.0), got --folds 3 --split-seed 0 --test-fraction 0.0; use the same "
            "settings or another --out; no fold has been trained on it (a run refused before its first fold left it): "
            "delete it to start over") in capsys.readouterr().err
    assert train.main([*args, "--fold", "0", "--init", str(tmp_path / "none.pt"), "--out", str(tmp_path / "z")]) == 2
    assert "none.pt' not found" in capsys.readouterr().err
    broken = torch.load(pre / "fold0" / "best.pt", weights_only=False)
    name = next(k for k in broken["state_dict"] if k.endswith("running_var"))
    broken["state_dict"][name][0] = float("inf")
    torch.save(broken, tmp_path / "broken.pt")
    assert train.main([*args, "--fold", "0", "--init", str(tmp_path / "broken.pt"), "--out", str(tmp_path / "z")]) == 2
    assert f"holds NaN or inf in {name}" in capsys.readouterr().err
    # weights that contradict the checkpoint's own description: one line, not load_state_dict's page
    cut = torch.load(pre / "fold0" / "best.pt", weights_only=False)
    dropped = next(iter(cut["state_dict"]))
    del cut["state_dict"][dropped]
    torch.save(cut, tmp_path / "cut.pt")
    assert train.main([*args, "--fold", "0", "--init", str(tmp_path / "cut.pt"), "--out", str(tmp_path / "z")]) == 2
    err = capsys.readouterr().err
    assert f"do not fit that model: 1 missing weights (first: {dropped})" in err and len(err.strip().splitlines()) == 1


def test_compiled_training_gives_the_weights_of_eager_training(phantoms, tmp_path, monkeypatch):
    """``--compile`` trains through ``torch.compile`` (here its ``eager`` backend: dynamo's graphs run as they
    are, so the numbers are eager's to the bit); checkpoints keep the network's own parameter names."""
    args = ["--data", str(phantoms), "--stage", "1", "--epochs", "1", "--max-train-batches", "2", "--fold", "0", *TINY]
    assert train.main([*args, "--out", str(tmp_path / "eager")]) == 0
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda net, _real=torch.compile, **kw: compiled.append(kw) or _real(net, **kw))
    assert train.main([*args, "--compile", "eager", "--out", str(tmp_path / "compiled")]) == 0
    assert compiled == [{"backend": "eager"}]
    want, got = (torch.load(tmp_path / run / "stage1-e2aunet" / "fold0" / "last.pt", weights_only=False)["state_dict"]
                 for run in ("eager", "compiled"))
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    config = json.loads((tmp_path / "compiled" / "stage1-e2aunet" / "fold0" / "config.json").read_text())
    assert config["compile"] == "eager"


def test_ddp_two_cpu_processes(phantoms, tmp_path, capsys):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29531",
           "-m", "crocnet.cli", "train", "--data", str(phantoms), "--stage", "1", "--fold", "0", "--epochs", "1",
           "--out", str(tmp_path / "ddp"), *TINY]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    run = tmp_path / "ddp" / "stage1-e2aunet" / "fold0"
    state = torch.load(run / "last.pt", weights_only=False)
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())
    assert len((run / "log.jsonl").read_text().splitlines()) == 1  # one writer: rank 0
    assert state["world_size"] == 2 and (run / "oof.pt").is_file()
    # --batch-size is per process: resuming with another process count would change the effective batch
    args = ["--data", str(phantoms), "--stage", "1", "--fold", "0", "--epochs", "2", "--out", str(tmp_path / "ddp"),
            *TINY, "--resume"]
    assert train.main(args) == 2
    assert "was written with other settings: 2 training process(es) (now 1)" in capsys.readouterr().err


def test_each_process_gets_its_share_and_its_own_random_draws():
    """The epoch's order is shared and split across the processes, padded as DistributedSampler does (every
    sample seen, the same count each, also with fewer samples than processes); the seeds of dropout and
    augmentation differ per process, and rank 0's are those of a one-process run."""
    from crocnet.train import engine

    for n, world in ((5, 2), (2, 3), (8, 4), (1, 2)):
        order = torch.randperm(n)
        shares = [engine.shard(order, engine.Distributed(rank, world)) for rank in range(world)]
        assert {len(share) for share in shares} == {-(-n // world)}
        assert set(torch.cat(shares).tolist()) == set(range(n))
    order = torch.randperm(7)
    assert engine.shard(order, engine.Distributed()) is order
    assert engine.epoch_seed(3, 5) == engine.epoch_seed(3, 5, 0) == (3 * 1_000_003 + 5 * 7919) % 2**31
    assert len({engine.epoch_seed(3, 5, rank) for rank in range(4)}) == 4


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--data", "/nonexistent/folder"], "--data '/nonexistent/folder' does not exist"),
        (["--fold", "7"], "--fold must be 'all' or an integer in 0..4, got '7'"),
        (["--stage", "2"], "--stage 2 needs --stage1-run"),
        (["--model", "crocnet_single"], "stage 1 trains one of e2aunet, e2aunet_mhsa, e2aunet_noattn"),
        (["--image-size", "50"], "--image-size must be a positive multiple of 2**depth = 16, got 50"),
        (["--image-size", "0"], "--image-size must be a positive multiple of 2**depth = 16, got 0"),
        (["--image-size", "-32"], "--image-size must be a positive multiple of 2**depth = 16, got -32"),
        (["--depth", "-1"], "--depth must be >= 0 (the number of down-samplings), got -1"),
        (["--test-fraction", "-0.25"], "--test-fraction must be in [0, 1): the fraction of subjects held out as a test split, got -0.25"),
        (["--test-fraction", "1.5"], "--test-fraction must be in [0, 1): the fraction of subjects held out as a test split, got 1.5"),
        (["--test-fraction", "1"], "--test-fraction must be in [0, 1)"),
        (["--test-fraction", "nan"], "--test-fraction must be in [0, 1)"),
        (["--max-train-batches", "0"], "--max-train-batches must be >= 1 (or left out for every batch), got 0"),
        (["--max-train-batches", "-1"], "--max-train-batches must be >= 1 (or left out for every batch), got -1"),
        (["--lr-milestones", "2", "-1"], "--lr-milestones must be fractions of --epochs in (0, 1), strictly ascending (e.g. 0.2 0.4), got 2.0 -1.0"),
        (["--lr-milestones", "0.4", "0.2"], "--lr-milestones must be fractions of --epochs in (0, 1), strictly ascending (e.g. 0.2 0.4), got 0.4 0.2"),
        (["--lr-milestones", "0.2", "0.2"], "strictly ascending (e.g. 0.2 0.4), got 0.2 0.2"),
        (["--lr-milestones", "0"], "--lr-milestones must be fractions of --epochs in (0, 1)"),
        (["--lr-milestones", "1"], "--lr-milestones must be fractions of --epochs in (0, 1)"),
        (["--attention-levels", "1", "5"], "--attention-levels must lie in 0..depth = 0..4, got [1, 5]"),
        (["--val-every", "0"], "--val-every must be >= 1, got 0"),
        (["--compile", "nope"], "--compile must name a torch.compile backend ("),
        (["--stage", "2", "--stage1-run", "x", "--outside-label", "background"], "--outside-label applies to stage 1"),
    ],
)
def test_bad_arguments_are_clear_errors(phantoms, argv, message, capsys):
    base = ["--data", str(phantoms)] if "--data" not in argv else []
    assert train.main([*base, *argv]) == 2
    assert message in capsys.readouterr().err


def test_limits_of_the_checked_options_are_accepted(phantoms):
    train.TrainConfig(data=str(phantoms), test_fraction=0.0, max_train_batches=1, lr_milestones=(0.5,), image_size=16).validate()
    train.TrainConfig(data=str(phantoms), test_fraction=0.99, max_train_batches=None, lr_milestones=(), depth=0, image_size=1).validate()


def test_unknown_choice_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as info:
        train.main(["--dataset", "kaggle"])
    assert info.value.code == 2
    assert "invalid choice: 'kaggle'" in capsys.readouterr().err


def test_evaluate_and_predict_errors(tmp_path, capsys):
    assert evaluate.main(["--stage1", str(tmp_path / "none.pt"), "--data", str(tmp_path)]) == 2
    assert "none.pt' not found" in capsys.readouterr().err
    assert predict.main(["--checkpoint", "x.pt", "--input", str(tmp_path / "a.nii.gz"), "--output", "b.nii.gz"]) == 2
    assert "a.nii.gz' not found" in capsys.readouterr().err
    assert predict.main(["--checkpoint", "x.pt", "--input", str(tmp_path), "--output", "b.nii.gz"]) == 2
    assert "is a folder; expected one NIfTI file (.nii or .nii.gz)" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not be read"):
        ckpt_mod.read_checkpoint(bad)


def test_train_checks_the_split_file_it_is_given(phantoms, tmp_path, capsys):
    folds = [{"fold": 0, "train": ["002", "003"], "val": ["001"]}, {"fold": 1, "train": ["001"], "val": ["002", "003"]}]
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"official": {"train": ["001", "002", "003"], "val": [], "test": []}, "folds": folds}))
    cfg = train.TrainConfig(split_file=str(good))
    records = [SimpleNamespace(subject=s) for s in ("001", "002", "003")]
    split = train.prepare_split(cfg, records, tmp_path / "run")
    assert (split["pool"], split["test"], split["folds"]) == (["001", "002", "003"], [], folds)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"folds": [folds[0], {"fold": 1, "train": ["002"], "val": ["001", "003"]}]}))
    with pytest.raises(ValueError, match="bad.json: expected each subject in the val list of at most one fold, got 001"):
        train.prepare_split(train.TrainConfig(split_file=str(bad)), [], tmp_path / "run2")
    assert train.main(["--data", str(phantoms), "--split-file", str(bad), "--out", str(tmp_path / "run3"), *TINY[:4]]) == 2
    assert f"{bad}: expected each subject in the val list of at most one fold, got 001 in both fold 0 and fold 1" in capsys.readouterr().err
    assert not (tmp_path / "run3" / "splits.json").exists()


def test_a_split_file_of_other_data_names_the_subjects_of_both(phantoms, tmp_path, capsys):
    """A split file of another dataset used to end in "no slices to use in 0 records"; now its subjects and the data's
    are named, before anything is written."""
    folds = [{"fold": 0, "train": ["patient021", "patient022"], "val": ["patient023"]},
             {"fold": 1, "train": ["patient023"], "val": ["patient021", "patient022"]}]
    other = tmp_path / "acdc.json"
    other.write_text(json.dumps({"folds": folds}))
    out = tmp_path / "run"
    assert train.main(["--data", str(phantoms), "--split-file", str(other), "--out", str(out), "--epochs", "1", *TINY]) == 2
    assert (f"--split-file {other}: fold 0's training subjects (patient021, patient022) are not in --data {phantoms} "
            f"(subjects there: 001, 002, 003, 004); use a split of this data") in capsys.readouterr().err
    assert not out.exists()
    other.write_text(json.dumps({"folds": [{"fold": 0, "train": ["001", "002", "003"], "val": ["patient023"]},
                                           {"fold": 1, "train": ["patient023"], "val": ["001", "002", "003"]}]}))
    records = train.load_records(train.TrainConfig(data=str(phantoms)))
    with pytest.raises(ValueError, match=r"fold 0's validation subjects \(patient023\) are not in --data"):
        train.prepare_split(train.TrainConfig(data=str(phantoms), split_file=str(other)), records, out)
    assert not out.exists()
    other.write_text(json.dumps({"folds": [{"fold": 0, "train": ["001", "002", "099"], "val": ["003", "004"]},
                                           {"fold": 1, "train": ["003", "004"], "val": ["001", "002", "099"]}]}))
    cfg = train.TrainConfig(data=str(phantoms), split_file=str(other), fold="0")
    with pytest.warns(UserWarning, match=rf"1 of fold 0's 3 training subjects are not in --data {phantoms} \(099\); "
                                         r"fold 0 uses the 2 present"):
        train.prepare_split(cfg, records, out)


def test_evaluate_fold_k_takes_a_stage_folders_fold_and_refuses_unknown_subjects(demo_run, tmp_path, capsys):
    """``--split fold:1 --stage1 <stage folder>`` evaluates with fold1's checkpoint (it took fold0's and then
    refused it, advising what had just been done); ``--subjects`` naming a subject the data lacks is an error
    (it was dropped silently), a split list partly missing a warning."""
    splits = demo_run / "splits.json"
    common = ["--data", str(demo_run / "data"), "--split-file", str(splits), "--split", "fold:1", "--no-progress"]
    assert evaluate.main(["--stage1", str(demo_run / "stage1-e2aunet"), *common, "--out", str(tmp_path / "stage")]) == 0
    assert evaluate.main(["--stage1", str(demo_run / "stage1-e2aunet/fold1"), *common, "--out", str(tmp_path / "fold1")]) == 0
    assert (tmp_path / "stage/cases.csv").read_bytes() == (tmp_path / "fold1/cases.csv").read_bytes()
    assert evaluate.main(["--stage1", str(demo_run / "stage1-e2aunet/fold0"), *common, "--out", str(tmp_path / "x")]) == 2
    assert "(trained as fold 0, given for fold 1). Give fold 1's checkpoint, or the stage folder holding fold1" in \
        capsys.readouterr().err
    val = json.loads(splits.read_text())["folds"][1]["val"]
    base = ["--stage1", str(demo_run / "stage1-e2aunet/fold1"), "--data", str(demo_run / "data"), "--no-progress",
            "--out", str(tmp_path / "subjects")]
    assert evaluate.main([*base, "--subjects", val[0], "999"]) == 2
    assert "--subjects: 999 not in the data (it has" in capsys.readouterr().err
    partial = tmp_path / "partial.json"
    data = json.loads(splits.read_text())
    data["folds"][1]["val"].append("999")
    partial.write_text(json.dumps(data))
    with pytest.warns(UserWarning, match=rf"1 of the {len(val) + 1} subjects of --split fold:1 are not in the data, "
                                         rf"evaluating the other {len(val)}: missing 999"):
        assert evaluate.main([*base, "--split-file", str(partial), "--split", "fold:1"]) == 0


def test_a_fold_folder_another_process_trains_into_is_refused(phantoms, tmp_path, capsys):
    """Two trainings of one fold at once (or a resume while the first job still runs) had both exited 0 with
    one log of both learning rates and a best.pt of one run beside the other's config: the fold folder's lock
    refuses the second, naming it, and is free again once the first ends."""
    from crocnet.atomic import exclusive

    args = ["--data", str(phantoms), "--stage", "1", "--epochs", "1", "--fold", "0", "--out", str(tmp_path / "run"), *TINY]
    fold0 = tmp_path / "run" / "stage1-e2aunet" / "fold0"
    with exclusive(fold0, "training"):  # as the other process holds it
        assert train.main(args) == 2
    assert (f"{fold0}: another process is training into this folder (it holds .crocnet.lock there); wait for it "
            f"to end, or choose another folder") in capsys.readouterr().err
    assert not (fold0 / "last.pt").exists()
    assert train.main(args) == 0


def test_evaluate_split_errors_say_what_is_wrong(demo_run, tmp_path, capsys):
    base = ["--stage1", str(demo_run / "stage1-e2aunet/fold0"), "--data", str(demo_run / "data"), "--no-progress",
            "--out", str(tmp_path / "eval")]
    splits = str(demo_run / "splits.json")
    cases = [
        (["--split-file", splits, "--split", "fold:9"], "--split fold:K must name a fold K in 0..1 of"),
        (["--split-file", splits, "--split", "fold:x"], "got 'fold:x'"),
        (["--split", "fold:1"], "--split fold:1 needs --split-file"),
        (["--split-file", splits, "--split", "every"], "--split must be test, pool, fold:K or cv, got 'every'"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "--device cuda: no CUDA device is available here"))
    for extra, message in cases:
        assert evaluate.main(base + extra) == 2, extra
        assert message in capsys.readouterr().err, extra
    no_test = tmp_path / "splits-no-test.json"
    no_test.write_text(json.dumps({**json.loads(Path(splits).read_text()), "test": []}))
    assert evaluate.main(base + ["--split-file", str(no_test)]) == 2
    assert "has no test subjects (the run held none out: no --test-fraction); use --split pool, fold:K or cv" in capsys.readouterr().err
    overlapping = tmp_path / "splits-overlap.json"
    data = json.loads(Path(splits).read_text())
    moved = data["folds"][0]["val"][0]
    data["folds"][1]["val"].append(moved)  # now in the val lists of folds 0 and 1
    data["folds"][1]["train"].remove(moved)
    overlapping.write_text(json.dumps(data))
    for extra in (["--split", "fold:0"], ["--split", "cv"]):
        assert evaluate.main(base + ["--split-file", str(overlapping), *extra]) == 2
        assert f"{overlapping}: expected each subject in the val list of at most one fold" in capsys.readouterr().err
    assert train.main(["--data", str(demo_run / "data"), "--split-file", str(tmp_path / "missing-folds.json"),
                       "--out", str(tmp_path / "run")]) == 2
    (tmp_path / "missing-folds.json").write_text("{}")
    assert train.main(["--data", str(demo_run / "data"), "--split-file", str(tmp_path / "missing-folds.json"),
                       "--out", str(tmp_path / "run")]) == 2
    assert "missing-folds.json: the split description is missing 'folds'" in capsys.readouterr().err


def test_predict_and_export_refuse_bad_outputs_and_weights_that_do_not_fit(demo_run, tmp_path, capsys):
    stage1 = demo_run / "stage1-e2aunet/fold0"
    image = next((demo_run / "data").rglob("*_LA_ED.nii.gz"))
    for output in ("seg.png", str(tmp_path)):
        assert predict.main(["--checkpoint", str(stage1), "--input", str(image), "--output", output]) == 2
        assert "--output must be a NIfTI file path ending in .nii.gz or .nii" in capsys.readouterr().err
    assert cli.main(["export", str(stage1), str(tmp_path)]) == 2
    assert "DST must be a safetensors file path ending in .safetensors, got the folder" in capsys.readouterr().err
    assert not list(tmp_path.glob(".*.tmp"))
    ckpt = ckpt_mod.read_checkpoint(stage1 / "best.pt")
    ckpt["model_kwargs"] = {**ckpt["model_kwargs"], "base_width": 2 * ckpt["model_kwargs"].get("base_width", 4)}
    torch.save(ckpt, tmp_path / "wider.pt")
    assert predict.main(["--checkpoint", str(tmp_path / "wider.pt"), "--input", str(image), "--output", str(tmp_path / "x.nii.gz")]) == 2
    err = capsys.readouterr().err
    assert "do not fit that model" in err and "shape mismatches, saved vs model" in err and len(err.splitlines()) == 1


def test_outputs_that_are_inputs_or_other_outputs_are_refused_and_nothing_is_overwritten(demo_run, tmp_path, capsys):
    stage1 = demo_run / "stage1-e2aunet/fold0"
    image = tmp_path / "image.nii.gz"
    shutil.copy(next((demo_run / "data").rglob("*_LA_ED.nii.gz")), image)
    original = image.read_bytes()
    base = ["--checkpoint", str(stage1), "--input", str(image)]
    assert predict.main(base + ["--output", str(image)]) == 2
    assert f"--output {image} is the --input file; choose another path" in capsys.readouterr().err
    seg = str(tmp_path / "seg.nii.gz")
    (tmp_path / "link").symlink_to(tmp_path, target_is_directory=True)  # another spelling of the same folder
    assert predict.main(base + ["--output", seg, "--probabilities", str(tmp_path / "link" / "seg.nii.gz")]) == 2
    assert f"--probabilities {tmp_path / 'link' / 'seg.nii.gz'} is also the --output path; choose another path" in capsys.readouterr().err
    assert predict.main(base + ["--output", seg, "--probabilities", str(image)]) == 2
    assert f"--probabilities {image} is the --input file; choose another path" in capsys.readouterr().err
    assert image.read_bytes() == original and not (tmp_path / "seg.nii.gz").exists()


def test_export_needs_a_safetensors_dst_that_is_not_the_checkpoint_src_reads(demo_run, tmp_path, capsys):
    stage1 = demo_run / "stage1-e2aunet/fold0"
    last = tmp_path / "last.pt"
    shutil.copy(stage1 / "last.pt", last)
    saved = last.read_bytes()
    assert cli.main(["export", str(last), str(last)]) == 2
    assert f"DST must be a safetensors file path ending in .safetensors, got {str(last)!r}" in capsys.readouterr().err
    assert last.read_bytes() == saved
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(stage1 / "best.safetensors", run / "best.safetensors")
    weights = (run / "best.safetensors").read_bytes()
    assert cli.main(["export", str(run / "best.safetensors"), f"{tmp_path}/run/../run/best.safetensors", "--half"]) == 2
    assert f"DST {tmp_path}/run/../run/best.safetensors is the SRC checkpoint; choose another path" in capsys.readouterr().err
    assert cli.main(["export", str(run), str(run / "best.safetensors"), "--half"]) == 2
    assert f"is the SRC checkpoint ({run / 'best.safetensors'}, in SRC {run}); choose another path" in capsys.readouterr().err
    assert (run / "best.safetensors").read_bytes() == weights


def test_predict_checks_every_output_path_before_inference(demo_run, tmp_path, capsys, monkeypatch):
    stage1 = str(demo_run / "stage1-e2aunet/fold0")
    image = str(next((demo_run / "data").rglob("*_LA_ED.nii.gz")))
    seg = tmp_path / "seg.nii.gz"
    (tmp_path / "odir").mkdir()
    (tmp_path / "a-file").write_text("x")
    monkeypatch.setattr(predict, "Segmenter", lambda *a, **k: pytest.fail("the models ran before the outputs were checked"))
    for extra, message in (
        (["--probabilities", str(tmp_path / "probs")], "--probabilities must be a NIfTI file path ending in .nii.gz or .nii, got"),
        (["--probabilities", str(tmp_path / "probs.npy")], "--probabilities must be a NIfTI file path ending in .nii.gz or .nii, got"),
        (["--overlay", str(tmp_path / "odir")], f"--overlay must be a PNG file path ending in .png, got the folder {str(tmp_path / 'odir')!r}"),
        (["--overlay", str(tmp_path / "overlay.jpg")], "--overlay must be a PNG file path ending in .png, got"),
        (["--probabilities", str(tmp_path / "a-file" / "p.nii.gz")],
         f"its folder cannot be created, {str(tmp_path / 'a-file')!r} is a file"),
    ):
        assert predict.main(["--checkpoint", stage1, "--input", image, "--output", str(seg), *extra]) == 2
        assert message in capsys.readouterr().err, extra
        assert not seg.exists() and not list(tmp_path.glob("probs*"))


def test_predict_writes_the_labels_in_the_input_files_shape(demo_run, tmp_path):
    stage1 = str(demo_run / "stage1-e2aunet/fold0")
    rng = np.random.default_rng(0)
    for shape in ((48, 40), (48, 40, 1), (48, 40, 3)):
        src = tmp_path / f"image-{len(shape)}d-{shape[-1]}.nii.gz"
        nib.save(nib.Nifti1Image(rng.random(shape).astype(np.float32), np.diag([1.2, 1.2, 8.0, 1.0])), str(src))
        out = tmp_path / f"seg-{src.name}"
        assert predict.main(["--checkpoint", stage1, "--input", str(src), "--output", str(out)]) == 0
        assert nib.load(str(out)).shape == shape


def test_evaluate_refuses_an_out_that_is_a_file_before_evaluating(demo_run, tmp_path, capsys, monkeypatch):
    report = tmp_path / "report.txt"
    report.write_text("keep")
    monkeypatch.setattr(evaluate, "score", lambda *a, **k: pytest.fail("evaluated before --out was checked"))
    monkeypatch.setattr(evaluate, "evaluate_cross_validation", lambda *a, **k: pytest.fail("evaluated before --out was checked"))
    for extra in ([], ["--split-file", str(demo_run / "splits.json"), "--split", "cv"]):
        assert evaluate.main(["--stage1", str(demo_run / "stage1-e2aunet"), "--data", str(demo_run / "data"),
                              "--no-progress", "--out", str(report), *extra]) == 2
        assert (f"--out must be a folder for the report (cases.csv, summary.json, table.md, overlays/), got the file "
                f"{str(report)!r}; choose another path") in capsys.readouterr().err
    assert report.read_text() == "keep"


def test_predict_refuses_nan_and_empty_images(demo_run, tmp_path, capsys):
    stage1 = str(demo_run / "stage1-e2aunet/fold0")
    image = np.zeros((48, 40, 1), np.float32)
    image[5, 7, 0] = np.nan
    nib.save(nib.Nifti1Image(image, np.eye(4)), str(tmp_path / "nan.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((48, 0, 1), np.float32), np.eye(4)), str(tmp_path / "empty.nii.gz"))
    for name, expected in (("nan", "expected finite intensities, got 1 NaN/inf voxels of 1920"),
                           ("empty", "empty.nii.gz: expected a 2D or 3D image, got an array of shape (0,)")):
        out = tmp_path / f"{name}-seg.nii.gz"
        assert predict.main(["--checkpoint", stage1, "--input", str(tmp_path / f"{name}.nii.gz"), "--output", str(out)]) == 2
        assert expected in capsys.readouterr().err
        assert not out.exists()


def test_unreadable_or_foreign_safetensors_are_refused_with_a_message(tmp_path, capsys):
    from safetensors.torch import save_file

    good = tmp_path / "weights.safetensors"
    save_file({"w": torch.ones(64, 64)}, str(good), metadata={"format": "pt"})  # as timm or HF write them
    with pytest.raises(ValueError, match="weights.safetensors is not a crocnet checkpoint: missing model, model_kwargs"):
        ckpt_mod.read_checkpoint(good)
    garbage, truncated = tmp_path / "garbage.safetensors", tmp_path / "truncated.safetensors"
    garbage.write_bytes(b"not a checkpoint")
    truncated.write_bytes(good.read_bytes()[:100])
    for bad in (garbage, truncated):
        with pytest.raises(ValueError, match=f"checkpoint '{bad}' could not be read"):
            ckpt_mod.read_checkpoint(bad)
    assert evaluate.main(["--stage1", str(truncated), "--data", str(tmp_path)]) == 2
    assert "truncated.safetensors' could not be read" in capsys.readouterr().err


def test_evaluate_an_ensemble_with_tta(demo_run, tmp_path, capsys, relabelled_stage2):
    fold0, fold1 = demo_run / "stage1-e2aunet/fold0", demo_run / "stage1-e2aunet/fold1"
    common = ["--data", str(demo_run / "data"), "--split-file", str(demo_run / "splits.json"), "--no-progress"]
    assert evaluate.main(["--stage1", str(fold0), str(fold1), "--tta", "--out", str(tmp_path / "ens"), *common]) == 0
    assert "stage 1 (ensemble of 2: 2 × E-2AUNet)" in capsys.readouterr().out
    summary = json.loads((tmp_path / "ens" / "summary.json").read_text())
    assert summary["tta"] is True and summary["cases"] > 0
    # the demo's stage 2 crops the native image: CroCNet crops around the ensemble's labels
    argv = ["--stage1", str(fold0), str(fold1), "--stage2", str(demo_run / "stage2-crocnet_specialists/fold0"), *common]
    assert evaluate.main([*argv, "--out", str(tmp_path / "ens-crocnet")]) == 0
    assert "CroCNet (specialists)" in capsys.readouterr().out
    argv[argv.index("--stage2") + 1] = str(relabelled_stage2("frame"))
    assert evaluate.main(argv) == 2
    assert "CroCNet with frame crops takes one stage-1 checkpoint, got 2" in capsys.readouterr().err


@pytest.mark.parametrize("view", ["LA", "SA"])
def test_predict_the_real_mnm2_subject(demo_run, mnm2_subject, tmp_path, view):
    src = mnm2_subject / f"001_{view}_ED.nii.gz"
    out = tmp_path / "seg.nii.gz"
    argv = ["--checkpoint", str(demo_run / "stage1-e2aunet/fold0/best.safetensors"),
            "--stage2", str(demo_run / "stage2-crocnet_specialists/fold0/best.pt"),
            "--input", str(src), "--output", str(out), "--overlay", str(tmp_path / "o.png"),
            "--probabilities", str(tmp_path / "p.nii.gz")]
    assert predict.main(argv) == 0
    a, b = nib.load(src), nib.load(out)
    assert b.shape == a.shape and b.get_data_dtype() == np.uint8
    np.testing.assert_allclose(b.affine, a.affine)
    assert set(np.unique(np.asarray(b.dataobj))) <= {0, 1, 2, 3}
    assert nib.load(tmp_path / "p.nii.gz").shape == (*a.shape[:2], a.shape[2] if a.ndim == 3 else 1, 4)
    assert (tmp_path / "o.png").stat().st_size > 1000


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    ckpt_mod.atomic_save({"a": 1}, path)

    def broken(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod.torch, "save", broken)
    with pytest.raises(OSError):
        ckpt_mod.atomic_save({"a": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=False) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_other_models_train_with_the_same_script_and_a_config_file(demo_run, tmp_path):
    """The single-network ablation (stage 2, from a JSON config) and the MHSA baseline (stage 1)."""
    cfg = tmp_path / "single.json"
    cfg.write_text(json.dumps({"data": str(demo_run / "data"), "stage": 2, "model": "crocnet_single", "folds": 2,
                               "test_fraction": 0.2, "fold": 0, "epochs": 1, "base_width": 4, "image_size": 32,
                               "stage1_run": str(demo_run / "stage1-e2aunet"), "progress": False}))
    assert train.main(["--config", str(cfg), "--out", str(demo_run)]) == 0
    state = torch.load(demo_run / "stage2-crocnet_single/fold0/best.pt", weights_only=False)
    assert state["model"] == "crocnet_single" and state["stage"] == 2 and state["preprocess"]["margin"] == 15
    assert train.main(["--data", str(demo_run / "data"), "--stage", "1", "--model", "e2aunet_mhsa", "--fold", "0",
                       "--epochs", "1", "--test-fraction", "0.2", "--out", str(tmp_path), *TINY]) == 0
    assert torch.load(tmp_path / "stage1-e2aunet_mhsa/fold0/last.pt", weights_only=False)["model"] == "e2aunet_mhsa"
    assert json.loads((tmp_path / "stage1-e2aunet_mhsa/fold0/config.json").read_text())["seed"] == 0
    # the hybrid baseline: attention on the coarse levels only, rebuilt from the checkpoint alone
    out = tmp_path / "hybrid"
    assert train.main(["--data", str(demo_run / "data"), "--stage", "1", "--model", "e2aunet_mhsa", "--fold", "0",
                       "--attention-levels", "2", "3", "--depth", "3", "--epochs", "1", "--test-fraction", "0.2",
                       "--out", str(out), *TINY]) == 0
    model, _ = ckpt_mod.load_model(out / "stage1-e2aunet_mhsa/fold0/best.safetensors")
    assert model.attention_levels == (2, 3) and isinstance(model.encoder[0].attn, torch.nn.Identity)
    assert isinstance(model.encoder[3].attn, MHSABlock2d)


def test_help_explains_every_flag(capsys):
    for module in (train, evaluate, compare, predict, demo):
        with pytest.raises(SystemExit):
            module.main(["-h"])
        text = capsys.readouterr().out
        assert "usage:" in text
    with pytest.raises(SystemExit):
        train.main(["-h"])
    text = capsys.readouterr().out
    for flag in ("--data", "--dataset", "--stage", "--model", "--fold", "--epochs", "--batch-size", "--image-size",
                 "--device", "--out", "--resume", "--seed", "--config"):
        assert flag in text, flag


def test_evaluate_acdc_volumes_per_case_in_pixels(demo_run, acdc_h5, tmp_path, capsys):
    argv = ["--stage1", str(demo_run / "stage1-e2aunet/fold0"), "--dataset", "acdc_h5", "--data", str(acdc_h5.parent),
            "--subjects", "patient021", "--per-case", "--no-progress", "--out", str(tmp_path)]
    assert evaluate.main(argv) == 0
    out = capsys.readouterr().out
    assert "patient021_SA_ED" in out and "patient021_SA_ES" in out and "HD95 in px" in out and "HD95 LV (px)" in out
    import csv

    rows = list(csv.DictReader((tmp_path / "cases.csv").open()))
    assert len(rows) == 2 and {r["view"] for r in rows} == {"SA"}
    assert all(0.0 <= float(r["LV_dice"]) <= 1.0 for r in rows)
    assert json.loads((tmp_path / "summary.json").read_text())["postprocess"] == "none"
    assert evaluate.main(argv[:-1] + [str(tmp_path / "pp"), "--postprocess", "both"]) == 0
    assert json.loads((tmp_path / "pp" / "summary.json").read_text())["postprocess"] == "both"


def test_half_precision_safetensors_export_loads_and_predicts_the_same(demo_run, tmp_path):
    src = demo_run / "stage1-e2aunet/fold0/best.pt"
    dst = tmp_path / "half.safetensors"
    assert cli.main(["export", str(src), str(dst), "--half"]) == 0
    full, _ = ckpt_mod.load_model(src)
    half, meta = ckpt_mod.load_model(dst)
    assert meta["model"] == "e2aunet" and meta["preprocess"]["image_size"] == 32
    assert dst.stat().st_size < (demo_run / "stage1-e2aunet/fold0/best.safetensors").stat().st_size * 0.6
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(half(x), _weights_rounded_to_half(full)(x), rtol=0, atol=0)


def _weights_rounded_to_half(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` whose floating-point tensors within float16's range are rounded to float16 (and
    held in float32): what a ``--half`` export must load as, to the bit."""
    import copy

    model = copy.deepcopy(model)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point() and t.abs().max() <= torch.finfo(torch.float16).max:
                t.copy_(t.half().float())
    return model


def test_export_of_a_missing_or_foreign_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["export", str(tmp_path / "nope.pt"), str(tmp_path / "out.safetensors")]) == 2
    assert "nope.pt" in capsys.readouterr().err
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    assert cli.main(["export", str(tmp_path / "foreign.pt"), str(tmp_path / "out.safetensors")]) == 2
    assert "not a crocnet checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "out.safetensors").exists()


def test_half_precision_export_keeps_tensors_beyond_float16_in_float32(demo_run, tmp_path, capsys):
    """A BatchNorm ``running_var`` above 65504 (real: 1.4e7 in a width-16 hybrid's decoder) would become
    ``inf`` in float16 and zero its channel; the export keeps that tensor in float32 and says so."""
    from safetensors.torch import load_file

    ckpt = ckpt_mod.read_checkpoint(demo_run / "stage1-e2aunet/fold0/best.pt")
    name = next(k for k in ckpt["state_dict"] if k.endswith("running_var"))
    ckpt["state_dict"][name] = ckpt["state_dict"][name].clone()
    ckpt["state_dict"][name][0] = 1.4e7
    src, dst = tmp_path / "big.pt", tmp_path / "big-fp16.safetensors"
    torch.save(ckpt, src)
    assert export_mod.main([str(src), str(dst), "--half"]) == 0
    assert f"kept in float32, beyond float16's range: {name}" in capsys.readouterr().out
    stored = load_file(str(dst))
    assert stored[name].dtype == torch.float32 and stored[name][0].item() == 1.4e7
    assert {v.dtype for k, v in stored.items() if k != name and v.is_floating_point()} == {torch.float16}
    assert ckpt_mod.nonfinite_tensors(stored) == []
    full, _ = ckpt_mod.load_model(src)
    half, _ = ckpt_mod.load_model(dst)
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(half(x), _weights_rounded_to_half(full)(x), rtol=0, atol=0)
    # a checkpoint that already holds inf (written before this fix) loads with a warning naming the tensor
    ckpt["state_dict"][name][0] = float("inf")
    torch.save(ckpt, src)
    with pytest.warns(UserWarning, match=f"holds NaN or inf in {name}"):
        ckpt_mod.load_model(src)


def test_a_folder_of_exported_weights_resolves_to_its_one_safetensors_file(demo_run, tmp_path):
    folder = tmp_path / "fold0"
    with pytest.raises(FileNotFoundError, match="not found"):
        ckpt_mod.read_checkpoint(folder)
    folder.mkdir()
    with pytest.raises(FileNotFoundError, match="no checkpoint .* in the folder"):
        ckpt_mod.resolve_checkpoint(folder)
    folder.rmdir()  # the export makes the folder it writes into
    assert export_mod.main([str(demo_run / "stage1-e2aunet/fold0/best.pt"), str(folder / "unet-fold0-fp16.safetensors"), "--half"]) == 0
    assert ckpt_mod.resolve_checkpoint(folder) == folder / "unet-fold0-fp16.safetensors"
    assert ckpt_mod.load_model(folder)[1]["model"] == "e2aunet"
    (folder / "other.safetensors").write_bytes((folder / "unet-fold0-fp16.safetensors").read_bytes())
    with pytest.raises(FileNotFoundError, match="it has 2 .safetensors files: name one"):
        ckpt_mod.resolve_checkpoint(folder)


def test_evaluate_a_cross_validation_out_of_fold(demo_run, constant_stage1, tmp_path, capsys):
    """``--split cv``: fold k's checkpoint scores fold k's validation subjects; the pooled rows are exactly
    the rows of the per-fold evaluations, every pool subject once."""
    stage = constant_stage1
    common = ["--data", str(demo_run / "data"), "--split-file", str(demo_run / "splits.json"), "--no-progress"]
    assert evaluate.main(["--stage1", str(stage), "--split", "cv", "--out", str(tmp_path / "cv"), *common]) == 0
    out = capsys.readouterr().out
    assert "2 folds out-of-fold" in out and "mean ± std of folds" in out
    import csv

    pooled = list(csv.DictReader((tmp_path / "cv" / "cases.csv").open()))
    splits = json.loads((demo_run / "splits.json").read_text())
    assert sorted({r["subject"] for r in pooled}) == sorted(splits["pool"])
    for k in range(2):
        assert evaluate.main(["--stage1", str(stage / f"fold{k}"), "--split", f"fold:{k}", "--out", str(tmp_path / f"f{k}"),
                              *common]) == 0
        single = list(csv.DictReader((tmp_path / f"f{k}" / "cases.csv").open()))
        mine = [r for r in pooled if r["fold"] == str(k)]
        assert [r["case"] for r in mine] == [r["case"] for r in single]
        for a, b in zip(mine, single):
            assert a["LV_dice"] == b["LV_dice"] and a["RV_hd95"] == b["RV_hd95"]
        assert {r["subject"] for r in mine} == set(splits["folds"][k]["val"])
        # fold 0's model labels everything LV, fold 1's everything MYO: each row shows which one scored it
        scored, unscored = ("LV", "MYO") if k == 0 else ("MYO", "LV")
        assert all(float(r[f"{scored}_dice"]) > 0 and float(r[f"{unscored}_dice"]) == 0 for r in mine)
    summary = json.loads((tmp_path / "cv" / "summary.json").read_text())
    assert summary["cross_validation"] is True and [f["fold"] for f in summary["folds"]] == [0, 1]
    assert summary["cases"] == len(pooled) == sum(f["cases"] for f in summary["folds"])
    # the same with the checkpoints listed one by one
    files = [str(stage / f"fold{k}" / "best.safetensors") for k in range(2)]
    assert evaluate.main(["--stage1", *files, "--split", "cv", "--out", str(tmp_path / "cv2"), *common]) == 0
    assert (tmp_path / "cv2" / "cases.csv").read_text() == (tmp_path / "cv" / "cases.csv").read_text()
    # several stage folders: each fold an ensemble of their fold-k models (here one model twice: the mean of
    # two equal probability maps is the map itself, so the rows stay exactly the same)
    assert evaluate.main(["--stage1", str(stage), str(stage), "--split", "cv", "--out", str(tmp_path / "cv3"), *common]) == 0
    assert "ensemble of 2" in capsys.readouterr().out
    assert (tmp_path / "cv3" / "cases.csv").read_text() == (tmp_path / "cv" / "cases.csv").read_text()
    folds = json.loads((tmp_path / "cv3" / "summary.json").read_text())["folds"]
    assert [f["checkpoint"] for f in folds] == [[str(stage / f"fold{k}")] * 2 for k in range(2)]
    capsys.readouterr()
    # checkpoints in the wrong order would score subjects they trained on: refused, naming them
    assert evaluate.main(["--stage1", *files[::-1], "--split", "cv", "--out", str(tmp_path / "cv4"), *common]) == 2
    err = capsys.readouterr().err
    assert f"{files[1]} (trained as fold 1, given for fold 0); {files[0]} (trained as fold 0, given for fold 1)" in err
    assert evaluate.main(["--stage1", files[1], "--split", "fold:0", "--out", str(tmp_path / "f01"), *common]) == 2
    assert "--split fold:0: each fold's validation subjects must be scored by the checkpoint of that fold" in \
        capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["FOLD0"], "--split cv needs one --stage1 checkpoint per fold (2 in the split file, fold 0 first)"),
    (["STAGE", "--stage2", "S2FOLD0"], "--split cv needs one --stage2 checkpoint per fold (2 in the split file, fold 0 first)"),
    (["STAGE", "--stage2", "S2STAGE"], "--split cv: --stage2 S2STAGE has no fold1 (the split file has 2 folds)"),
    (["STAGE", "--subjects", "x"], "--subjects works with one fold"),
    (["STAGE", "--no-split-file"], "--split cv needs --split-file"),
])
def test_cross_validation_errors(demo_run, tmp_path, capsys, extra, message):
    stage = demo_run / "stage1-e2aunet"
    argv = ["--data", str(demo_run / "data"), "--split", "cv", "--no-progress", "--out", str(tmp_path)]
    if "--no-split-file" not in extra:
        argv += ["--split-file", str(demo_run / "splits.json")]
    s2 = demo_run / "stage2-crocnet_specialists"  # the demo trains stage 2 on fold 0 only
    paths = {"FOLD0": stage / "fold0", "STAGE": stage, "S2FOLD0": s2 / "fold0", "S2STAGE": s2}
    extra = [str(paths.get(e, e)) for e in extra if e != "--no-split-file"]
    assert evaluate.main(["--stage1", *extra[:1], *argv, *extra[1:]]) == 2
    assert message.replace("S2STAGE", str(s2)) in capsys.readouterr().err


def test_evaluate_crocnet_cross_validation_matches_each_fold(demo_run, constant_stage1, stage2_folds, tmp_path,
                                                            capsys):
    """``--split cv --stage2``: fold k's stage 1 and stage 2 score fold k's validation subjects, both
    methods; the rows equal a ``--split fold:K`` evaluation of that pair. (The demo has a stage 2 for
    fold 0 only, so it stands in for fold 1's too: the pairing, not the training, is under test.)"""
    stage, s2s = constant_stage1, [stage2_folds / f"fold{k}" for k in range(2)]
    common = ["--data", str(demo_run / "data"), "--split-file", str(demo_run / "splits.json"), "--no-progress"]
    assert evaluate.main(["--stage1", str(stage), "--stage2", *map(str, s2s), "--split", "cv",
                          "--out", str(tmp_path / "cv"), *common]) == 0
    out = capsys.readouterr().out
    assert "Per fold, stage 1:" in out and "Per fold, CroCNet:" in out and "CroCNet (specialists), 2 folds out-of-fold" in out
    import csv

    pooled = list(csv.DictReader((tmp_path / "cv" / "cases.csv").open()))
    assert {r["method"] for r in pooled} == {"stage 1", "CroCNet"}
    for r in pooled:  # fold 0's stage 1 labels everything LV, fold 1's everything MYO
        if r["method"] == "stage 1":
            assert float(r["LV_dice"] if r["fold"] == "0" else r["MYO_dice"]) > 0
            assert float(r["MYO_dice"] if r["fold"] == "0" else r["LV_dice"]) == 0
    k = 1
    assert evaluate.main(["--stage1", str(stage / f"fold{k}"), "--stage2", str(s2s[k]), "--split", f"fold:{k}",
                          "--out", str(tmp_path / "f1"), *common]) == 0
    single = list(csv.DictReader((tmp_path / "f1" / "cases.csv").open()))
    mine = [{key: v for key, v in r.items() if key != "fold"} for r in pooled if r["fold"] == str(k)]
    assert mine == single and len(single) > 0
    summary = json.loads((tmp_path / "cv" / "summary.json").read_text())
    assert [f["stage2"] for f in summary["folds"]] == [str(s2s[0]), str(s2s[1])]
    assert set(summary["folds"][0]["summary"]) == {"stage 1", "CroCNet"}
    capsys.readouterr()


def test_several_stage2_checkpoints_evaluate_as_one_stage2_ensemble(demo_run, stage2_folds, tmp_path, capsys):
    """Several ``--stage2``: one stage 2 averaging their probabilities, on one split or (several stage
    folders) per fold of a cross-validation. The same checkpoint twice averages to itself: the rows of the
    single model, under the ensemble's name."""
    import csv

    s2 = demo_run / "stage2-crocnet_specialists" / "fold0"
    common = ["--data", str(demo_run / "data"), "--split-file", str(demo_run / "splits.json"), "--no-progress"]
    one = ["--stage1", str(demo_run / "stage1-e2aunet" / "fold0"), "--split", "fold:0", *common]
    assert evaluate.main([*one, "--stage2", str(s2), "--out", str(tmp_path / "single")]) == 0
    assert evaluate.main([*one, "--stage2", str(s2), str(s2), "--out", str(tmp_path / "pair")]) == 0
    assert "| CroCNet (stage 2: ensemble of 2: 2 × specialists) |" in capsys.readouterr().out
    rows = {name: list(csv.DictReader((tmp_path / name / "cases.csv").open())) for name in ("single", "pair")}
    assert rows["pair"] == rows["single"] and {r["method"] for r in rows["pair"]} == {"stage 1", "CroCNet"}

    stage2 = stage2_folds  # a stage folder whose two folds are the demo's fold-0 stage 2
    cv = ["--stage1", str(demo_run / "stage1-e2aunet"), "--split", "cv", *common]
    assert evaluate.main([*cv, "--stage2", str(stage2), "--out", str(tmp_path / "cv1")]) == 0
    assert evaluate.main([*cv, "--stage2", str(stage2), str(stage2), "--out", str(tmp_path / "cv2")]) == 0
    assert (tmp_path / "cv2" / "cases.csv").read_text() == (tmp_path / "cv1" / "cases.csv").read_text()
    folds = json.loads((tmp_path / "cv2" / "summary.json").read_text())["folds"]
    assert [f["stage2"] for f in folds] == [[str(stage2 / f"fold{k}")] * 2 for k in range(2)]
    capsys.readouterr()


def test_stage2_on_native_or_frame_crops(demo_run, tmp_path, capsys):
    """Stage 2 crops the native image by default (the paper's crop of the original image): stage 1 writes its
    out-of-fold labels on the native grid too; ``--crop-from frame`` crops stage 1's network frame instead.
    The checkpoint says which, evaluation crops the same way, and a stage-1 run without native predictions
    is a clear error."""
    stage = demo_run / "stage1-e2aunet"
    frame = torch.load(stage / "fold0/oof.pt", weights_only=False)
    native = torch.load(stage / "fold0/oof_native.pt", weights_only=False)
    assert native.keys() == frame.keys()
    key = next(iter(native))
    assert frame[key].shape == (32, 32) and native[key].shape[0] > 32 and native[key].dtype == torch.uint8

    argv = ["--data", str(demo_run / "data"), "--stage", "2", "--stage1-run", str(stage), "--crop-from", "frame",
            "--fold", "0", "--epochs", "1", "--test-fraction", "0.2", "--out", str(tmp_path), *TINY]
    assert train.main(argv) == 0
    assert "validation crops from the frame images" in capsys.readouterr().out
    run = tmp_path / "stage2-crocnet_specialists/fold0"
    assert torch.load(run / "best.pt", weights_only=False)["preprocess"]["crop_from"] == "frame"
    assert json.loads((run / "config.json").read_text())["crop_from"] == "frame"
    assert Segmenter(stage / "fold0", run).crop_from == "frame"
    default = demo_run / "stage2-crocnet_specialists/fold0"  # the demo trains stage 2 with the defaults
    assert torch.load(default / "best.pt", weights_only=False)["preprocess"]["crop_from"] == "native"
    assert json.loads((default / "config.json").read_text())["crop_from"] == "native"
    assert Segmenter(stage / "fold0", default).crop_from == "native"
    assert evaluate.main(["--stage1", str(stage / "fold0"), "--stage2", str(run), "--data", str(demo_run / "data"),
                          "--split-file", str(demo_run / "splits.json"), "--split", "fold:0", "--no-progress",
                          "--out", str(tmp_path / "eval")]) == 0
    assert "CroCNet (specialists)" in capsys.readouterr().out

    old = tmp_path / "old-stage1"
    for k in range(2):
        (old / f"fold{k}").mkdir(parents=True)
        shutil.copy(stage / f"fold{k}/oof.pt", old / f"fold{k}/oof.pt")
    argv[argv.index(str(stage))] = str(old)
    i = argv.index("--crop-from")
    del argv[i : i + 2]  # the default, native crops
    assert train.main([*argv[:-len(TINY) - 2], "--out", str(tmp_path / "again"), *TINY]) == 2
    err = capsys.readouterr().err
    assert "no out-of-fold predictions (fold*/oof_native.pt)" in err and "--crop-from frame" in err
    assert train.main(["--data", str(demo_run / "data"), "--crop-from", "native", *TINY]) == 2
    assert "--crop-from applies to stage 2" in capsys.readouterr().err


def test_volumes_without_labels_are_skipped_by_name_not_scored_against_zeros(tmp_path, capsys):
    import h5py

    rng = np.random.default_rng(0)
    for p in range(21, 25):
        for frame in (1, 10):
            label = np.zeros((2, 32, 32), np.uint8)
            label[:, 10:20, 10:20] = 1 + (p + frame) % 3
            with h5py.File(tmp_path / f"patient{p:03d}_frame{frame:02d}.h5", "w") as f:
                f["image"] = rng.random((2, 32, 32), dtype=np.float32)
                if (p, frame) != (23, 10):
                    f["label"] = label
    out = tmp_path / "run"
    args = ["--data", str(tmp_path), "--dataset", "acdc_h5", "--stage", "1", "--epochs", "1", "--fold", "all", *TINY, "--out", str(out)]
    assert train.main(args) == 0
    printed = capsys.readouterr().out
    assert "skipping 1 image(s) without a label map (neither trained nor validated on): " in printed
    assert "patient023_frame10.h5" in printed
    # the two folds together validate on the 7 labelled volumes only
    counts = [int(line.split(", ")[1].split(" validation images")[0]) for line in printed.splitlines() if line.startswith("stage 1 fold")]
    assert sum(counts) == 7


@pytest.mark.parametrize("outside, fill", [(None, 0.0), ("none", 0.0), ("background", (0.0, 0.0, 0.0, 1.0))])
def test_outside_label_sets_the_augmentation_fill_of_the_stage1_targets(phantoms, tmp_path, monkeypatch, outside, fill):
    import crocnet.train.engine as engine

    seen = []

    class Recording(engine.Augment):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            seen.append(self.label_fill)

    monkeypatch.setattr(engine, "Augment", Recording)
    extra = [] if outside is None else ["--outside-label", outside]
    args = ["--data", str(phantoms), "--stage", "1", "--fold", "0", "--epochs", "1", "--max-train-batches", "1", *TINY, *extra]
    assert train.main([*args, "--out", str(tmp_path)]) == 0
    assert seen == [fill]
    config = json.loads((tmp_path / "stage1-e2aunet" / "fold0" / "config.json").read_text())
    assert config["outside_label"] == (outside or "none")


def test_target_spacing_on_images_without_a_voxel_size_is_refused():
    """h5 volumes store no spacing: a --target-spacing there would be ignored while the checkpoint records it
    (and prediction on NIfTI would resample to it), so it is an error naming the record."""
    from crocnet.data import Record
    from crocnet.train.samples import build_slices

    image = np.random.default_rng(0).random((40, 36, 2)).astype(np.float32)
    record = Record(image=image, label=None, spacing=None, affine=None, subject="patient021", phase="ED", view="SA",
                    dataset="acdc_h5")
    assert len(build_slices([record], 32, None)) == 2  # fits the field of view
    with pytest.raises(ValueError, match="--target-spacing 1.5 mm needs each image's voxel size.*acdc_h5 record"):
        build_slices([record], 32, 1.5)
