"""``write_nifti``: atomic, byte-for-byte repeatable files."""

import nibabel as nib
import numpy as np
import pytest

import crocnet.atomic
from crocnet.data import DataError, MissingFileError, read_nifti, write_nifti


def test_write_nifti_is_atomic_deterministic_and_checks_the_name(tmp_path, monkeypatch):
    array = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    a, b = write_nifti(tmp_path / "a.nii.gz", array, None), write_nifti(tmp_path / "sub" / "b.nii.gz", array, None)
    assert a.read_bytes() == b.read_bytes()  # no time stamp in the gzip header
    np.testing.assert_array_equal(np.asarray(nib.load(a).dataobj), array)
    np.testing.assert_array_equal(np.asarray(nib.load(write_nifti(tmp_path / "c.nii", array, None)).dataobj), array)
    with pytest.raises(ValueError, match=r"a NIfTI path must end in .nii or .nii.gz, got '.*d.img'"):
        write_nifti(tmp_path / "d.img", array, None)

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(crocnet.atomic.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        write_nifti(a, array * 2, None)
    np.testing.assert_array_equal(np.asarray(nib.load(a).dataobj), array)  # the old file, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz", "c.nii", "sub"]  # no temporary left


def test_a_folder_or_a_dangling_link_given_as_a_nifti_file_is_named_as_such(tmp_path):
    with pytest.raises(DataError, match=r"expected a NIfTI file, got a folder"):
        read_nifti(tmp_path)
    (tmp_path / "loop.nii.gz").symlink_to(tmp_path / "loop.nii.gz")
    (tmp_path / "dangling.nii.gz").symlink_to(tmp_path / "absent.nii.gz")
    for name in ("loop.nii.gz", "dangling.nii.gz"):
        with pytest.raises(MissingFileError, match=r"NIfTI file a broken or looping symbolic link"):
            read_nifti(tmp_path / name)
    with pytest.raises(MissingFileError, match=r"absent\.nii\.gz: NIfTI file not found"):
        read_nifti(tmp_path / "absent.nii.gz")


def test_a_written_label_map_does_not_keep_the_images_display_range(tmp_path):
    header = nib.Nifti1Header()
    header["cal_min"], header["cal_max"] = 0, 800  # an image's display window
    header.set_intent("t test", (5,))
    labels = np.arange(4, dtype=np.uint8).reshape(2, 2)
    back = nib.load(write_nifti(tmp_path / "labels.nii.gz", labels, np.eye(4), header)).header
    assert (float(back["cal_min"]), float(back["cal_max"])) == (0.0, 0.0)  # 0, 0: viewers take the data's range
    assert back.get_intent()[0] == "none" and header["cal_max"] == 800  # the caller's header untouched
