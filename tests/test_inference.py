"""The inference contract end to end: bundle/configs/inference.json on synthetic NIfTI and DICOM studies."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from inference_testing import (
    BUNDLE,
    CONFIG,
    LOGGING,
    META,
    TINY_4_LEVELS,
    TINY_NETWORK,
    blob_volume,
    dicom_values,
    make_workflow,
    nifti_study,
    run_workflow,
    save_nifti,
    save_tiny_weights,
    study_status,
    summary,
    write_datalist,
    write_dicom_series,
)
from monai.data import MetaTensor
from monai.transforms import LoadImage

from scripts.enhance import StudyPrepareBatch
from scripts.io import read_dicom_series, suv_calibration


def _enhanced(output_dir, study_id):
    return nib.load(str(output_dir / study_id / f"{study_id}_enhanced.nii.gz"))


def test_check_properties(tmp_path, weights):
    datalist = write_datalist([nifti_study(tmp_path, "s1")], tmp_path / "studies.json")
    workflow = make_workflow(datalist, tmp_path / "out", weights)
    workflow.initialize()
    assert workflow.check_properties() == []


def test_nifti_study_units_restored_and_grid_kept(tmp_path, weights, capsys):
    records = [nifti_study(tmp_path, "s1"), nifti_study(tmp_path, "s10", scale=10.0)]
    records[1]["mri"] = records[0]["mri"]
    records.append({"pet": records[0]["pet"], "id": "pet_only", "drf": 20})
    datalist = write_datalist(
        [{**r, "pet": r["pet"].split("/")[-1]} if r["id"] == "s1" else r for r in records], tmp_path / "studies.json"
    )  # s1's PET path relative to the datalist's folder
    out = tmp_path / "out"
    run_workflow(datalist, out, weights)  # logging.conf logs to sys.stdout
    status = study_status(out)
    assert all(s["status"] == "ok" for s in status.values()), status
    source = nib.load(records[0]["pet"])
    for study_id in status:
        enhanced = _enhanced(out, study_id)
        assert enhanced.shape == source.shape and enhanced.get_data_dtype() == np.float32
        np.testing.assert_array_equal(enhanced.affine, source.affine)
        description = enhanced.header["descrip"].tobytes().decode().rstrip("\x00")
        assert description.startswith("M2Diff v") and "Bq/ml" in description and "RESEARCH USE" in description
    one, ten = _enhanced(out, "s1").get_fdata(), _enhanced(out, "s10").get_fdata()
    np.testing.assert_allclose(ten, 10 * one, rtol=1e-4, atol=1e-4 * np.abs(ten).max())
    assert status["pet_only"]["mri_free"] and not status["s1"]["mri_free"]
    assert "'pet_only': no MRI given: using the MRI-free path" in capsys.readouterr().out
    assert summary(out)["complete"] and status["s1"]["units"]["output_units"] == "BQML"
    assert status["s1"]["network_calls"] == 4  # 2 steps x 2 batches of <= 8 slices
    assert status["s1"]["network_calls_per_slice"] == 2 and summary(out)["settings"]["num_inference_steps"] == 2
    # the automatic data-consistency cut-off is recorded per study and does not depend on the activity's scale
    assert 6 <= status["s1"]["consistency_fwhm_mm"] <= 32
    assert status["s10"]["consistency_fwhm_mm"] == pytest.approx(status["s1"]["consistency_fwhm_mm"], rel=1e-3)


def test_mri_on_another_grid_is_resampled(tmp_path, weights):
    """The same MRI stored flipped and permuted (same voxel centres) gives the same result; 1 mm MRI runs too."""
    record = nifti_study(tmp_path, "ref")
    mri = nib.load(record["mri"])
    data, affine = mri.get_fdata().astype(np.float32), mri.affine
    flipped = np.flip(data, axis=0).transpose(2, 0, 1)  # axes (k, i', j) with i' = flipped i
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1, data.shape[0] - 1
    permute = np.array([[0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)
    save_nifti(flipped, affine @ flip @ permute, tmp_path / "mri_lps.nii.gz")
    fine = np.repeat(np.repeat(np.repeat(data, 2, 0), 2, 1), 2, 2)
    fine_affine = affine @ np.diag([0.5, 0.5, 0.5, 1.0])
    fine_affine[:3, 3] -= 0.25 * np.diag(affine)[:3]
    save_nifti(fine, fine_affine, tmp_path / "mri_fine.nii.gz")
    datalist = write_datalist(
        [
            record,
            {**record, "id": "flipped", "mri": "mri_lps.nii.gz"},
            {**record, "id": "fine", "mri": "mri_fine.nii.gz"},
        ],
        tmp_path / "studies.json",
    )
    run_workflow(datalist, tmp_path / "out", weights)
    status = study_status(tmp_path / "out")
    assert all(s["status"] == "ok" and not s["mri_free"] for s in status.values()), status
    reference = _enhanced(tmp_path / "out", "ref").get_fdata()
    np.testing.assert_allclose(_enhanced(tmp_path / "out", "flipped").get_fdata(), reference, rtol=1e-4, atol=1e-3)


def test_pet_in_lps_orientation_is_written_back_in_its_own_orientation(tmp_path, weights):
    """The network sees RAS; the output must overlay a non-RAS input exactly (Invertd)."""
    record = nifti_study(tmp_path, "ras", with_mri=False)
    pet = nib.load(record["pet"])
    data, affine = pet.get_fdata().astype(np.float32), pet.affine
    lps = np.flip(np.flip(data, 0), 1).transpose(1, 0, 2)  # axes (j', i', k)
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[0, 3], flip[1, 3] = data.shape[0] - 1, data.shape[1] - 1
    permute = np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float)
    lps_path = save_nifti(lps, affine @ flip @ permute, tmp_path / "pet_lps.nii.gz")
    datalist = write_datalist([record, {"id": "lps", "pet": str(lps_path)}], tmp_path / "studies.json")
    run_workflow(datalist, tmp_path / "out", weights)
    out_lps, out_ras = _enhanced(tmp_path / "out", "lps"), _enhanced(tmp_path / "out", "ras")
    assert out_lps.shape == lps.shape
    np.testing.assert_array_equal(out_lps.affine, nib.load(str(lps_path)).affine)
    back_to_ras = np.flip(np.flip(out_lps.get_fdata().transpose(1, 0, 2), 0), 1)
    np.testing.assert_allclose(back_to_ras, out_ras.get_fdata(), rtol=1e-5, atol=1e-4)


def test_dicom_study_round_trip_with_suv_samples_and_qc(tmp_path, weights):
    pet_folder = write_dicom_series(blob_volume((20, 24, 10)), tmp_path / "pet_dicom", weight_kg=80.0, dose_bq=300e6)
    write_dicom_series(blob_volume((20, 24, 10), peak=400, seed=1), tmp_path / "t1_dicom", modality="MR")
    datalist = write_datalist([{"pet": "pet_dicom", "mri": "t1_dicom"}], tmp_path / "studies.json")
    out_bq, out_suv = tmp_path / "out_bq", tmp_path / "out_suv"
    run_workflow(datalist, out_bq, weights, save_dicom=True, num_samples=2, save_qc_png=True)
    run_workflow(datalist, out_suv, weights, save_dicom=True, output_units="suv")
    assert study_status(out_bq)["pet_dicom"]["status"] == "ok"
    folder = out_bq / "pet_dicom"
    enhanced = nib.load(str(folder / "pet_dicom_enhanced.nii.gz"))
    source = read_dicom_series(pet_folder)
    assert enhanced.shape == source.array.shape
    np.testing.assert_allclose(enhanced.affine, source.affine, atol=1e-6)
    values = enhanced.get_fdata()
    tolerance = np.abs(values).max() / 32767
    np.testing.assert_allclose(dicom_values(folder / "pet_dicom_enhanced_dicom"), values, atol=tolerance)
    via_monai = LoadImage(reader="PydicomReader", image_only=True)(str(folder / "pet_dicom_enhanced_dicom"))
    np.testing.assert_allclose(np.asarray(via_monai), values, atol=tolerance)
    np.testing.assert_allclose(np.asarray(via_monai.affine), enhanced.affine, atol=1e-5)
    first = pydicom.dcmread(sorted((folder / "pet_dicom_enhanced_dicom").iterdir())[0])
    version = json.loads((BUNDLE / "configs" / "metadata.json").read_text())["version"]
    assert version in first.SeriesDescription and first.Units == "BQML"
    assert (folder / "pet_dicom_qc.png").stat().st_size > 1000
    outputs = ["pet_dicom_enhanced.nii.gz", "pet_dicom_enhanced_dicom", "pet_dicom_qc.png"]
    assert sorted(p.name for p in folder.iterdir()) == outputs  # no uncertainty map, whatever num_samples
    # SUV: the same enhancement (num_samples differs, so compare the single-sample run with a Bq/ml rerun)
    run_workflow(datalist, tmp_path / "out_bq1", weights)
    factor = suv_calibration(source, pet_folder).factor
    suv_image = nib.load(str(out_suv / "pet_dicom" / "pet_dicom_enhanced.nii.gz"))
    assert "SUV" in suv_image.header["descrip"].tobytes().decode()
    suv = suv_image.get_fdata()
    bq = nib.load(str(tmp_path / "out_bq1" / "pet_dicom" / "pet_dicom_enhanced.nii.gz")).get_fdata()
    np.testing.assert_allclose(suv, bq * factor, rtol=1e-5, atol=1e-6)
    suv_dicom = out_suv / "pet_dicom" / "pet_dicom_enhanced_dicom"
    assert pydicom.dcmread(sorted(suv_dicom.iterdir())[0]).Units == "GML"
    np.testing.assert_allclose(dicom_values(suv_dicom), suv, atol=np.abs(suv).max() / 32767)


def test_dicom_out_for_nifti_input_is_skipped_with_a_note(tmp_path, weights):
    datalist = write_datalist([nifti_study(tmp_path, "n1", with_mri=False)], tmp_path / "studies.json")
    run_workflow(datalist, tmp_path / "out", weights, save_dicom=True)
    status = study_status(tmp_path / "out")["n1"]
    assert status["status"] == "ok" and "dicom" not in status["outputs"]
    assert any("NIfTI input has no DICOM header" in note for note in status["notes"])


@pytest.mark.skipif(not (BUNDLE / "sample" / "studies.json").is_file(), reason="no shipped sample study yet")
def test_default_datalist_is_the_shipped_sample(tmp_path):
    """Without --datalist the bundle enhances bundle/sample (here with a tiny test network)."""
    from monai.bundle import ConfigWorkflow

    weights = save_tiny_weights(tmp_path / "model.pt", **{k.split("#")[1]: v for k, v in TINY_4_LEVELS.items()})
    settings = {**TINY_NETWORK, **TINY_4_LEVELS, "output_dir": str(tmp_path), "ckpt_path": str(weights)}
    settings["slice_batch_size"] = 48
    workflow = ConfigWorkflow(
        workflow_type="inference",
        config_file=str(CONFIG),
        meta_file=str(META),
        logging_file=str(LOGGING),
        bundle_root=str(BUNDLE),
        **settings,
    )
    workflow.initialize()
    workflow.run()
    result = summary(tmp_path)
    assert result["ok"] == 1 and result["studies"][0]["id"] == "sample" and not result["studies"][0]["mri_free"]
    source = nib.load(str(BUNDLE / "sample" / "sample_pet_drf20.nii.gz"))
    enhanced = _enhanced(tmp_path, "sample")
    assert enhanced.shape == source.shape
    np.testing.assert_array_equal(enhanced.affine, source.affine)


def test_knobs_given_as_command_line_words(tmp_path, weights):
    """Python Fire passes ``--save_dicom false`` as the string "false"; such words must mean what they say."""
    datalist = write_datalist([nifti_study(tmp_path, "w1", with_mri=False)], tmp_path / "studies.json")
    words = {"save_dicom": "false", "save_qc_png": "no", "output_units": "BQML", "warm_start_timestep": "null"}
    run_workflow(datalist, tmp_path / "out", weights, **words)
    assert sorted(p.name for p in (tmp_path / "out" / "w1").iterdir()) == ["w1_enhanced.nii.gz"]
    assert summary(tmp_path / "out")["settings"]["warm_start_timestep"] is None
    run_workflow(datalist, tmp_path / "warm", weights, warm_start_timestep="500", num_samples=2)
    assert summary(tmp_path / "warm")["settings"]["warm_start_timestep"] == 500


def test_num_threads_sets_torchs_threads_and_is_recorded(tmp_path, weights):
    datalist = write_datalist([nifti_study(tmp_path, "t1", with_mri=False)], tmp_path / "studies.json")
    before = torch.get_num_threads()
    torch.set_num_threads(3)  # not 1 already, whatever the machine
    try:
        run_workflow(datalist, tmp_path / "out", weights, num_threads=1)
        assert torch.get_num_threads() == 1 and summary(tmp_path / "out")["settings"]["num_threads"] == 1
    finally:
        torch.set_num_threads(before)


def test_study_without_mri_goes_to_the_sampler_without_an_mri_channel():
    """The MRI-free path gets the PET alone (a zero MRI channel would run the MRI-guided path)."""
    pet = MetaTensor(torch.rand(1, 4, 5, 3))
    inputs, _, args, kwargs = StudyPrepareBatch()({"pet": pet, "mri": None, "drf": 20})
    assert (
        inputs.shape == (1, 1, 4, 5, 3)
        and kwargs == {"dose_reduction_factor": 20, "voxel_size_mm": [1.0, 1.0, 1.0]}
        and args == ()
    )
    inputs, _, _, _ = StudyPrepareBatch()({"pet": pet, "mri": 2 * pet})
    torch.testing.assert_close(inputs, torch.stack([pet.as_tensor()[0], 2 * pet.as_tensor()[0]])[None])


def test_engine_fires_monais_events_after_the_forward_pass(tmp_path, weights):
    """FORWARD_COMPLETED sees the sampler's prediction; MODEL_COMPLETED (the postprocessing) comes after it."""
    from monai.engines.utils import IterationEvents

    datalist = write_datalist([nifti_study(tmp_path, "e1")], tmp_path / "studies.json")
    workflow = make_workflow(datalist, tmp_path / "out", weights)
    workflow.initialize()
    evaluator = workflow.parser.get_parsed_content("evaluator")
    seen = []

    def record(engine):
        seen.append((engine.last_event_name.name, tuple(engine.state.output["pred"].shape)))

    evaluator.add_event_handler(IterationEvents.FORWARD_COMPLETED, record)
    evaluator.add_event_handler(IterationEvents.MODEL_COMPLETED, record)  # after the postprocessing's own handler
    workflow.run()
    workflow.finalize()
    # the network runs at 2 mm (10 slices of 2.5 mm -> 12 of 2 mm); Invertd brings the output back to the input's grid
    assert seen == [("FORWARD_COMPLETED", (1, 1, 20, 24, 12)), ("MODEL_COMPLETED", (1, 20, 24, 10))]
    assert study_status(tmp_path / "out")["e1"]["status"] == "ok"
