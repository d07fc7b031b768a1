"""Checkpoint descriptions and resume states that cannot be used are refused with a message naming the file
and the field (``.pt`` and ``.safetensors`` alike), not a ``KeyError`` or ``TypeError`` deep in inference."""

from __future__ import annotations

import copy

import nibabel as nib
import numpy as np
import pytest
import torch

from crocnet.train import predict
from crocnet.train.checkpoint import atomic_save, build_model, export_safetensors, load_model, read_checkpoint, read_resume_state
from crocnet.train.inference import Segmenter


@pytest.fixture(scope="module")
def tiny_checkpoint() -> dict:
    """A stage-1 checkpoint of a tiny E-2AUNet (milliseconds to build and run)."""
    kwargs = {"base_width": 4, "depth": 1}
    model = build_model("e2aunet", kwargs)
    return {"model": "e2aunet", "model_kwargs": kwargs, "preprocess": {"image_size": 32, "target_spacing": None},
            "stage": 1, "fold": 0, "epoch": 1, "state_dict": model.state_dict()}


def _pop(key):
    return lambda c: c.pop(key)


def _set(key, value):
    return lambda c: c.__setitem__(key, value)


def _set_pre(key, value):
    return lambda c: c["preprocess"].__setitem__(key, value)


# (change to the description, message); the message follows the file name
BAD_DESCRIPTIONS = {
    "no-preprocess": (_pop("preprocess"), "expected a model description with 'preprocess', got keys "),
    "no-image-size": (lambda c: c["preprocess"].pop("image_size"), "expected 'preprocess' with 'image_size', got keys target_spacing"),
    "no-target-spacing": (lambda c: c["preprocess"].pop("target_spacing"), "expected 'preprocess' with 'target_spacing'"),
    "image-size-0": (_set_pre("image_size", 0), "expected 'preprocess' 'image_size' to be a positive integer, got 0"),
    "image-size-str": (_set_pre("image_size", "32"), "expected 'preprocess' 'image_size' to be a positive integer, got '32'"),
    "target-spacing-negative": (_set_pre("target_spacing", -1.0), "'target_spacing' to be null or a positive number of mm (or a pair), got -1.0"),
    "preprocess-not-dict": (_set("preprocess", [32]), "expected 'preprocess' to be a dict (image_size, ...), got [32]"),
    "unknown-model": (_set("model", "nosuch"), "expected a known model in 'model' (e.g. crocnet_single, crocnet_specialists, e2aunet"),
    "extra-kwarg": (lambda c: c["model_kwargs"].__setitem__("foo", 1), "the 'model_kwargs' {'base_width': 4, 'depth': 1, 'foo': 1} are not arguments of e2aunet"),
    "kwargs-none": (_set("model_kwargs", None), "expected a dict of keyword arguments in 'model_kwargs', got None"),
    "stage-3": (_set("stage", 3), "expected 'stage' 1 or 2, got 3"),
}


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
@pytest.mark.parametrize("case", list(BAD_DESCRIPTIONS))
def test_bad_descriptions_are_refused_naming_the_file_and_the_field(tiny_checkpoint, tmp_path, case, suffix):
    change, message = BAD_DESCRIPTIONS[case]
    ckpt = copy.deepcopy(tiny_checkpoint)
    change(ckpt)
    path = tmp_path / f"{case}{suffix}"
    if suffix == ".pt":
        atomic_save(ckpt, path)
    else:
        export_safetensors(ckpt, path)  # the description travels as safetensors metadata
    with pytest.raises(ValueError) as info:
        Segmenter(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)
    with pytest.raises(ValueError, match="^" + str(path)):
        load_model(path)


def test_stage2_crop_description_is_checked(tiny_checkpoint, tmp_path):
    ckpt = copy.deepcopy(tiny_checkpoint)
    ckpt["stage"], ckpt["preprocess"] = 2, {"image_size": 32, "crop_from": "atlas", "margin": 15}
    atomic_save(ckpt, tmp_path / "s2.pt")
    with pytest.raises(ValueError, match="s2.pt: expected 'preprocess' 'crop_from' to be 'frame' or 'native', got 'atlas'"):
        read_checkpoint(tmp_path / "s2.pt")
    ckpt["preprocess"] = {"image_size": 32, "margin": -3}
    atomic_save(ckpt, tmp_path / "s2.pt")
    with pytest.raises(ValueError, match="s2.pt: expected 'preprocess' 'margin' to be an integer >= 0, got -3"):
        read_checkpoint(tmp_path / "s2.pt")
    ckpt["preprocess"] = {"image_size": 32}  # no target_spacing, crop_from or margin: a valid stage-2 description
    atomic_save(ckpt, tmp_path / "s2.pt")
    assert read_checkpoint(tmp_path / "s2.pt")["stage"] == 2


def test_a_good_description_still_loads_from_both_formats(tiny_checkpoint, tmp_path):
    atomic_save(tiny_checkpoint, tmp_path / "ok.pt")
    export_safetensors(tiny_checkpoint, tmp_path / "ok.safetensors")
    for path in (tmp_path / "ok.pt", tmp_path / "ok.safetensors"):
        _, ckpt = load_model(path)
        assert ckpt["preprocess"] == {"image_size": 32, "target_spacing": None}


def test_predict_turns_a_bad_description_into_a_one_line_error(tiny_checkpoint, tmp_path, capsys):
    ckpt = copy.deepcopy(tiny_checkpoint)
    ckpt["preprocess"].pop("image_size")
    atomic_save(ckpt, tmp_path / "ckpt.pt")
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((20, 24, 1), dtype=np.float32), np.eye(4)),
             str(tmp_path / "img.nii.gz"))
    out = tmp_path / "seg.nii.gz"
    assert predict.main(["--checkpoint", str(tmp_path / "ckpt.pt"), "--input", str(tmp_path / "img.nii.gz"), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "ckpt.pt: expected 'preprocess' with 'image_size', got keys target_spacing" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_a_torn_or_foreign_last_pt_is_refused_saying_what_to_do(tiny_checkpoint, tmp_path):
    good = {**tiny_checkpoint, "optimizer": {}, "scheduler": {}, "history": [], "best": 0.5}
    atomic_save(good, tmp_path / "last.pt")
    assert read_resume_state(tmp_path / "last.pt")["epoch"] == 1
    data = (tmp_path / "last.pt").read_bytes()
    fix = "Delete or rename {} to start this run from epoch 1, or train into another --out"
    cases = {
        "truncated": (data[: len(data) // 2], "could not be read ("),
        "empty": (b"", "could not be read (EOFError"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name / "last.pt"
        path.parent.mkdir()
        path.write_bytes(content)
        with pytest.raises(ValueError) as info:
            read_resume_state(path)
        assert str(info.value).startswith(f"--resume: {path} {message}"), name
        assert fix.format(path) in str(info.value), name
    best = tmp_path / "best" / "last.pt"
    best.parent.mkdir()
    atomic_save(tiny_checkpoint, best)  # best.pt copied over last.pt: no optimizer, scheduler, history, best
    with pytest.raises(ValueError) as info:
        read_resume_state(best)
    assert (f"--resume: {best} is not a training checkpoint: expected state_dict, optimizer, scheduler, history, best, "
            f"epoch, missing optimizer, scheduler, history, best (a copy of best.pt?") in str(info.value)
    assert fix.format(best) in str(info.value)
    torch.save([1, 2], best)
    with pytest.raises(ValueError, match="is not a training checkpoint: expected a dict with state_dict, .*, got list"):
        read_resume_state(best)
