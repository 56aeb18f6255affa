"""DICOM in (geometry checks, per-slice rescale, SUV from the header) and the derived DICOM series out."""

from __future__ import annotations

import math

import numpy as np
import pydicom
import pytest
import torch
from inference_testing import F18_HALF_LIFE_S, blob_volume, dicom_affine, dicom_values, write_dicom_series
from monai.data import MetaTensor
from monai.transforms import LoadImage

from scripts.io import StudyError, read_dicom_series, suv_calibration, write_derived_series
from scripts.io.transforms import units_for_study
from scripts.io.volumes import read_volume


@pytest.fixture
def pet_volume() -> np.ndarray:
    return blob_volume((12, 14, 6))


def test_reader_matches_monai_and_geometry(tmp_path, pet_volume):
    folder = write_dicom_series(pet_volume, tmp_path / "pet")
    series = read_dicom_series(folder)
    assert series.array.shape == pet_volume.shape
    np.testing.assert_allclose(series.array, pet_volume, atol=pet_volume.max() / 65535)
    np.testing.assert_allclose(series.affine, dicom_affine())
    monai_image = LoadImage(reader="PydicomReader", image_only=True)(str(folder))
    np.testing.assert_allclose(np.asarray(monai_image), series.array, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(monai_image.affine), series.affine, atol=1e-6)


def test_reader_sorts_by_position_not_file_order(tmp_path, pet_volume):
    folder = write_dicom_series(pet_volume, tmp_path / "pet")
    files = sorted(folder.iterdir())
    for i, f in enumerate(files):  # reverse the file names so that listing order is opposite to position order
        f.rename(folder / f"x{len(files) - i:03d}.dcm")
    series = read_dicom_series(folder)
    np.testing.assert_allclose(series.array, pet_volume, atol=pet_volume.max() / 65535)


def test_reader_sorts_by_position_not_instance_number(tmp_path, pet_volume):
    folder = write_dicom_series(pet_volume, tmp_path / "pet")
    files = sorted(folder.iterdir())
    for i, f in enumerate(files):  # InstanceNumber now runs opposite to the slice position
        ds = pydicom.dcmread(f)
        ds.InstanceNumber = len(files) - i
        ds.save_as(f)
    series = read_dicom_series(folder)
    np.testing.assert_allclose(series.array, pet_volume, atol=pet_volume.max() / 65535)
    np.testing.assert_allclose(series.affine, dicom_affine())


def test_per_slice_rescale_slope_applied(tmp_path):
    volume = blob_volume((8, 8, 4))
    volume[:, :, 2] *= 50  # a much brighter slice: its own RescaleSlope
    folder = write_dicom_series(volume, tmp_path / "pet")
    slopes = {float(pydicom.dcmread(f).RescaleSlope) for f in folder.iterdir()}
    assert len(slopes) == 4
    np.testing.assert_allclose(read_dicom_series(folder).array, volume, rtol=1e-3, atol=0.05)


def test_missing_slice_is_reported(tmp_path, pet_volume):
    folder = write_dicom_series(pet_volume, tmp_path / "pet", skip_slices=(3,))
    with pytest.raises(StudyError, match="missing slice") as info:
        read_dicom_series(folder)
    assert str(folder) in str(info.value) and "slice002.dcm" in str(info.value)


def test_inconsistent_spacing_is_reported(tmp_path, pet_volume):
    folder = write_dicom_series(pet_volume, tmp_path / "pet", z_offsets={4: 0.8, 5: 0.8})
    with pytest.raises(StudyError, match="inconsistent slice spacing"):
        read_dicom_series(folder)


def test_two_series_in_one_folder_are_refused(tmp_path, pet_volume):
    folder = write_dicom_series(pet_volume, tmp_path / "pet")
    write_dicom_series(pet_volume, tmp_path / "other")
    (tmp_path / "other" / "slice000.dcm").rename(folder / "zz_other.dcm")
    with pytest.raises(StudyError, match="one DICOM series per folder"):
        read_dicom_series(folder)


def test_folder_without_dicom(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(StudyError, match="no DICOM images"):
        read_dicom_series(tmp_path)


def test_suv_from_header_start_decay_correction(tmp_path, pet_volume):
    folder = write_dicom_series(
        pet_volume, tmp_path / "pet", weight_kg=80.0, dose_bq=300e6, injection_time="093000", series_time="103000"
    )
    calibration = suv_calibration(read_dicom_series(folder), folder)
    decayed_dose = 300e6 * 2 ** (-3600 / F18_HALF_LIFE_S)
    assert calibration.units == "BQML"
    assert calibration.factor == pytest.approx(80_000 / decayed_dose, rel=1e-9)
    assert calibration.bqml_factor == 1.0


def test_suv_decay_reference_is_the_series_start_not_the_last_slice(tmp_path, pet_volume):
    folder = write_dicom_series(pet_volume, tmp_path / "pet", injection_time="093000", series_time="103000")
    for k, f in enumerate(sorted(folder.iterdir())):  # slices acquired one minute apart from the series start
        ds = pydicom.dcmread(f)
        ds.AcquisitionTime = f"10{30 + k:02d}00"
        ds.save_as(f)
    calibration = suv_calibration(read_dicom_series(folder), folder)
    assert calibration.factor == pytest.approx(70_000 / (200e6 * 2 ** (-3600 / F18_HALF_LIFE_S)), rel=1e-9)


def test_suv_reads_an_injection_datetime_without_seconds(tmp_path, pet_volume):
    """RadiopharmaceuticalStartDateTime YYYYMMDDHHMM (a valid DT, read by pydicom) is 09:30 of the series' day."""
    folder = write_dicom_series(pet_volume, tmp_path / "pet", injection_time="080000", series_time="103000")
    for f in folder.iterdir():
        ds = pydicom.dcmread(f)
        ds.RadiopharmaceuticalInformationSequence[0].RadiopharmaceuticalStartDateTime = "202501020930"
        ds.save_as(f)
    calibration = suv_calibration(read_dicom_series(folder), folder)
    assert calibration.factor == pytest.approx(70_000 / (200e6 * 2 ** (-3600 / F18_HALF_LIFE_S)), rel=1e-9)


def test_suv_admin_decay_correction_uses_the_injected_dose(tmp_path, pet_volume):
    folder = write_dicom_series(pet_volume, tmp_path / "pet", weight_kg=60.0, dose_bq=250e6, decay_correction="ADMIN")
    assert suv_calibration(read_dicom_series(folder), folder).factor == pytest.approx(60_000 / 250e6)


def test_suv_across_midnight_without_dates(tmp_path, pet_volume):
    folder = write_dicom_series(pet_volume, tmp_path / "pet", injection_time="233000", series_time="003000")
    series = read_dicom_series(folder)
    for ds in [series.header]:
        del ds.SeriesDate
    series.acquisition_times = [None] * len(series.acquisition_times)
    expected = 70_000 / (200e6 * math.pow(2, -3600 / F18_HALF_LIFE_S))
    assert suv_calibration(series, folder).factor == pytest.approx(expected, rel=1e-9)


def test_suv_needs_weight(tmp_path, pet_volume):
    folder = write_dicom_series(pet_volume, tmp_path / "pet", weight_kg=0.0)
    series = read_dicom_series(folder)
    assert suv_calibration(series, folder).factor is None
    pet = read_volume(folder)
    with pytest.raises(StudyError, match="PatientWeight"):
        units_for_study({}, pet, "suv")
    assert units_for_study({}, pet, "bqml")["factor"] == 1.0


def test_nifti_suv_needs_weight_and_dose_in_the_record(pet_volume):
    pet = MetaTensor(torch.as_tensor(pet_volume), affine=torch.eye(4), meta={"filename_or_obj": "/data/pet.nii.gz"})
    with pytest.raises(StudyError, match="patient_weight_kg"):
        units_for_study({"id": "a"}, pet, "suv")
    units = units_for_study({"patient_weight_kg": 75, "injected_dose_bq": 150e6}, pet, "suv")
    assert units["factor"] == pytest.approx(75_000 / 150e6)


def test_derived_series_round_trip(tmp_path, pet_volume):
    source = read_dicom_series(write_dicom_series(pet_volume, tmp_path / "pet"))
    enhanced = source.array * 1.5 - 3.0  # some negative values too
    files = write_derived_series(
        enhanced, source, tmp_path / "out", "M2Diff enhanced v9.9", units="BQML", derivation="test"
    )
    assert len(files) == pet_volume.shape[2]
    back = read_dicom_series(tmp_path / "out")
    np.testing.assert_allclose(back.affine, source.affine, atol=1e-6)
    np.testing.assert_allclose(back.array, enhanced, atol=np.abs(enhanced).max() / 32767)
    np.testing.assert_allclose(dicom_values(tmp_path / "out"), enhanced, atol=np.abs(enhanced).max() / 32767)
    source_uids = {pydicom.dcmread(f).SOPInstanceUID for f in source.files}
    for path, src in zip(back.files, source.files):
        ds, src_ds = pydicom.dcmread(path), pydicom.dcmread(src)
        assert ds.SOPInstanceUID not in source_uids and ds.SeriesInstanceUID != src_ds.SeriesInstanceUID
        assert ds.FrameOfReferenceUID == src_ds.FrameOfReferenceUID and ds.StudyInstanceUID == src_ds.StudyInstanceUID
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY"] and "v9.9" in ds.SeriesDescription
        assert ds.SeriesDescription.startswith("RESEARCH ONLY") and "RESEARCH USE ONLY" in ds.ImageComments
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == src_ds.SOPInstanceUID
        assert ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID == src_ds.SOPInstanceUID
        assert ds.ImagePositionPatient == src_ds.ImagePositionPatient and ds.Units == "BQML"


def test_derived_series_identity_is_a_function_of_the_source_and_the_model_version(tmp_path, pet_volume):
    """Writing the same source again gives the same UIDs (a PACS replaces the series); another version, new ones."""
    source = read_dicom_series(write_dicom_series(pet_volume, tmp_path / "pet"))

    def identity(folder, description, scale=1.0):
        files = write_derived_series(source.array * scale, source, tmp_path / folder, description, "BQML", "test")
        headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
        return {ds.SeriesInstanceUID for ds in headers}, [ds.SOPInstanceUID for ds in headers], headers[0].SeriesNumber

    first = identity("a", "M2Diff enhanced v1.0")
    assert len(first[0]) == 1 and len(set(first[1])) == len(source.files)
    assert first[2] == pydicom.dcmread(source.files[0]).SeriesNumber + 1000
    assert identity("b", "M2Diff enhanced v1.0", scale=2.0) == first  # other values (another run): same identity
    second = identity("c", "M2Diff enhanced v1.1")
    assert second[0].isdisjoint(first[0]) and set(second[1]).isdisjoint(first[1])


def test_derived_series_failure_mid_way_leaves_nothing(tmp_path, pet_volume, monkeypatch):
    source = read_dicom_series(write_dicom_series(pet_volume, tmp_path / "pet"))
    calls = []
    original = pydicom.Dataset.save_as

    def failing_save_as(self, filename, *args, **kwargs):
        calls.append(filename)
        if len(calls) == 3:
            raise OSError("disk full (simulated)")
        return original(self, filename, *args, **kwargs)

    monkeypatch.setattr(pydicom.Dataset, "save_as", failing_save_as)
    with pytest.raises(OSError, match="disk full"):
        write_derived_series(source.array, source, tmp_path / "out", "x", "BQML", "x")
    assert len(calls) == 3 and sorted(p.name for p in tmp_path.iterdir()) == ["pet"]


def test_series_from_the_simulator_export(tmp_path):
    """The simulator's DICOM export (RAS volume -> LPS slices) reads back on the same world grid, with its SUV."""
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Orientation

    from pet_simulator.dicom_export import SeriesInfo, write_pet_series

    volume = blob_volume((12, 14, 6))
    affine = np.diag([2.0, 2.0, 2.5, 1.0])
    affine[:3, 3] = (-11.0, -13.0, -6.0)
    write_pet_series(volume, affine, tmp_path / "pet", SeriesInfo(patient_weight_kg=72.0), injected_dose_bq=180e6)
    series = read_dicom_series(tmp_path / "pet")
    to_ras = Orientation(axcodes="RAS")
    ours = to_ras(MetaTensor(torch.from_numpy(series.array)[None], affine=torch.as_tensor(series.affine)))
    np.testing.assert_allclose(np.asarray(ours.affine), affine, atol=1e-4)
    np.testing.assert_allclose(np.asarray(ours[0]), volume, rtol=1e-3, atol=volume.max() / 3e4)
    expected = 72_000 / (180e6 * 2 ** (-3600.0 / F18_HALF_LIFE_S))
    assert suv_calibration(series, tmp_path / "pet").factor == pytest.approx(expected, rel=1e-6)
