"""Inputs are recognised by content: NIfTI-1/2 (plain or gzip) and DICOM folders pass, anything else is refused."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from inference_testing import blob_volume, write_dicom_series

from scripts.io.errors import StudyError
from scripts.io.formats import check_image_format, image_format


def test_nifti_and_dicom_are_recognised_whatever_their_names(tmp_path):
    volume = blob_volume((8, 8, 4))
    nib.save(nib.Nifti1Image(volume, np.eye(4)), str(tmp_path / "one.nii.gz"))
    nib.save(nib.Nifti2Image(volume, np.eye(4)), str(tmp_path / "two.nii"))
    (tmp_path / "renamed.dat").write_bytes((tmp_path / "two.nii").read_bytes())
    folder = write_dicom_series(volume, tmp_path / "series")
    assert [image_format(tmp_path / n) for n in ("one.nii.gz", "two.nii", "renamed.dat")] == ["nifti"] * 3
    assert image_format(folder) == "dicom_folder" and check_image_format(folder, "PET") == "dicom_folder"
    one_file = sorted(folder.iterdir())[0]
    assert image_format(one_file) == "dicom"
    with pytest.raises(StudyError, match="MRI is a single DICOM file.*give the folder"):
        check_image_format(one_file, "MRI")


def test_other_content_is_refused_naming_file_and_role(tmp_path):
    (tmp_path / "scan.nii").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(300))
    with pytest.raises(StudyError, match="PET is not NIfTI or DICOM: the content is a PNG image") as error:
        check_image_format(tmp_path / "scan.nii", "PET")
    assert str(tmp_path / "scan.nii") in str(error.value)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no images here")
    with pytest.raises(StudyError, match="MRI folder holds no DICOM files"):
        check_image_format(tmp_path / "notes", "MRI")
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    with pytest.raises(StudyError, match="an empty file"):
        check_image_format(tmp_path / "empty.nii.gz", "PET")
