"""The synthetic phantom: exact M&Ms-2 layout, determinism, geometry, timing, CLI."""

from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import pytest

from crocnet.cli import main as cli
from crocnet.data import load_mnm2, make_subject, write_nifti, write_overview_png, write_phantoms
from crocnet.data.phantom import VENDORS


def test_layout_matches_mnm2(phantom_root):
    with (phantom_root / "dataset_information.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["SUBJECT_CODE", "DISEASE", "VENDOR", "SCANNER", "FIELD"]
    assert [r["SUBJECT_CODE"] for r in rows] == ["1", "2", "3"]
    for code in ("001", "002", "003"):
        names = sorted(p.name for p in (phantom_root / "dataset" / code).iterdir())
        expected = [f"{code}_{v}_{p}{g}.nii.gz" for v in ("LA", "SA") for p in ("ED", "ES") for g in ("", "_gt")]
        assert names == sorted(expected)
    image = nib.load(phantom_root / "dataset" / "001" / "001_LA_ED.nii.gz")
    label = nib.load(phantom_root / "dataset" / "001" / "001_LA_ED_gt.nii.gz")
    assert image.get_data_dtype() == np.float64 and label.get_data_dtype() == np.float64  # as M&Ms-2 stores them
    h, w, one = image.shape
    assert one == 1 and 192 <= h <= 320 and 192 <= w <= 320
    spacing = image.header.get_zooms()[:2]
    assert 0.8 <= spacing[0] <= 1.8 and spacing[0] == pytest.approx(spacing[1])
    np.testing.assert_allclose(np.linalg.norm(image.affine[:3, :3], axis=0), image.header.get_zooms(), rtol=1e-5)
    np.testing.assert_array_equal(image.affine, label.affine)
    data = np.asanyarray(image.dataobj)
    assert data.min() >= 0 and np.all(data == np.round(data))  # integer-valued intensities, like the archive


def test_same_seed_same_files_and_subjects_independent_of_count(tmp_path):
    write_phantoms(tmp_path / "a", subjects=2, seed=3)
    write_phantoms(tmp_path / "b", subjects=2, seed=3)
    write_phantoms(tmp_path / "c", subjects=1, seed=4)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.*") if p.name != ".crocnet.lock")
    assert len(files) == 9 and (tmp_path / "a" / ".crocnet.lock").is_file()  # the lock of the run that wrote them
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    one = make_subject(3, 2)  # subject 2 alone equals subject 2 of the set
    np.testing.assert_array_equal(one.images["LA", "ED"][0][..., 0],
                                  load_mnm2(tmp_path / "a", subjects=["002"])[0].image[..., 0])
    assert not np.array_equal(make_subject(4, 1).images["LA", "ED"][0], make_subject(3, 1).images["LA", "ED"][0])


def test_anatomy_contrast_and_contraction():
    for number in range(1, 7):
        subject = make_subject(11, number)
        (ed, ed_label, _), (es, es_label, _) = subject.images["LA", "ED"], subject.images["LA", "ES"]
        areas_ed = np.bincount(ed_label.ravel(), minlength=4)
        areas_es = np.bincount(es_label.ravel(), minlength=4)
        assert np.all(areas_ed[1:] > 0) and np.all(areas_es[1:] > 0)
        assert areas_es[1] < 0.85 * areas_ed[1]  # the LV cavity contracts
        assert areas_es[3] < areas_ed[3]  # and the RV
        blood, myo = np.median(ed[ed_label == 1]), np.median(ed[ed_label == 2])
        assert blood > 1.5 * myo  # bright blood, dark myocardium (bSSFP)
        # the septum: RV blood touches myocardium, never the LV cavity directly
        lv, rv = ed_label[..., 0] == 1, ed_label[..., 0] == 3
        grown = np.zeros_like(rv)
        grown[1:-1, 1:-1] = rv[1:-1, 1:-1] | rv[:-2, 1:-1] | rv[2:, 1:-1] | rv[1:-1, :-2] | rv[1:-1, 2:]
        assert not (grown & lv).any()


def test_vendors_and_diseases_vary():
    subjects = [make_subject(0, n) for n in range(1, 25)]
    assert {s.vendor for s in subjects} == {v.name for v in VENDORS}
    assert len({s.disease for s in subjects}) >= 3
    assert len({s.images["LA", "ED"][0].shape for s in subjects}) > 3


def test_short_axis_stack():
    subject = make_subject(5, 1, views=("LA", "SA"))
    image, label, affine = subject.images["SA", "ED"]
    assert image.ndim == 3 and 6 <= image.shape[2] <= 16
    assert np.linalg.norm(affine[:3, 2]) == pytest.approx(10.0)
    labelled = [k for k in range(image.shape[2]) if label[..., k].any()]
    assert len(labelled) >= 4 and (label[..., labelled[len(labelled) // 2]] == 2).any()


def test_cli_writes_dataset_and_png(tmp_path, capsys):
    assert cli(["phantom", "--out", str(tmp_path / "ph"), "--subjects", "2", "--seed", "1", "--png",
                str(tmp_path / "overview.png")]) == 0
    out = capsys.readouterr().out
    assert "wrote 2 subjects" in out and f"wrote {tmp_path / 'overview.png'}\n" in out
    assert (tmp_path / "ph" / "dataset" / "002" / "002_LA_ES_gt.nii.gz").is_file()
    assert (tmp_path / "overview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit):
        cli(["phantom", "-h"])
    assert "--subjects" in capsys.readouterr().out


def _information(root):
    with (root / "dataset_information.csv").open(newline="") as f:
        return {row["SUBJECT_CODE"]: row for row in csv.DictReader(f)}


def test_writing_more_subjects_keeps_the_rows_of_the_subjects_already_there(tmp_path, capsys):
    root = tmp_path / "ph"
    assert cli(["phantom", "--out", str(root), "--subjects", "3"]) == 0
    first = _information(root)
    assert cli(["phantom", "--out", str(root), "--subjects", "1", "--start", "4"]) == 0
    merged = _information(root)
    assert list(merged) == ["1", "2", "3", "4"]
    assert {k: merged[k] for k in ("1", "2", "3")} == first  # 001-003 keep vendor and disease
    assert merged["4"]["VENDOR"] == make_subject(0, 4).vendor
    assert len(load_mnm2(root)) == 8 and all(r.vendor for r in load_mnm2(root))
    assert cli(["phantom", "--out", str(root), "--subjects", "2", "--start", "3"]) == 0  # same seed: same rows
    assert _information(root) == merged
    assert not list(root.glob(".*.tmp"))  # the temporary file of the atomic write is gone


def test_existing_rows_keep_their_extra_columns_and_spelling(tmp_path):
    root = tmp_path / "ph"
    root.mkdir()
    (root / "dataset_information.csv").write_text("SUBJECT_CODE,DISEASE,VENDOR,SCANNER,FIELD,NOTE\n007,NOR,X,Y,1.5,keep me\n")
    write_phantoms(root, subjects=1, seed=0)
    rows = _information(root)
    assert rows["007"] == {"SUBJECT_CODE": "007", "DISEASE": "NOR", "VENDOR": "X", "SCANNER": "Y", "FIELD": "1.5", "NOTE": "keep me"}
    assert rows["1"]["NOTE"] == "" and rows["1"]["VENDOR"] == make_subject(0, 1).vendor


def test_subjects_listed_with_other_values_are_refused_and_nothing_is_written(tmp_path, capsys):
    root = tmp_path / "ph"
    assert cli(["phantom", "--out", str(root), "--subjects", "3"]) == 0
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert cli(["phantom", "--out", str(root), "--subjects", "2", "--start", "2", "--seed", "5"]) == 2
    err = capsys.readouterr().err
    old, new = make_subject(0, 3), make_subject(5, 3)  # subject 002 happens to get the same row with seed 5
    assert err.startswith(f"crocnet phantom: error: {root / 'dataset_information.csv'} already lists 1 of the subjects")
    assert (f"other values than seed 5 gives (003): expected subject 003 as DISEASE={new.disease}, VENDOR={new.vendor}, "
            f"SCANNER={new.scanner}, FIELD={new.field}, got DISEASE={old.disease}, VENDOR={old.vendor}, "
            f"SCANNER={old.scanner}, FIELD={old.field}") in err
    assert "nothing was written" in err and "Traceback" not in err
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before


def test_an_unreadable_dataset_information_csv_is_refused_before_writing(tmp_path, capsys):
    root = tmp_path / "ph"
    root.mkdir()
    (root / "dataset_information.csv").write_text("SUBJECT,VENDOR\n1,A\n")
    assert cli(["phantom", "--out", str(root), "--subjects", "1"]) == 2
    assert "expected columns SUBJECT_CODE, DISEASE, VENDOR, SCANNER, FIELD, missing SUBJECT_CODE" in capsys.readouterr().err
    assert not (root / "dataset").exists()
    assert (root / "dataset_information.csv").read_text() == "SUBJECT,VENDOR\n1,A\n"


@pytest.mark.parametrize("argv, message", [
    (["--seed", "-1"], "--seed must be a non-negative integer, got -1"),
    (["--start", "0"], "subject numbers --start .. --start + --subjects - 1 must lie in 1..999, got 0..0"),
    (["--start", "999", "--subjects", "2"], "must lie in 1..999, got 999..1000"),
    (["--png", "{tmp}/o.png", "--real", "{tmp}/missing"], "missing: M&Ms-2 folder not found"),
])
def test_cli_errors_are_one_line_on_stderr(tmp_path, capsys, argv, message):
    argv = [a.format(tmp=tmp_path) for a in argv]
    assert cli(["phantom", "--out", str(tmp_path / "ph"), "--subjects", "1", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("crocnet phantom: error: ") and message in captured.err
    assert "Traceback" not in captured.err


def test_a_png_path_that_is_no_png_file_is_refused_before_anything_is_written(tmp_path, capsys):
    (tmp_path / "shots").mkdir()
    for png, message in [("shots", f"--png must be a PNG file path ending in .png, got the folder {str(tmp_path / 'shots')!r}"),
                         ("x.nii.gz", f"--png must be a PNG file path ending in .png, got {str(tmp_path / 'x.nii.gz')!r}")]:
        assert cli(["phantom", "--out", str(tmp_path / "ph"), "--subjects", "1", "--png", str(tmp_path / png)]) == 2
        assert message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shots"]
    with pytest.raises(ValueError, match="the overview path must end in .png, got '.*shots'"):
        write_overview_png(tmp_path / "shots", tmp_path / "ph")


def test_an_output_path_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "afile").write_text("precious")
    assert cli(["phantom", "--out", str(tmp_path / "afile"), "--subjects", "1"]) == 2
    assert f"the output folder {tmp_path / 'afile'} is a file; expected a folder" in capsys.readouterr().err
    assert cli(["phantom", "--out", str(tmp_path / "afile" / "sub"), "--subjects", "1"]) == 2
    assert f"cannot be created: {tmp_path / 'afile'} is a file" in capsys.readouterr().err
    assert (tmp_path / "afile").read_text() == "precious"


def test_write_phantoms_checks_its_arguments(tmp_path):
    with pytest.raises(ValueError, match=r"seed must be a non-negative integer, got -1"):
        write_phantoms(tmp_path, subjects=1, seed=-1)
    with pytest.raises(ValueError, match=r"seed must be a non-negative integer, got -2"):
        make_subject(-2, 1)
    with pytest.raises(ValueError, match=r"the number of subjects must be at least 1, got 0"):
        write_phantoms(tmp_path, subjects=0)
    with pytest.raises(ValueError, match=r"must lie in 1..999, got 0..1"):
        write_phantoms(tmp_path, subjects=2, start=0)
    assert not list(tmp_path.iterdir())


def test_files_made_with_another_seed_are_refused_even_when_the_rows_agree(tmp_path, capsys):
    root = tmp_path / "ph"
    assert cli(["phantom", "--out", str(root), "--subjects", "2"]) == 0
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert _information(root)["2"]["VENDOR"] == make_subject(5, 2).vendor  # seed 5 gives subject 002 the same row
    assert cli(["phantom", "--out", str(root), "--subjects", "1", "--start", "2", "--seed", "5"]) == 2
    err = capsys.readouterr().err
    assert f"crocnet phantom: error: 4 file(s) under {root / 'dataset'} hold other images than seed 5 gives, e.g. " in err
    assert f"{root / 'dataset' / '002' / '002_LA_ED.nii.gz'}: shape (" in err
    assert "nothing was written" in err and "Traceback" not in err
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before


def test_a_run_killed_half_way_is_finished_by_the_same_command(tmp_path, capsys):
    root = tmp_path / "ph"
    write_phantoms(root, subjects=2, seed=1)
    whole = {p: p.read_bytes() for p in root.rglob("*.nii.gz")}
    missing = root / "dataset" / "002" / "002_LA_ES_gt.nii.gz"
    missing.unlink()
    kept = root / "dataset" / "001" / "001_LA_ED.nii.gz"
    stamp = kept.stat().st_mtime_ns
    write_phantoms(root, subjects=2, seed=1)
    assert {p: p.read_bytes() for p in root.rglob("*.nii.gz")} == whole
    assert kept.stat().st_mtime_ns == stamp  # a file already there is not rewritten
    edited = root / "dataset" / "001" / "001_LA_ES.nii.gz"
    image = nib.load(edited)
    voxels = np.asarray(image.dataobj).copy()
    voxels[0, 0, 0] += 1
    write_nifti(edited, voxels, image.affine)
    with pytest.raises(ValueError, match="1 file.s. under .* hold other images than seed 1 gives, e.g. .*001_LA_ES.nii.gz: other voxels"):
        write_phantoms(root, subjects=2, seed=1)
    edited.write_bytes(whole[edited])
    torn = root / "dataset" / "002" / "002_LA_ED.nii.gz"
    torn.write_bytes(whole[torn][:200])
    assert cli(["phantom", "--out", str(root), "--subjects", "2", "--seed", "1"]) == 2
    assert f"{torn}: unreadable (" in capsys.readouterr().err
    assert torn.read_bytes() == whole[torn][:200]


def test_a_set_whose_writing_was_killed_is_refused_until_finished(tmp_path, monkeypatch):
    """Killed after its first subjects (the CSV, written last, missing), a set was trained on as it was: now
    ``.phantom-incomplete`` marks it until the same command finishes it; and two runs into one folder at once
    (each merging the CSV, one losing the other's rows) are refused."""
    import crocnet.data.phantom as phantom
    from crocnet.atomic import exclusive
    from crocnet.data import DataError

    root = tmp_path / "ph"
    calls = []

    def killed_at_the_fifth(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 5:
            raise KeyboardInterrupt
        return write_nifti(*args, **kwargs)

    monkeypatch.setattr(phantom, "write_nifti", killed_at_the_fifth)
    with pytest.raises(KeyboardInterrupt):
        write_phantoms(root, subjects=3, seed=2)
    monkeypatch.undo()
    assert (root / "dataset" / "001").is_dir() and not (root / "dataset_information.csv").exists()
    for where in (root, root / "dataset", root / "dataset" / "001"):
        with pytest.raises(DataError, match=r"a `crocnet phantom` into this folder was interrupted \(.phantom-incomplete "
                                            r"is there\): run the same command again"):
            load_mnm2(where)
    write_phantoms(root, subjects=3, seed=2)
    assert not (root / ".phantom-incomplete").exists() and len(load_mnm2(root)) == 6
    with exclusive(root, "testing"):
        with pytest.raises(RuntimeError, match="another process is writing phantoms into this folder"):
            write_phantoms(root, subjects=1, seed=2, start=4)
        assert cli(["phantom", "--out", str(root), "--subjects", "1", "--seed", "2", "--start", "4"]) == 2  # one line
