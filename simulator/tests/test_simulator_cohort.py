"""Simulator cohort: determinism, resumability, splits by subject, datalist format, DICOM export read-back."""

import json
import os

import nibabel as nib
import numpy as np
import pytest

from pet_simulator.acquisition import ScannerConfig
from pet_simulator.cohort import assign_groups_and_splits, generate_cohort, noise_repeats
from pet_simulator.dicom_export import SeriesInfo, write_mr_series, write_pet_series

TINY = ScannerConfig(n_angles=12, n_subsets=3, n_iterations=1)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def _generate(out, cache, **overrides):
    kwargs = dict(num_subjects=1, seed=7, dose_reduction_factors=[10], split_fractions=(1.0, 0.0, 0.0))
    kwargs.update(whole_head_fraction=1.0, lesion_fraction=1.0, scanner_config=TINY, qc=False, progress=False)
    return generate_cohort(out, cache_dir=cache, **{**kwargs, **overrides})


def test_same_seed_same_bytes_and_resume(tmp_path, cache):
    a = _generate(tmp_path / "a", cache)
    b = _generate(tmp_path / "b", cache)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a" / "sub-0001").iterdir())
    # t1, truth, sd, noise-free, drf10, random drf, labels, brain mask, lesion mask, params.json
    assert len(files) == 10
    for rel in files:
        if rel.suffix == ".json":
            pa = json.loads((tmp_path / "a" / rel).read_text())
            pb = json.loads((tmp_path / "b" / rel).read_text())
            for key in [k for k in pa if k.startswith("seconds_")]:
                pa.pop(key), pb.pop(key)
            assert pa == pb
        else:
            assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    datalist = json.loads(a.read_text())
    assert datalist["complete"] and datalist["dose_reduction_factors"] == [10]
    rec = datalist["training"][0]
    keys = ("t1", "pet_truth", "pet_sd", "pet_sd_noisefree", "pet_drf10", "pet_drf_random", "labels", "brain_mask")
    for key in keys + ("lesion_mask", "params"):
        assert os.path.exists(os.path.join(os.path.dirname(a), rec[key])), key
    assert rec["t1_whole_head"] and rec["has_lesions"] and 4 <= rec["drf_random"] <= 100
    # resume: a rerun skips the finished subject (files untouched)
    marker = tmp_path / "a" / "sub-0001" / "sub-0001_pet_sd.nii.gz"
    mtime = marker.stat().st_mtime_ns
    _generate(tmp_path / "a", cache)
    assert marker.stat().st_mtime_ns == mtime
    assert b.exists()
    # re-splitting the finished cohort moves the subject in the datalist and in its params.json
    _generate(tmp_path / "a", cache, split_fractions=(0.0, 0.0, 1.0))
    datalist = json.loads(a.read_text())
    assert [r["id"] for r in datalist["test"]] == ["sub-0001"] and not datalist["training"]
    assert json.loads((tmp_path / "a" / rec["params"]).read_text())["split"] == "test"
    assert marker.stat().st_mtime_ns == mtime
    # a finished subject simulated with other features is not silently relabelled
    with pytest.raises(ValueError, match="sub-0001_params.json: simulated with t1_whole_head=True"):
        _generate(tmp_path / "a", cache, whole_head_fraction=0.0)


def test_noise_repeats_rebuild_a_finished_subject_with_independent_low_dose_scans(tmp_path, cache):
    _generate(tmp_path, cache)
    images = noise_repeats(tmp_path, "sub-0001", [10], 2, scanner_config=TINY, cache_dir=cache)
    saved = nib.load(tmp_path / "sub-0001" / "sub-0001_pet_drf10.nii.gz").get_fdata()
    noise_free = nib.load(tmp_path / "sub-0001" / "sub-0001_pet_sd_noisefree.nii.gz").get_fdata()
    np.testing.assert_allclose(images["pet_sd_noisefree"], noise_free, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(images["pet_drf10"], saved, rtol=1e-5, atol=1e-3)  # the cohort's own scan, rebuilt
    # the repeats themselves (independent, same noise level) are tested with simulate_subject's noise_realizations
    assert not np.allclose(images["pet_drf10_noise0"], images["pet_drf10_noise1"])
    assert not np.allclose(images["pet_drf10_noise0"], saved)
    other = ScannerConfig(n_angles=12, n_subsets=3, n_iterations=2)
    with pytest.raises(ValueError, match="sub-0001_pet_sd_noisefree.nii.gz: the simulator does not reproduce"):
        noise_repeats(tmp_path, "sub-0001", [10], 1, scanner_config=other, cache_dir=cache)


@pytest.mark.parametrize("num_subjects", range(3, 13))
def test_every_split_has_a_subject_from_three_subjects(num_subjects):
    plans = assign_groups_and_splits(num_subjects, 1, 0.3, (0.7, 0.1, 0.2))
    counts = {s: sum(p["split"] == s for p in plans) for s in ("training", "validation", "test")}
    assert min(counts.values()) >= 1 and sum(counts.values()) == num_subjects


def test_too_few_subjects_for_the_splits_is_a_clear_error():
    with pytest.raises(ValueError, match="num_subjects=2 is too few .* at least 3 subjects"):
        assign_groups_and_splits(2, 1, 0.3, (0.7, 0.1, 0.2))
    assert [p["split"] for p in assign_groups_and_splits(1, 1, 0.3, (1.0, 0.0, 0.0))] == ["training"]


def test_splits_disjoint_by_subject_and_stratified():
    plans = assign_groups_and_splits(60, 12345, 0.4, (0.7, 0.1, 0.2))
    by_split = {s: {p["id"] for p in plans if p["split"] == s} for s in ("training", "validation", "test")}
    assert [len(by_split[s]) for s in ("training", "validation", "test")] == [42, 6, 12]
    assert not (by_split["training"] & by_split["validation"]) and not (by_split["training"] & by_split["test"])
    assert not (by_split["validation"] & by_split["test"])
    assert sum(p["group"] == "AD" for p in plans) == 24
    for s, ids in by_split.items():
        assert any(p["group"] == "AD" for p in plans if p["id"] in ids), s
    sev = [p["ad_severity"] for p in plans if p["group"] == "AD"]
    assert min(sev) >= 0.3 and max(sev) <= 1.2
    assert plans == assign_groups_and_splits(60, 12345, 0.4, (0.7, 0.1, 0.2))


@pytest.mark.parametrize("flip_x", [False, True])
@pytest.mark.parametrize("reader", ["PydicomReader", "ITKReader"])
def test_dicom_export_reads_back_through_monai(tmp_path, flip_x, reader):
    from monai.transforms import EnsureChannelFirst, LoadImage, Orientation

    if reader == "ITKReader":
        pytest.importorskip("itk", reason="ITKReader needs itk (pip install itk-io)")
    rng = np.random.default_rng(0)
    vol = (rng.random((12, 10, 6)) * 20000).astype(np.float32)
    affine = np.array([[2.0, 0, 0, -11.0], [0, 2.5, 0, -20.0], [0, 0, 3.0, -7.5], [0, 0, 0, 1]])
    if flip_x:  # an LAS-stored volume: the exporter must still write correct LPS geometry
        affine[0, 0], affine[0, 3] = -2.0, 11.0
    mr = write_mr_series(vol / 20, affine, tmp_path / "MR", SeriesInfo(uid_entropy=["t", flip_x]))
    pet_info = SeriesInfo(
        patient_weight_kg=70.0,
        study_uid=mr["study_uid"],
        frame_of_reference_uid=mr["frame_of_reference_uid"],
        series_description="test PET",
    )
    pet = write_pet_series(vol, affine, tmp_path / "PET", pet_info, injected_dose_bq=2.5e8, half_life_s=6586.2)
    import pydicom

    ds = pydicom.dcmread(sorted((tmp_path / "PET").iterdir())[0])
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.128" and ds.Units == "BQML" and ds.Modality == "PT"
    assert ds.FrameOfReferenceUID == mr["frame_of_reference_uid"] == pet["frame_of_reference_uid"]
    assert float(ds.PatientWeight) == 70.0
    radio = ds.RadiopharmaceuticalInformationSequence[0]
    assert float(radio.RadionuclideTotalDose) == 2.5e8 and float(radio.RadionuclideHalfLife) == 6586.2
    # reference: the volume reoriented to RAS
    ref = Orientation("RAS")(EnsureChannelFirst(channel_dim="no_channel")(_meta(vol, affine)))
    img = LoadImage(reader=reader, image_only=True)(str(tmp_path / "PET"))
    img = Orientation("RAS")(EnsureChannelFirst()(img))
    np.testing.assert_allclose(np.asarray(img.affine), np.asarray(ref.affine), atol=1e-4)
    tol = vol.max() / 32767 * 0.51  # half a rescale step of the brightest slice
    np.testing.assert_allclose(np.asarray(img[0]), np.asarray(ref[0]), atol=tol)


def _meta(vol, affine):
    from monai.data import MetaTensor

    return MetaTensor(vol, affine=affine)
