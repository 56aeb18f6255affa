"""Any voxel size: the network runs at its training spacing (2 mm), the output comes back on the input's exact grid."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from inference_testing import (
    BUNDLE,
    blob_volume,
    dicom_affine,
    make_workflow,
    run_workflow,
    save_nifti,
    study_status,
    write_datalist,
    write_dicom_series,
)

from scripts.enhance import StudyPrepareBatch
from scripts.io import read_dicom_series
from scripts.spacing import recorded_spacing


def study_on_grid(folder, study_id, spacing, extent_mm=(40.0, 48.0, 24.0), with_mri=True) -> dict:
    """A blob PET with an off-centre hot spot (a flipped or shifted output moves it) on a grid of ``spacing``.

    The MRI, when asked for, lies on a 1 mm grid over the same field of view (as clinics' T1s do).
    """
    shape = tuple(int(round(e / s)) for e, s in zip(extent_mm, spacing))
    origin = tuple(-e / 2 for e in extent_mm)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    pet = blob_volume(shape)
    hot = tuple(slice(int(0.6 * n), int(0.85 * n)) for n in shape)
    pet[hot] += 800.0
    record = {"id": study_id, "pet": str(save_nifti(pet, affine, folder / f"{study_id}_pet.nii.gz"))}
    if with_mri:
        mri_shape = tuple(int(round(e)) for e in extent_mm)
        mri_affine = np.diag([1.0, 1.0, 1.0, 1.0])
        mri_affine[:3, 3] = origin
        mri = blob_volume(mri_shape, peak=400.0, seed=1, background=5.0)
        record["mri"] = str(save_nifti(mri, mri_affine, folder / f"{study_id}_t1.nii.gz"))
    return record


def hot_spot_contrast(image: nib.Nifti1Image) -> float:
    """Mean activity in the hot spot's corner over that in the opposite corner (a flipped output falls below 1)."""
    values = image.get_fdata()
    hot = tuple(slice(int(0.6 * n), int(0.85 * n)) for n in values.shape)
    opposite = tuple(slice(n - s.stop, n - s.start) for n, s in zip(values.shape, hot))
    return float(values[hot].mean() / values[opposite].mean())


def enhanced(output_dir, study_id) -> nib.Nifti1Image:
    return nib.load(str(output_dir / study_id / f"{study_id}_enhanced.nii.gz"))


def test_metadata_record_the_training_spacing_and_the_config_uses_it(tmp_path, weights):
    recorded = recorded_spacing(BUNDLE)
    assert recorded == {"training_spacing_mm": [2.0, 2.0, 2.0], "validated_voxel_size_mm": [1.0, 3.5]}
    datalist = write_datalist([study_on_grid(tmp_path, "fine", (1.0, 1.0, 1.0))], tmp_path / "studies.json")
    workflow = make_workflow(datalist, tmp_path / "out", weights)
    workflow.initialize()
    study = workflow.dataset[0]
    assert tuple(study["pet"].shape) == (1, 20, 24, 12) and tuple(study["mri"].shape) == (1, 20, 24, 12)
    # the data consistency measures in millimetres of the grid the network runs on, not the file's
    _, _, _, keywords = StudyPrepareBatch()(study)
    assert keywords["voxel_size_mm"] == pytest.approx([2.0, 2.0, 2.0])


def test_other_voxel_sizes_come_back_on_their_own_grid(tmp_path, weights, capsys):
    records = [
        study_on_grid(tmp_path, "fine", (1.0, 1.0, 1.0)),
        study_on_grid(tmp_path, "aniso", (2.7, 2.7, 3.3)),
        study_on_grid(tmp_path, "coarse", (4.0, 4.0, 4.0), with_mri=False),
    ]
    volume = blob_volume((15, 18, 7))
    volume[9:13, 11:15, 4:6] += 800.0
    dicom_folder = write_dicom_series(volume, tmp_path / "aniso_dicom", spacing=(2.7, 2.7, 3.3))
    records.append({"id": "aniso_dicom", "pet": str(dicom_folder)})
    out = tmp_path / "out"
    run_workflow(write_datalist(records, tmp_path / "studies.json"), out, weights)
    log = capsys.readouterr().out
    status = study_status(out)
    assert all(s["status"] == "ok" for s in status.values()), status
    for record in records[:3]:
        source, output = nib.load(record["pet"]), enhanced(out, record["id"])
        assert output.shape == source.shape
        np.testing.assert_allclose(output.affine, source.affine, atol=1e-6)
        # the hot spot stays where it was (a flipped output would put it in the opposite corner)
        assert hot_spot_contrast(output) > 1.3, (record["id"], hot_spot_contrast(output), hot_spot_contrast(source))
        input_grid = status[record["id"]]["input_grid"]
        assert input_grid["shape"] == list(source.shape)
        assert input_grid["spacing_mm"] == pytest.approx(source.header.get_zooms(), abs=1e-4)
    source = read_dicom_series(dicom_folder)
    output = enhanced(out, "aniso_dicom")
    assert output.shape == source.array.shape
    np.testing.assert_allclose(output.affine, dicom_affine((2.7, 2.7, 3.3)), atol=1e-5)
    for study_id in status:
        assert status[study_id]["network_grid"]["spacing_mm"] == [2.0, 2.0, 2.0]
    assert status["fine"]["network_grid"]["shape"] == [20, 24, 12]
    assert status["aniso"]["input_grid"]["spacing_mm"] == [2.7, 2.7, 3.3]
    assert status["aniso"]["network_grid"]["shape"] == [20, 24, 11]  # 15 x 18 x 7 voxels
    # only the 4 mm study lies outside the validated 1.0-3.5 mm, and its warning names it and its voxel size
    warnings = [line for line in log.splitlines() if "outside the validated range" in line]
    assert len(warnings) == 1 and "study 'coarse': voxel size 4 x 4 x 4 mm" in warnings[0], warnings
    assert "study 'fine': resampled from 1 x 1 x 1 mm" in log


def test_two_mm_study_is_unchanged(tmp_path, weights, capsys):
    """A 2 mm RAS study gives what the chain without ``Spacingd`` gave, voxel for voxel."""
    record = study_on_grid(tmp_path, "native", (2.0, 2.0, 2.0))
    datalist = write_datalist([record], tmp_path / "studies.json")
    run_workflow(datalist, tmp_path / "out", weights)
    spacing_step = {"_target_": "Identityd", "keys": "pet"}
    run_workflow(datalist, tmp_path / "before", weights, **{"preprocessing#transforms#3": spacing_step})
    np.testing.assert_array_equal(
        enhanced(tmp_path / "out", "native").get_fdata(), enhanced(tmp_path / "before", "native").get_fdata()
    )
    status = study_status(tmp_path / "out")["native"]
    assert status["network_grid"] == status["input_grid"] == {"shape": [20, 24, 12], "spacing_mm": [2.0, 2.0, 2.0]}
    log = capsys.readouterr().out
    assert "resampled from" not in log and "outside the validated range" not in log
