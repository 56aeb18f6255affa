"""The T1 is registered to the PET before use; one that does not line up or is not a T1 is dropped, never guessed.

Uses the shipped sample study (simulated, T1 aligned with the PET by construction): the T1 is moved in the world by
changing its affine, as a T1 registered badly by someone else would be.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from inference_testing import BUNDLE, blob_volume, grid_affine, run_workflow, save_nifti, write_datalist
from monai.bundle import ConfigParser
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd, ResampleToMatch, Spacingd
from scipy.spatial.transform import Rotation

from scripts.registration import REGISTRATION_KEY, RegisterMRId

SAMPLE = BUNDLE / "sample"


def moved(affine: np.ndarray, shape, shift_mm, rotation_deg) -> np.ndarray:
    """A world rigid transform about the grid's centre: rotation (x, y, z Euler angles) then shift."""
    centre = (affine @ [*((np.asarray(shape) - 1) / 2.0), 1.0])[:3]
    matrix = np.eye(4)
    matrix[:3, :3] = Rotation.from_euler("xyz", rotation_deg, degrees=True).as_matrix()
    matrix[:3, 3] = centre - matrix[:3, :3] @ centre + np.asarray(shift_mm, dtype=float)
    return matrix


@pytest.fixture(scope="module")
def sample_study():
    load = Compose(
        [
            LoadImaged(["pet", "mri"], image_only=True),
            EnsureChannelFirstd(["pet", "mri"], channel_dim="no_channel"),
            Orientationd("pet", axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
            Spacingd("pet", pixdim=(2.0, 2.0, 2.0)),
        ]
    )
    study = load({"pet": str(SAMPLE / "sample_pet_drf20.nii.gz"), "mri": str(SAMPLE / "sample_t1.nii.gz"), "id": "s"})
    aligned = ResampleToMatch()(study["mri"], img_dst=study["pet"]).numpy()[0]
    return study, aligned


def _with_mri(study: dict, matrix: np.ndarray | None = None, image: np.ndarray | None = None) -> dict:
    out = dict(study)
    mri = study["mri"].clone()
    if image is not None:
        mri[0] = torch.as_tensor(image)
    if matrix is not None:
        mri.affine = torch.as_tensor(matrix @ np.asarray(study["mri"].affine, dtype=np.float64))
    out["mri"] = mri
    return out


def _brain_error(mri: np.ndarray, aligned: np.ndarray) -> float:
    brain = aligned > 0.3 * np.percentile(aligned, 99)
    return float(np.abs(mri - aligned)[brain].mean() / aligned[brain].mean())


def test_a_moved_t1_is_registered_back(sample_study):
    study, aligned = sample_study
    shape = study["mri"].shape[1:]
    matrix = moved(np.asarray(study["mri"].affine), shape, (6.0, -4.0, 5.0), (6.0, 0.0, -4.0))
    header_only = RegisterMRId(register=False)(_with_mri(study, matrix))
    registered = RegisterMRId(register=True)(_with_mri(study, matrix))
    record = registered[REGISTRATION_KEY]
    assert record["used"] and record["registered"]
    assert np.allclose(record["translation_mm"], (6.0, -4.0, 5.0), atol=1.0), record
    assert _brain_error(registered["mri"].numpy()[0], aligned) < 0.05
    # trusted as the header places it, the same T1 fails the alignment check and is dropped
    assert "mri" not in header_only and not header_only[REGISTRATION_KEY]["used"]
    assert "line up" in header_only[REGISTRATION_KEY]["reason"]


def test_registration_is_deterministic(sample_study):
    study, _ = sample_study
    matrix = moved(np.asarray(study["mri"].affine), study["mri"].shape[1:], (3.0, 0.0, 0.0), (0.0, 3.0, 0.0))
    first = RegisterMRId()(_with_mri(study, matrix))
    second = RegisterMRId()(_with_mri(study, matrix))
    assert torch.equal(first["mri"].as_tensor(), second["mri"].as_tensor())


def test_an_image_that_is_not_a_t1_is_dropped(sample_study):
    study, aligned = sample_study
    t1 = study["mri"].numpy()[0]
    head = t1 > 0.05 * np.percentile(t1, 99.5)
    t2_like = np.where(head, 1.3 * np.percentile(t1, 99) - t1, 0.0).astype(np.float32)
    out = RegisterMRId(register=False)(_with_mri(study, image=t2_like))  # the checks run either way
    assert "mri" not in out
    assert not out[REGISTRATION_KEY]["used"] and "T1" in out[REGISTRATION_KEY]["reason"]
    assert out[REGISTRATION_KEY]["white_grey_ratio"] < 1.0


def test_a_reversed_t1_is_dropped(sample_study):
    study, _ = sample_study
    matrix = moved(np.asarray(study["mri"].affine), study["mri"].shape[1:], (0.0, 0.0, 0.0), (0.0, 0.0, 180.0))
    out = RegisterMRId(register=False)(_with_mri(study, matrix))
    assert "mri" not in out and "line up" in out[REGISTRATION_KEY]["reason"]


def test_no_mri_is_left_alone(sample_study):
    study, _ = sample_study
    out = RegisterMRId()({"pet": study["pet"], "id": "s"})
    assert "mri" not in out and REGISTRATION_KEY not in out


def test_inference_falls_back_to_mri_free_and_says_why(tmp_path, weights):
    """End to end: a T2-like MRI gives the MRI-free output, a warning, and the reason in summary.json."""
    t1 = nib.load(SAMPLE / "sample_t1.nii.gz")
    data = np.asarray(t1.dataobj, dtype=np.float32)
    head = data > 0.05 * np.percentile(data, 99.5)
    t2_path = tmp_path / "t2_like.nii.gz"
    nib.save(
        nib.Nifti1Image(np.where(head, 1.3 * np.percentile(data, 99) - data, 0.0).astype(np.float32), t1.affine),
        t2_path,
    )
    pet = str(SAMPLE / "sample_pet_drf20.nii.gz")
    datalist = write_datalist(
        [{"id": "t2", "pet": pet, "mri": str(t2_path)}, {"id": "free", "pet": pet}], tmp_path / "studies.json"
    )
    run_workflow(datalist, tmp_path / "out", weights)
    studies = {s["id"]: s for s in json.loads((tmp_path / "out" / "summary.json").read_text())["studies"]}
    assert studies["t2"]["mri_free"] and not studies["t2"]["mri_registration"]["used"]
    assert "T1" in studies["t2"]["mri_registration"]["reason"]
    enhanced = [nib.load(tmp_path / "out" / i / f"{i}_enhanced.nii.gz").get_fdata() for i in ("t2", "free")]
    np.testing.assert_array_equal(enhanced[0], enhanced[1])


def test_an_mri_of_the_pets_shape_on_another_grid_comes_out_resampled(tmp_path):
    """Same shape, grid shifted by 2 voxels along x: inference's preprocessing moves it onto the PET's grid.

    (A field of view this small is not registered: the header's alignment is trusted, with a warning.)
    """
    affine = grid_affine(spacing=(2.0, 2.0, 2.0))
    shifted = affine.copy()
    shifted[0, 3] += 2 * 2.0
    mri = blob_volume(seed=1, peak=400.0, background=5.0)
    record = {
        "id": "s",
        "pet": str(save_nifti(blob_volume(), affine, tmp_path / "pet.nii.gz")),
        "mri": str(save_nifti(mri, shifted, tmp_path / "mri.nii.gz")),
    }
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    parser["bundle_root"] = str(BUNDLE)
    study = parser.get_parsed_content("preprocessing")(record)
    out = study["mri"].numpy()[0]
    assert study[REGISTRATION_KEY]["used"] and "note" in study[REGISTRATION_KEY]
    np.testing.assert_allclose(out[:2], 0.0, atol=1e-6)  # outside the MRI: zeros
    np.testing.assert_allclose(out[2:] / out[2:].mean(), mri[:-2] / mri[:-2].mean(), rtol=1e-4, atol=1e-5)
