"""Readers: real M&Ms-2 and ACDC files, phantom output, nnU-Net and ACDC folders written here, and every error."""

from __future__ import annotations

import gzip
import json
import re
import shutil
import struct

import h5py
import nibabel as nib
import numpy as np
import pytest

from crocnet.data import (
    ACDC_TO_PROJECT,
    DataError,
    MissingFileError,
    Record,
    list_subjects,
    load_acdc,
    load_acdc_h5,
    load_dataset,
    load_mnm2,
    load_nnunet_raw,
    read_nifti,
    select,
    slices,
    write_nifti,
)
from crocnet.data.acdc import read_info_cfg
from crocnet.data.mnm2 import read_dataset_information
from crocnet.data.validation import check_image

AFFINE = np.array([[0.0, 1.5, 0.0, -10.0], [-1.5, 0.0, 0.0, 20.0], [0.0, 0.0, 8.0, 5.0], [0, 0, 0, 1]])


def _case(shape=(12, 10, 1), seed=0):
    rng = np.random.default_rng(seed)
    image = rng.uniform(0, 1000, shape).round()
    label = np.zeros(shape, np.uint8)
    label[3:7, 2:5] = 1
    label[3:7, 5:6] = 2
    label[8:10, 2:6] = 3
    return image, label


def _write_subject(root, code="001", views=("LA",), label_dtype=np.float64):
    folder = root / "dataset" / code
    for view in views:
        for phase in ("ED", "ES"):
            image, label = _case((12, 10, 1) if view == "LA" else (12, 10, 3))
            write_nifti(folder / f"{code}_{view}_{phase}.nii.gz", image, AFFINE)
            write_nifti(folder / f"{code}_{view}_{phase}_gt.nii.gz", label.astype(label_dtype), AFFINE)
    return folder


# ------------------------------------------------------------------------------------------- real data
def test_mnm2_subject_001_keeps_geometry(mnm2_subject):
    records = load_mnm2(mnm2_subject, views=("LA", "SA"))
    assert [r.name for r in records] == ["001_LA_ED", "001_LA_ES", "001_SA_ED", "001_SA_ES"]
    la = records[0]
    reference = nib.load(mnm2_subject / "001_LA_ED.nii.gz")
    assert la.image.shape == la.label.shape == (256, 256, 1)
    assert la.image.dtype == np.float32 and la.label.dtype == np.uint8
    assert la.in_plane_spacing == pytest.approx((1.719, 1.719), abs=1e-3)
    np.testing.assert_array_equal(la.affine, reference.affine)
    assert abs(la.affine[0, 1]) > 0.5  # the rotated (oblique) affine is kept, not reset to an axis-aligned one
    assert set(np.unique(la.label)) == {0, 1, 2, 3}
    assert la.view == "LA" and la.phase == "ED" and la.subject == "001" and la.dataset == "mnm2"
    assert la.source == mnm2_subject / "001_LA_ED.nii.gz"
    sa = records[2]
    assert sa.image.shape == (256, 256, 12) and sa.spacing[2] == pytest.approx(10.0, abs=1e-3)
    pairs = list(slices(sa, labelled_only=True))
    assert 0 < len(pairs) <= 12 and pairs[0][0].shape == (256, 256)


def test_prediction_written_with_record_geometry(mnm2_subject, tmp_path):
    record = load_mnm2(mnm2_subject, phases=("ED",))[0]
    path = write_nifti(tmp_path / "pred.nii.gz", record.label, record.affine, record.header)
    back = nib.load(path)
    np.testing.assert_array_equal(back.affine, record.affine)
    assert back.header["sform_code"] == record.header["sform_code"] and back.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), record.label)


def test_acdc_h5_remaps_labels_and_has_no_spacing(acdc_h5):
    records = load_acdc_h5(acdc_h5, subjects=["patient021"])
    assert [r.phase for r in records] == ["ED", "ES"]
    record = records[0]
    with h5py.File(record.source, "r") as f:
        raw_image, raw_label = f["image"][()], f["label"][()]
    assert record.image.shape == raw_image.shape[::-1]  # (Z, H, W) from SimpleITK -> nibabel's (i, j, k)
    np.testing.assert_array_equal(record.image, raw_image.transpose(2, 1, 0))
    assert record.spacing is None and record.affine is None and record.in_plane_spacing is None
    raw_counts, counts = np.bincount(raw_label.ravel(), minlength=4), np.bincount(record.label.ravel(), minlength=4)
    assert counts[1] == raw_counts[3] and counts[3] == raw_counts[1] and counts[2] == raw_counts[2]
    assert raw_counts[1] != raw_counts[3]  # the check above is not vacuous
    assert list_subjects("acdc_h5", acdc_h5)[0] == "patient021"
    above = load_acdc_h5(acdc_h5.parent, subjects=["patient021"])  # the dataset folder holding volumes/
    assert [r.name for r in above] == [r.name for r in records]


# -------------------------------------------------------------------------------------- phantom output
def test_phantom_output_reads_as_mnm2(phantom_root):
    records = load_dataset("mnm2", phantom_root)
    assert len(records) == 6 and {r.view for r in records} == {"LA"}
    for r in records:
        assert r.image.ndim == 3 and r.image.shape[2] == 1 and r.label.shape == r.image.shape
        assert r.vendor.startswith("PHANTOM-") and r.disease in {"NOR", "LV", "HCM", "DRV"}
        assert {"SCANNER", "FIELD"} <= set(r.info)
        assert set(np.unique(r.label)) == {0, 1, 2, 3}
    sa = load_mnm2(phantom_root / "dataset", views=("SA",), subjects=["2"])
    assert [r.name for r in sa] == ["002_SA_ED", "002_SA_ES"] and sa[0].image.shape[2] > 3
    assert list_subjects("mnm2", phantom_root) == ["001", "002", "003"]
    assert [r.subject for r in select(records, ["003"])] == ["003", "003"]


def test_mnm2_subject_folder_without_images_is_named_in_a_warning(phantom_root, tmp_path):
    """A subject folder emptied by a failed copy is not silently one subject fewer."""
    import shutil

    root = tmp_path / "mnm2"
    shutil.copytree(phantom_root, root)
    for f in (root / "dataset" / "002").iterdir():
        f.unlink()
    with pytest.warns(UserWarning, match=r"skipping 1 subject folder\(s\) without NIfTI files: 002"):
        assert list_subjects("mnm2", root) == ["001", "003"]


# ---------------------------------------------------------------------------------------- nnU-Net raw
def _write_nnunet(root, labels, cases=("001_LA_ED", "002_LA_ES"), label_values=None):
    for case in cases:
        image, label = _case((12, 10), seed=len(case))
        if label_values is not None:
            label = label_values[label]
        write_nifti(root / "imagesTr" / f"{case}_0000.nii.gz", image.astype(np.float32), AFFINE)
        write_nifti(root / "labelsTr" / f"{case}.nii.gz", label.astype(np.uint8), AFFINE)
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MRI"}, "labels": labels,
                                                   "numTraining": len(cases), "file_ending": ".nii.gz"}))


def test_nnunet_files_it_cannot_use_are_named_in_a_warning(tmp_path):
    labels = {"background": 0, "LV": 1, "MYO": 2, "RV": 3}
    _write_nnunet(tmp_path, labels)
    image, label = _case((12, 10))
    write_nifti(tmp_path / "imagesTr" / "003_LA_ED.nii.gz", image.astype(np.float32), AFFINE)  # no _0000
    write_nifti(tmp_path / "labelsTr" / "004_LA_ES.nii.gz", label.astype(np.uint8), AFFINE)  # no image
    with pytest.warns(UserWarning) as caught:
        records = load_nnunet_raw(tmp_path)
    text = " | ".join(str(w.message) for w in caught)
    assert "ignoring 1 file(s) without a channel suffix _XXXX" in text and "003_LA_ED.nii.gz" in text
    assert "ignoring 1 label file(s) without an image in imagesTr: 004_LA_ES.nii.gz" in text
    assert [r.name for r in records] == ["001_LA_ED", "002_LA_ES"]


def test_nnunet_subjects_are_listed_with_the_datasets_file_ending(tmp_path):
    for case in ("001_LA_ED", "002_LA_ES"):
        image, label = _case((12, 10))
        write_nifti(tmp_path / "imagesTr" / f"{case}_0000.nii", image.astype(np.float32), AFFINE)
        write_nifti(tmp_path / "labelsTr" / f"{case}.nii", label.astype(np.uint8), AFFINE)
    (tmp_path / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MRI"}, "numTraining": 2, "file_ending": ".nii",
                                                       "labels": {"background": 0, "LV": 1, "MYO": 2, "RV": 3}}))
    assert list_subjects("nnunet", tmp_path) == ["001", "002"]


def test_h5_files_with_other_names_are_named_in_a_warning(tmp_path):
    for name in ("patient001_frame01.h5", "patient001_frame1.h5"):
        with h5py.File(tmp_path / name, "w") as f:
            f["image"] = np.zeros((2, 4, 5), np.float32)
            f["label"] = np.zeros((2, 4, 5), np.uint8)
    with pytest.warns(UserWarning, match=r"ignoring 1 \.h5 file\(s\) not named patientNNN_frameFF\.h5: patient001_frame1\.h5"):
        assert len(load_acdc_h5(tmp_path)) == 1


def test_nnunet_raw_v2_names_remapped(tmp_path):
    # an ACDC-style dataset: 1 RV, 2 MYO, 3 LV; stored labels use that convention
    acdc_values = np.array([0, 3, 2, 1], np.uint8)  # project -> ACDC (the map is its own inverse)
    _write_nnunet(tmp_path, {"background": 0, "RV": 1, "MYO": 2, "LV": 3}, label_values=acdc_values)
    records = load_nnunet_raw(tmp_path)
    assert [(r.subject, r.view, r.phase) for r in records] == [("001", "LA", "ED"), ("002", "LA", "ES")]
    _, expected = _case((12, 10), seed=len("001_LA_ED"))
    assert records[0].image.shape == (12, 10, 1) and records[0].spacing == pytest.approx((1.5, 1.5, 8.0))
    np.testing.assert_array_equal(records[0].label[..., 0], expected)
    assert list_subjects("nnunet", tmp_path) == ["001", "002"]
    assert [r.subject for r in load_nnunet_raw(tmp_path, subjects=["002"])] == ["002"]


def test_nnunet_own_acdc_conversion_keeps_each_patient_in_one_subject(tmp_path):
    """nnU-Net's ACDC dataset (Dataset027_ACDC): cases ``patientNNN_frameFF``, labels RV 1, "MLV" 2 (the
    myocardium), "LVC" 3 (the LV cavity). The two frames of a patient are one subject, so a split never
    puts ED and ES of one heart on both sides."""
    acdc_values = np.array([0, 3, 2, 1], np.uint8)
    cases = ("patient001_frame01", "patient001_frame12", "patient002_frame01", "patient002_frame10")
    _write_nnunet(tmp_path, {"background": 0, "RV": 1, "MLV": 2, "LVC": 3}, cases=cases, label_values=acdc_values)
    records = load_nnunet_raw(tmp_path)
    assert [r.subject for r in records] == ["patient001", "patient001", "patient002", "patient002"]
    assert [r.name for r in records] == list(cases)  # unique: a training's per-slice maps are keyed by it
    _, expected = _case((12, 10), seed=len(cases[0]))
    np.testing.assert_array_equal(records[0].label[..., 0], expected)
    assert list_subjects("nnunet", tmp_path) == ["patient001", "patient002"]
    (tmp_path / "imagesTr" / "patient003_ES_0000.nii.gz").write_bytes(
        (tmp_path / "imagesTr" / "patient001_frame01_0000.nii.gz").read_bytes())
    (tmp_path / "labelsTr" / "patient003_ES.nii.gz").write_bytes(
        (tmp_path / "labelsTr" / "patient001_frame01.nii.gz").read_bytes())
    assert [(r.subject, r.phase) for r in load_nnunet_raw(tmp_path, subjects=["patient003"])] == [("patient003", "ES")]


def test_nnunet_mnms1_label_names_are_known(tmp_path):
    _write_nnunet(tmp_path, {"background": 0, "LVBP": 1, "LVM": 2, "RV": 3}, cases=("A0S9V9_frame00",))
    (record,) = load_nnunet_raw(tmp_path)
    assert (record.subject, record.phase, record.name) == ("A0S9V9", "frame00", "A0S9V9_frame00")
    assert np.array_equal(np.unique(record.label), [0, 1, 2, 3])


def test_nnunet_raw_v1_and_explicit_map(tmp_path):
    _write_nnunet(tmp_path, {"0": "background", "1": "left ventricle", "2": "myocardium", "3": "right ventricle"},
                  cases=("caseA",))
    (record,) = load_nnunet_raw(tmp_path)
    assert (record.subject, record.view, record.phase) == ("caseA", None, None)
    _write_nnunet(tmp_path, {"background": 0, "thing": 1, "stuff": 2, "other": 3}, cases=("caseA",))
    with pytest.raises(DataError, match=r"thing.*rename it in dataset.json, or from Python pass load_nnunet_raw\(\.\.\., label_map"):
        load_nnunet_raw(tmp_path)
    (record,) = load_nnunet_raw(tmp_path, label_map={0: 0, 1: 3, 2: 2, 3: 1})
    assert np.array_equal(np.unique(record.label), [0, 1, 2, 3])


def test_nnunet_label_outside_declared_map(tmp_path):
    _write_nnunet(tmp_path, {"background": 0, "LV": 1, "MYO": 2}, cases=("c1",))  # file also holds 3s
    with pytest.raises(DataError, match=r"c1\.nii\.gz.*expected label values in \{0, 1, 2\}, got 3"):
        load_nnunet_raw(tmp_path)


V2_LABELS = {"background": 0, "LV": 1, "MYO": 2, "RV": 3}


@pytest.mark.parametrize("description, message", [
    ({"labels": {"background": 0, "MYO": 2, "RV": 3, "LV": -1}}, "expected label values to be integers >= 0, got 'LV': -1"),
    ({"labels": {**V2_LABELS, "LV": True}}, "expected label values to be integers >= 0, got 'LV': True"),
    ({"labels": {**V2_LABELS, "RV": 1}}, "expected each label value once, got 1 for both 'LV' and 'RV'"),
    ([{"labels": V2_LABELS}], "expected a JSON object, got list"),
    ({"labels": V2_LABELS, "file_ending": 5}, "file_ending must be a string such as '.nii.gz', got 5"),
], ids=["negative", "bool", "twice", "list", "ending-int"])
def test_nnunet_dataset_json_that_would_be_misread_is_refused(tmp_path, description, message):
    _write_nnunet(tmp_path, V2_LABELS, cases=("001_LA_ED",))
    (tmp_path / "dataset.json").write_text(json.dumps(description))
    with pytest.raises(DataError) as info:
        load_dataset("nnunet", tmp_path)
    assert str(info.value) == f"{tmp_path / 'dataset.json'}: {message}"
    if isinstance(description, list) or "file_ending" in description:  # listing the subjects reads these too
        with pytest.raises(DataError, match=re.escape(message)):
            list_subjects("nnunet", tmp_path)


# ---------------------------------------------------------------------------------------- ACDC native
def _write_acdc_patient(root, number=1, group="DCM", ed=1, es=12):
    folder = root / f"patient{number:03d}"
    folder.mkdir(parents=True)
    (folder / "Info.cfg").write_text(f"ED: {ed}\nES: {es}\nGroup: {group}\nHeight: 184.0\nNbFrame: 30\nWeight: 95.0\n")
    for frame in (ed, es):
        image, label = _case((12, 10, 3), seed=frame)
        write_nifti(folder / f"patient{number:03d}_frame{frame:02d}.nii.gz", image, AFFINE)
        write_nifti(folder / f"patient{number:03d}_frame{frame:02d}_gt.nii.gz", ACDC_TO_PROJECT[label], AFFINE)
    return folder


def test_acdc_native_remaps_and_reads_info(tmp_path):
    _write_acdc_patient(tmp_path / "training", 1)
    _write_acdc_patient(tmp_path / "training", 2, group="NOR", es=9)
    records = load_acdc(tmp_path)
    assert [(r.subject, r.phase, r.info["frame"]) for r in records] == [
        ("patient001", "ED", "01"), ("patient001", "ES", "12"), ("patient002", "ED", "01"), ("patient002", "ES", "09")
    ]
    _, expected = _case((12, 10, 3), seed=12)
    np.testing.assert_array_equal(records[1].label, expected)
    assert records[0].disease == "DCM" and records[0].view == "SA" and records[0].info["Weight"] == "95.0"
    assert list_subjects("acdc", tmp_path) == ["patient001", "patient002"]


def test_acdc_release_folder_reads_patients_in_order_and_warns_about_the_test_patients(tmp_path):
    _write_acdc_patient(tmp_path / "training", 2)
    _write_acdc_patient(tmp_path / "testing", 101)
    _write_acdc_patient(tmp_path / "training", 1)
    with pytest.warns(UserWarning, match=r"reading the patients of testing and training/ together \(the release's "
                                         r"official test patients among them.*give .*training to keep them out"):
        records = load_acdc(tmp_path, phases=("ED",))
    assert [r.subject for r in records] == ["patient001", "patient002", "patient101"]  # testing/ had come first


def test_a_bare_string_of_codes_is_refused_not_read_letter_by_letter(tmp_path):
    _write_subject(tmp_path / "mnm2")
    _write_acdc_patient(tmp_path / "acdc", 1)
    _write_nnunet(tmp_path / "nnunet", V2_LABELS, cases=("001_LA_ED",))
    for name, options, message in [
        ("mnm2", {"subjects": "001"}, "subjects must be a list of codes like ['001', '002'], got the string '001'"),
        ("mnm2", {"views": "LA"}, "views must be a list of codes like ['LA', 'SA'], got the string 'LA'"),
        ("acdc", {"subjects": "patient001"}, "subjects must be a list of codes like ['patient001', 'patient002'], "
                                             "got the string 'patient001'"),
        ("nnunet", {"subjects": "001"}, "subjects must be a list of codes like ['001', '002'], got the string '001'"),
    ]:
        with pytest.raises(TypeError) as info:
            load_dataset(name, tmp_path / name, **options)
        assert str(info.value) == message
        assert len(load_dataset(name, tmp_path / name, **{k: [v] for k, v in options.items()})) >= 1
    records = load_dataset("mnm2", tmp_path / "mnm2")
    with pytest.raises(TypeError, match=r"subjects must be a list of codes like \['001', '002'\], got the string '001'"):
        select(records, "001")
    assert select(records, ["001"]) == records


def test_text_files_that_are_not_utf8_name_the_file_and_what_was_expected(tmp_path):
    path = tmp_path / "binary"
    path.write_bytes(b"\xff\xfe\x00\x01binary")
    for read, what in [(read_dataset_information, "a CSV file with columns SUBJECT_CODE, DISEASE, VENDOR, SCANNER, FIELD"),
                       (read_info_cfg, "an ACDC Info.cfg of 'key: value' lines")]:
        with pytest.raises(DataError) as info:
            read(path)
        assert str(info.value) == (f"{path}: expected {what} (UTF-8 text), got bytes that are not UTF-8 text "
                                   "(byte 0: invalid start byte)")


# --------------------------------------------------------------------------------------------- errors
def test_missing_label_file_names_it(tmp_path):
    folder = _write_subject(tmp_path)
    (folder / "001_LA_ES_gt.nii.gz").unlink()
    with pytest.raises(MissingFileError, match=r"001_LA_ES_gt\.nii\.gz: LA ES label map not found \(expected "
                                                r"001_LA_ES_gt\.nii\.gz or 001_LA_ES_gt\.nii\)$"):
        load_mnm2(tmp_path)
    assert len(load_mnm2(tmp_path, labels=False)) == 2
    with pytest.raises(FileNotFoundError, match=r"001_SA_ED\.nii\.gz"):
        load_mnm2(tmp_path, views=("SA",))


def test_grid_mismatch_shape_and_affine(tmp_path):
    folder = _write_subject(tmp_path)
    image, label = _case((12, 11, 1))
    write_nifti(folder / "001_LA_ED_gt.nii.gz", label, AFFINE)
    with pytest.raises(DataError, match=r"001_LA_ED_gt\.nii\.gz.*expected shape \(12, 10, 1\), got \(12, 11, 1\)"):
        load_mnm2(tmp_path)
    _, label = _case()
    shifted = AFFINE.copy()
    shifted[0, 3] += 0.5
    write_nifti(folder / "001_LA_ED_gt.nii.gz", label, shifted)
    with pytest.raises(DataError, match=r"001_LA_ED_gt\.nii\.gz.*same affine.*0\.5"):
        load_mnm2(tmp_path)


@pytest.mark.parametrize("bad, message", [(5, "got 5"), (1.5, "non-integer"), (-1, "got -1")])
def test_labels_outside_the_map(tmp_path, bad, message):
    folder = _write_subject(tmp_path)
    _, label = _case()
    label = label.astype(np.float64)
    label[0, 0, 0] = bad
    write_nifti(folder / "001_LA_ES_gt.nii.gz", label, AFFINE)
    with pytest.raises(DataError, match=rf"001_LA_ES_gt\.nii\.gz: .*{message}"):
        load_mnm2(tmp_path)


def test_corrupt_and_truncated_gz(tmp_path):
    folder = _write_subject(tmp_path)
    path = folder / "001_LA_ED.nii.gz"
    blob = gzip.compress(gzip.decompress(path.read_bytes()))
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match=r"001_LA_ED\.nii\.gz: expected a readable NIfTI image, got a corrupt"):
        load_mnm2(tmp_path)
    path.write_bytes(b"this is not a NIfTI file" * 20)
    with pytest.raises(DataError, match=r"001_LA_ED\.nii\.gz: .*corrupt or truncated"):
        read_nifti(path)


def test_corrupt_header_names_the_file(tmp_path):
    folder = _write_subject(tmp_path)
    path = folder / "001_LA_ED.nii.gz"
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[70:72] = (1234).to_bytes(2, "little")  # datatype code: none nibabel knows
    path.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DataError, match=r"001_LA_ED\.nii\.gz: expected a readable NIfTI image, got a corrupt or truncated file \(HeaderDataError"):
        load_mnm2(tmp_path)


def _set_header(path, pixdim=None, sform_code=None):
    """Rewrite raw header fields of a .nii.gz (nibabel would fill them in from the affine on save)."""
    raw = bytearray(gzip.decompress(path.read_bytes()))
    if pixdim is not None:
        struct.pack_into("<3f", raw, 80, *pixdim)  # pixdim[1:4]
    if sform_code is not None:
        struct.pack_into("<h", raw, 254, sform_code)
    path.write_bytes(gzip.compress(bytes(raw)))


def test_spacing_is_the_headers_when_it_agrees_with_the_affine(tmp_path):
    path = write_nifti(tmp_path / "a.nii.gz", _case()[0], AFFINE)
    assert read_nifti(path).spacing == pytest.approx((1.5, 1.5, 8.0))


@pytest.mark.parametrize("pixdim", [(0.0, 0.0, 0.0), (1.0, 1.0, 1.0), (1.5, 1.5, 5.0), (1.5, float("nan"), 8.0)])
def test_spacing_falls_back_to_the_sform_affine_with_a_warning(tmp_path, pixdim):
    path = write_nifti(tmp_path / "a.nii.gz", _case()[0], AFFINE)
    _set_header(path, pixdim=pixdim)
    with pytest.warns(UserWarning, match=r"a\.nii\.gz: the header's voxel size \(pixdim\) .* does not match the sform "
                      r"affine's \(1\.5, 1\.5, 8\.0\); using the affine's"):
        volume = read_nifti(path)
    assert volume.spacing == pytest.approx((1.5, 1.5, 8.0))


def test_spacing_without_sform_or_pixdim_is_unknown_not_one_mm(tmp_path):
    path = write_nifti(tmp_path / "a.nii.gz", _case()[0], AFFINE)
    _set_header(path, pixdim=(0.0, 0.0, 0.0), sform_code=0)
    with pytest.warns(UserWarning, match=r"expected a positive voxel size in the header \(pixdim\) matching the "
                      r"affine, got pixdim \(0\.0, 0\.0, 0\.0\).*the spacing is unknown"):
        volume = read_nifti(path)
    assert volume.spacing is None


def test_nan_in_image(tmp_path):
    folder = _write_subject(tmp_path)
    image, _ = _case()
    image[4, 4, 0] = np.nan
    write_nifti(folder / "001_LA_ED.nii.gz", image, AFFINE)
    with pytest.raises(DataError, match=r"001_LA_ED\.nii\.gz: expected finite intensities, got 1 NaN/inf"):
        load_mnm2(tmp_path)


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
def test_complex_image_is_rejected_not_truncated(tmp_path, dtype):
    image = np.ones((2, 3, 1), dtype) * (1 + 2j)
    with pytest.raises(DataError, match=rf"a\.nii: expected a real-valued image, got {np.dtype(dtype)}$"):
        check_image(image, tmp_path / "a.nii")


def test_float64_beyond_float32_range_is_not_reported_as_nan(tmp_path):
    path = tmp_path / "patient001_frame01.h5"
    with h5py.File(path, "w") as f:
        f["image"] = np.full((2, 4, 5), 0.5)
        f["image"][1, 2, 3] = -1e300
    with pytest.raises(DataError, match=r"patient001_frame01\.h5: expected intensities within float32's range "
                       r"\(±3\.403e\+38\), got values up to 1e\+300, beyond float32's range"):
        load_acdc_h5(tmp_path)
    image = np.full((2, 2, 1), 1e300)
    image[0, 0, 0] = np.inf
    with pytest.raises(DataError, match=r"b\.nii: expected finite intensities, got 1 NaN/inf voxels of 4"):
        check_image(image, "b.nii")
    assert check_image(np.full((2, 2, 1), 3e38), "c.nii").dtype == np.float32  # within range: kept


def test_empty_folders(tmp_path):
    with pytest.raises(DataError, match="found none"):
        load_mnm2(tmp_path)
    with pytest.raises(DataError, match="patientNNN/Info.cfg"):
        load_acdc(tmp_path)
    with pytest.raises(DataError, match="patientNNN_frameFF.h5"):
        load_acdc_h5(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "LV": 1}}))
    with pytest.raises(DataError, match=r"imagesTr: expected images named CASE_0000\.nii\.gz"):
        load_nnunet_raw(tmp_path)
    with pytest.raises(MissingFileError):
        load_mnm2(tmp_path / "absent")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("kaggle", tmp_path)


def test_csv_is_checked(tmp_path):
    _write_subject(tmp_path)
    (tmp_path / "dataset_information.csv").write_text("SUBJECT_CODE,VENDOR\n1,X\n")
    with pytest.raises(DataError, match="missing DISEASE, SCANNER, FIELD"):
        load_mnm2(tmp_path)
    (tmp_path / "dataset_information.csv").write_text("SUBJECT_CODE,DISEASE,VENDOR,SCANNER,FIELD\n1,NOR,GE,Signa,1.5\n")
    record = load_mnm2(tmp_path)[0]
    assert (record.vendor, record.disease, record.info["FIELD"]) == ("GE", "NOR", "1.5")


def test_csv_with_byte_order_mark(tmp_path):
    _write_subject(tmp_path)
    text = "SUBJECT_CODE,DISEASE,VENDOR,SCANNER,FIELD\n1,NOR,GE,Signa,1.5\n"
    (tmp_path / "dataset_information.csv").write_bytes(text.encode("utf-8-sig"))
    record = load_mnm2(tmp_path)[0]
    assert (record.vendor, record.disease) == ("GE", "NOR")


def test_csv_is_taken_only_where_the_layout_puts_it_and_blank_rows_are_skipped(tmp_path):
    """``MnM2/dataset_information.csv`` describes ``MnM2/dataset/NNN`` (given as the MnM2, dataset or subject
    folder); a CSV in any other folder above (a phantom set's, with the real subjects copied beside it) gave
    the real subjects its vendors and diseases. Blank rows (a spreadsheet's ``,,,,``) are padding."""
    text = "SUBJECT_CODE,DISEASE,VENDOR,SCANNER,FIELD\n1,NOR,GE,Signa,1.5\n,,,,\n"
    folder = _write_subject(tmp_path / "MnM2")
    (tmp_path / "MnM2" / "dataset_information.csv").write_text(text)
    for root in (tmp_path / "MnM2", tmp_path / "MnM2" / "dataset", folder):
        assert load_mnm2(root)[0].vendor == "GE", root
    _write_subject(tmp_path / "MnM2" / "real")  # real subjects copied into a folder beside dataset/
    assert load_mnm2(tmp_path / "MnM2" / "real" / "dataset")[0].vendor is None
    assert load_mnm2(tmp_path / "MnM2" / "real" / "dataset" / "001")[0].vendor is None


def test_csv_duplicate_subject_codes(tmp_path):
    _write_subject(tmp_path)
    (tmp_path / "dataset_information.csv").write_text(
        "SUBJECT_CODE,DISEASE,VENDOR,SCANNER,FIELD\n1,NOR,GE,Signa,1.5\n2,DCM,GE,Signa,1.5\n001,HCM,Philips,Achieva,3\n"
    )
    with pytest.raises(DataError, match=r"dataset_information\.csv: expected one row per subject, got SUBJECT_CODE "
                       r"'1' \(line 2\) and '001' \(line 4\), both subject 001"):
        load_mnm2(tmp_path)


def test_h5_errors(tmp_path):
    path = tmp_path / "patient001_frame01.h5"
    with h5py.File(path, "w") as f:
        f["image"] = np.zeros((2, 4, 5), np.float32)
        f["label"] = np.full((2, 4, 5), 4, np.uint8)
    with pytest.raises(DataError, match=r"patient001_frame01\.h5: expected label values in \{0, 1, 2, 3\}, got 4"):
        load_acdc_h5(tmp_path)
    path.write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"patient001_frame01\.h5: expected an HDF5 file .*, got an unreadable file"):
        load_acdc_h5(tmp_path)
    with h5py.File(path, "w") as f:
        f["label"] = np.zeros((2, 4, 5), np.uint8)
    with pytest.raises(DataError, match=r"patient001_frame01\.h5: expected an HDF5 file with an 'image' dataset, "
                                        r"got no 'image' dataset in it"):
        load_acdc_h5(tmp_path)


def test_h5_empty_image_or_group_names_the_file(tmp_path):
    path = tmp_path / "patient001_frame01.h5"
    with h5py.File(path, "w") as f:
        f["image"] = np.zeros((0, 4, 5), np.float32)
    with pytest.raises(DataError, match=r"patient001_frame01\.h5: expected a non-empty 'image' dataset, got shape \(0, 4, 5\)"):
        load_acdc_h5(tmp_path)
    with h5py.File(path, "w") as f:
        f["image"] = h5py.Empty("f4")
    with pytest.raises(DataError, match=r"patient001_frame01\.h5: expected a non-empty 'image' dataset, got shape None"):
        load_acdc_h5(tmp_path)
    for key in ("image", "label"):
        with h5py.File(path, "w") as f:
            f.create_group(key).create_dataset("data", data=np.zeros((2, 4, 5), np.uint8))
            if key == "label":
                f["image"] = np.zeros((2, 4, 5), np.float32)
        with pytest.raises(DataError, match=rf"patient001_frame01\.h5: expected '{key}' to be an HDF5 dataset, got a group"):
            load_acdc_h5(tmp_path)


def test_h5_patient_with_three_frames_keeps_unique_case_names(tmp_path):
    for frame in (1, 5, 12):
        with h5py.File(tmp_path / f"patient001_frame{frame:02d}.h5", "w") as f:
            f["image"] = np.random.default_rng(frame).random((2, 4, 5), dtype=np.float32)
            f["label"] = np.zeros((2, 4, 5), np.uint8)
    names = [r.name for r in load_acdc_h5(tmp_path)]
    assert names == ["patient001_SA_frame01", "patient001_SA_frame05", "patient001_SA_frame12"]


def test_record_slices_and_repr():
    image, label = _case((6, 5, 3))
    label[..., 1] = 0
    record = Record(image.astype(np.float32), label, (1.0, 1.0, 10.0), None, "007", "ED", "SA", "mnm2")
    assert len(list(slices(record))) == 3 and len(list(slices(record, labelled_only=True))) == 2
    assert "007_SA_ED" in repr(record) and record.in_plane_spacing == (1.0, 1.0)


def test_record_rejects_a_label_of_another_shape():
    image, label = _case((6, 5, 3))
    with pytest.raises(DataError, match=r"record 007_SA_ED \(a\.nii\.gz\): expected a label map of the image's "
                       r"shape \(6, 5, 3\), got \(6, 5, 2\)"):
        Record(image, label[..., :2], None, None, "007", "ED", "SA", "mnm2", source="a.nii.gz")
    assert Record(image, None, None, None, "007", "ED", "SA", "mnm2").label is None


def test_uncompressed_files_are_read_and_a_name_in_another_case_is_named(tmp_path):
    folder = _write_subject(tmp_path)
    before = load_mnm2(tmp_path)
    for path in folder.glob("*.nii.gz"):
        nib.save(nib.load(path), str(path.with_suffix("")))  # 001_LA_ED.nii ...
        path.unlink()
    after = load_mnm2(tmp_path)
    assert [r.source.name for r in after] == ["001_LA_ED.nii", "001_LA_ES.nii"]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.label, b.label)
    (folder / "001_LA_ES.nii").rename(folder / "001_la_es.nii")
    with pytest.raises(MissingFileError, match=r"001_LA_ES\.nii\.gz: LA ES image not found \(expected 001_LA_ES\.nii\.gz "
                                                r"or 001_LA_ES\.nii\); found 001_la_es\.nii, which differs in case"):
        load_mnm2(tmp_path)


def test_copy_of_real_subject_reads_without_csv(mnm2_subject, tmp_path):
    """The shared folder holds one subject without its csv: vendor and disease are then unknown."""
    shutil.copytree(mnm2_subject, tmp_path / "001", ignore=shutil.ignore_patterns("*SA*", "*CINE*"))
    records = load_mnm2(tmp_path)
    assert [r.name for r in records] == ["001_LA_ED", "001_LA_ES"] and records[0].vendor is None
