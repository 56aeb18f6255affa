"""Bad inputs and failures: each study fails alone with a clear message; inputs stay untouched; no partial outputs."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pytest
from inference_testing import (
    TINY_4_LEVELS,
    blob_volume,
    grid_affine,
    nifti_study,
    run_cli,
    run_failing,
    run_workflow,
    save_nifti,
    save_tiny_weights,
    snapshot,
    study_status,
    summary,
    write_datalist,
    write_dicom_series,
)

from scripts.enhance import StudiesFailedError
from scripts.io import DatalistError, atomic_directory, atomic_path, load_datalist, remove_stale_temporaries, writers

SHAPE = (20, 24, 10)


def _bad_studies(folder):
    """One good study and one study per bad input: {id: (record, expected words in the message)}."""
    affine, pet = grid_affine(), blob_volume(SHAPE)
    good = nifti_study(folder, "good")
    corrupt = folder / "corrupt.nii.gz"
    corrupt.write_bytes(gzip.compress(b"this is not a NIfTI header" * 20))
    jpeg = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 4  # a JPEG renamed .nii.gz
    (folder / "photo.nii.gz").write_bytes(jpeg)
    (folder / "photo_t1.nii.gz").write_bytes(jpeg)
    nan_pet = pet.copy()
    nan_pet[3, 4, 5] = np.nan
    far_affine = grid_affine(origin=(500.0, 500.0, 500.0))
    studies = {
        "missing": ({"pet": str(folder / "nowhere.nii.gz")}, ["nowhere.nii.gz", "no such file"]),
        "corrupt": ({"pet": str(corrupt)}, ["corrupt.nii.gz", "not NIfTI or DICOM", "gzip-compressed"]),
        "jpeg_pet": (
            {"pet": str(folder / "photo.nii.gz")},
            ["photo.nii.gz: PET is not NIfTI or DICOM", "a JPEG image"],
        ),
        "jpeg_mri": (
            {"pet": good["pet"], "mri": str(folder / "photo_t1.nii.gz")},
            [f"{folder / 'photo_t1.nii.gz'}: MRI is not NIfTI or DICOM", "a JPEG image"],
        ),
        "flat2d": (
            {"pet": str(save_nifti(pet[:, :, 0], affine, folder / "flat2d.nii.gz"))},
            ["expected a 3D", "(20, 24)"],
        ),
        "dynamic4d": (
            {"pet": str(save_nifti(np.stack([pet, pet], -1), affine, folder / "dynamic4d.nii.gz"))},
            ["expected a 3D", "(20, 24, 10, 2)"],
        ),
        "nan": ({"pet": str(save_nifti(nan_pet, affine, folder / "nan.nii.gz"))}, ["NaN/Inf", "nan.nii.gz"]),
        "zero": ({"pet": str(save_nifti(0 * pet, affine, folder / "zero.nii.gz"))}, ["all zero"]),
        "negative": ({"pet": str(save_nifti(-pet, affine, folder / "negative.nii.gz"))}, ["no positive voxels"]),
        "apart": (
            {"pet": good["pet"], "mri": str(save_nifti(blob_volume(SHAPE), far_affine, folder / "far_t1.nii.gz"))},
            [f"{folder / 'far_t1.nii.gz'}: PET and MRI do not overlap"],
        ),
        "gap": ({"pet": str(write_dicom_series(pet, folder / "gap_dicom", skip_slices=(4,)))}, ["missing slice"]),
        "uneven": (
            {"pet": str(write_dicom_series(pet, folder / "uneven_dicom", z_offsets={5: 1.0, 6: 1.0}))},
            ["inconsistent slice spacing"],
        ),
        "swapped": (
            {"pet": str(write_dicom_series(pet, folder / "t1_dicom", modality="MR"))},
            ["expected a PET series (Modality PT), got Modality MR"],
        ),
        "nopet": ({"mri": good["mri"]}, ['no "pet"']),
        "overwrite": (
            {"pet": str(save_nifti(pet, affine, folder / "overwrite" / "overwrite_enhanced.nii.gz"))},
            ["refusing to write", "overwrite"],
        ),
        "suv_nifti": ({"pet": good["pet"], "output_units_check": True}, []),  # placeholder, checked separately
    }
    studies.pop("suv_nifti")
    records = [{**good, "id": "good"}] + [{**record, "id": sid} for sid, (record, _) in studies.items()]
    return records, {sid: words for sid, (_, words) in studies.items()}


@pytest.fixture(scope="module")
def bad_batch(tmp_path_factory, weights):
    folder = tmp_path_factory.mktemp("bad")
    records, expected = _bad_studies(folder)
    datalist = write_datalist(records, folder / "studies.json")
    before = snapshot([folder])
    error = run_failing(datalist, folder, weights)  # outputs next to the inputs: the "overwrite" study is refused
    assert isinstance(error, StudiesFailedError), error
    return {"folder": folder, "expected": expected, "error": error, "before": before, "after": snapshot([folder])}


BAD_IDS = [
    "missing",
    "corrupt",
    "jpeg_pet",
    "jpeg_mri",
    "flat2d",
    "dynamic4d",
    "nan",
    "zero",
    "negative",
    "apart",
    "gap",
    "uneven",
    "swapped",
    "nopet",
    "overwrite",
]


@pytest.mark.parametrize("study_id", BAD_IDS)
def test_bad_input_fails_alone_with_a_clear_message(bad_batch, study_id):
    status = study_status(bad_batch["folder"])
    assert status[study_id]["status"] == "failed"
    message = status[study_id]["message"]
    assert message.startswith(f"study '{study_id}'"), message
    for words in bad_batch["expected"][study_id]:
        assert words in message, message
    assert message in str(bad_batch["error"])
    assert not (bad_batch["folder"] / study_id / f"{study_id}_enhanced.nii.gz").exists() or study_id == "overwrite"


def test_batch_goes_on_after_failures_and_inputs_are_untouched(bad_batch):
    result = summary(bad_batch["folder"])
    assert result["ok"] == 1 and result["failed"] == len(BAD_IDS)
    assert (bad_batch["folder"] / "good" / "good_enhanced.nii.gz").is_file()
    written = {"summary.json", "logs", "good"}  # logs: the run log (tracebacks of unexpected errors)
    changed = {k for k in bad_batch["before"] if bad_batch["before"][k] != bad_batch["after"].get(k)}
    assert not changed, changed
    new = {os.path.relpath(k, bad_batch["folder"]).split(os.sep)[0] for k in bad_batch["after"]} - {
        os.path.relpath(k, bad_batch["folder"]).split(os.sep)[0] for k in bad_batch["before"]
    }
    assert new == written, new


def test_four_d_with_a_singleton_frame_is_accepted(tmp_path, weights):
    pet = save_nifti(blob_volume(SHAPE)[..., None], grid_affine(), tmp_path / "single_frame.nii.gz")
    run_workflow(write_datalist([{"pet": str(pet)}], tmp_path / "studies.json"), tmp_path / "out", weights)
    assert nib.load(str(tmp_path / "out" / "single_frame" / "single_frame_enhanced.nii.gz")).shape == SHAPE


def test_suv_for_nifti_without_weight_is_refused(tmp_path, weights):
    datalist = write_datalist([nifti_study(tmp_path, "n1")], tmp_path / "studies.json")
    error = run_failing(datalist, tmp_path / "out", weights, output_units="suv")
    assert isinstance(error, StudiesFailedError) and "patient_weight_kg" in str(error)


def test_datalist_problems(tmp_path):
    with pytest.raises(DatalistError, match="does not exist"):
        load_datalist(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text('[{"pet": "a.nii.gz",}]')
    with pytest.raises(DatalistError, match="not valid JSON"):
        load_datalist(tmp_path / "bad.json")
    (tmp_path / "dict.json").write_text('{"pet": "a.nii.gz"}')
    with pytest.raises(DatalistError, match="JSON list"):
        load_datalist(tmp_path / "dict.json")
    (tmp_path / "ok.json").write_text(
        '[{"pet": "x/a_pet.nii.gz"}, {"pet": "b/", "id": "../up"}, {"pet": "x/a_pet.nii"}]'
    )
    studies = load_datalist(tmp_path / "ok.json")
    assert studies[0]["id"] == "a_pet" and studies[0]["pet"] == str(tmp_path / "x" / "a_pet.nii.gz")
    assert "cannot name an output folder" in studies[1]["error"]
    assert "duplicate id 'a_pet'" in studies[2]["error"]


def test_interrupted_write_leaves_no_partial_output(tmp_path, weights, monkeypatch):
    datalist = write_datalist([nifti_study(tmp_path, "s1")], tmp_path / "studies.json")

    def failing_save(image, path):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(writers.nib, "save", failing_save)
    error = run_failing(datalist, tmp_path / "out", weights)
    assert isinstance(error, StudiesFailedError) and "disk full" in str(error)
    assert os.listdir(tmp_path / "out" / "s1") == []
    assert summary(tmp_path / "out")["studies"][0]["status"] == "failed"


def test_atomic_writers_clean_up_on_error(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "a.nii.gz") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("boom")
    with pytest.raises(RuntimeError):
        with atomic_directory(tmp_path / "series") as tmp:
            (tmp / "IM1.dcm").write_bytes(b"x")
            raise RuntimeError("boom")
    (tmp_path / "series").mkdir()
    (tmp_path / "series" / "old.dcm").write_bytes(b"old")
    with atomic_directory(tmp_path / "series") as tmp:
        (tmp / "new.dcm").write_bytes(b"new")
    assert sorted(os.listdir(tmp_path)) == ["series"] and os.listdir(tmp_path / "series") == ["new.dcm"]


def test_killed_writer_leaves_no_final_file(tmp_path):
    """SIGKILL in the middle of a write: only a hidden temporary remains, and the next run removes it."""
    script = (  # loads writers.py alone (the package would import MONAI: slow)
        "import importlib.util, sys, time\n"
        "spec = importlib.util.spec_from_file_location('writers', sys.argv[1])\n"
        "writers = importlib.util.module_from_spec(spec); spec.loader.exec_module(writers)\n"
        "atomic_path = writers.atomic_path\n"
        "with atomic_path(sys.argv[2]) as tmp:\n"
        "    f = open(tmp, 'wb'); f.write(b'x' * 1000); f.flush(); print('writing', flush=True); time.sleep(60)\n"
    )
    target = tmp_path / "s1_enhanced.nii.gz"
    process = subprocess.Popen(
        [sys.executable, "-c", script, writers.__file__, str(target)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout.readline().strip() == "writing"
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    assert not target.exists()
    leftovers = os.listdir(tmp_path)
    assert len(leftovers) == 1 and leftovers[0].startswith(".s1_enhanced.nii.gz.tmp-")
    assert remove_stale_temporaries(tmp_path) and os.listdir(tmp_path) == []


def test_large_1mm_volume_goes_through(tmp_path):
    """A 197 x 233 x 189 (1 mm MNI) study runs through the whole pipeline; slice_batch_size bounds the batch.

    The network runs at 2 mm (99 x 117 x 95 voxels). The test network has 4 levels like the shipped one, so its middle
    attention works at 1/8 resolution (13 x 15 tokens here); the 2-level test network would attend over 50 x 59
    tokens: (50 * 59) ** 2 floats per slice.
    """
    weights = save_tiny_weights(tmp_path / "model.pt", **{k.split("#")[1]: v for k, v in TINY_4_LEVELS.items()})
    shape = (197, 233, 189)
    pet = np.zeros(shape, np.float32)
    pet[40:160, 40:190, 30:160] = 1000.0
    pet += np.random.default_rng(0).random(shape, dtype=np.float32)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = (-98, -134, -72)
    path = save_nifti(pet, affine, tmp_path / "mni1mm.nii")
    start = time.perf_counter()
    run_workflow(
        write_datalist([{"pet": str(path)}], tmp_path / "studies.json"),
        tmp_path / "out",
        weights,
        num_inference_steps=1,
        slice_batch_size=64,
        **TINY_4_LEVELS,
    )
    result = summary(tmp_path / "out")["studies"][0]
    assert result["status"] == "ok" and result["network_calls"] == 2  # 189 slices at 1 mm = 95 at 2 mm / 64 per call
    assert nib.load(str(tmp_path / "out" / "mni1mm" / "mni1mm_enhanced.nii.gz")).shape == shape
    print(f"1 mm volume: {time.perf_counter() - start:.1f} s")


# ---- the command line: exit status and messages ----


def test_cli_batch_with_a_broken_study_exits_non_zero(tmp_path, weights):
    good = nifti_study(tmp_path, "good", with_mri=False)
    datalist = write_datalist([good, {"id": "broken", "pet": "missing_pet.nii.gz"}], tmp_path / "studies.json")
    result = run_cli(datalist, tmp_path / "out", weights)
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert output.count("missing_pet.nii.gz: no such file or folder") == 1  # once, as it fails
    assert output.count("1 of 2 studies failed") == 1  # the summary once, at the end
    assert "Traceback" not in output and "terminating due to exception" not in output  # not shown as a crash
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ERROR: 1 of 2 studies failed") and str(tmp_path / "out" / "summary.json") in last
    (log,) = (tmp_path / "out" / "logs").glob("run-*.log")  # the details stay in the run's log file
    assert "missing_pet.nii.gz" in log.read_text()
    status = study_status(tmp_path / "out")
    assert status["good"]["status"] == "ok" and status["broken"]["status"] == "failed"


def test_summary_keeps_earlier_runs(tmp_path, weights):
    first = nifti_study(tmp_path, "first", with_mri=False)
    second = nifti_study(tmp_path, "second", with_mri=False)
    run_workflow(write_datalist([first], tmp_path / "one.json"), tmp_path / "out", weights)
    run_workflow(write_datalist([second], tmp_path / "two.json"), tmp_path / "out", weights)
    result = summary(tmp_path / "out")
    assert [s["id"] for s in result["studies"]] == ["second"]
    assert [[s["id"] for s in run["studies"]] for run in result["earlier_runs"]] == [["first"]]
    assert "earlier_runs" not in result["earlier_runs"][0] and result["earlier_runs"][0]["started"]
    assert os.path.isfile(result["log"])


def test_cli_invalid_datalist_exits_non_zero(tmp_path, weights):
    (tmp_path / "studies.json").write_text("[{'pet': 'single quotes are not JSON'}]")
    result = run_cli(tmp_path / "studies.json", tmp_path / "out", weights)
    assert result.returncode != 0 and "is not valid JSON" in result.stderr


def test_cli_missing_weights_says_how_to_get_them(tmp_path):
    datalist = write_datalist([nifti_study(tmp_path, "s1", with_mri=False)], tmp_path / "studies.json")
    result = run_cli(datalist, tmp_path / "out", tmp_path / "no_model.pt")
    assert result.returncode != 0 and "train.json" in result.stderr and "no_model.pt" in result.stderr
    assert not (tmp_path / "out" / "s1").exists()


def test_cli_unwritable_output_dir(tmp_path, weights):
    datalist = write_datalist([nifti_study(tmp_path, "s1", with_mri=False)], tmp_path / "studies.json")
    (tmp_path / "a_file").write_text("not a folder")
    result = run_cli(datalist, tmp_path / "a_file" / "out", weights)
    assert result.returncode != 0 and "is not writable" in result.stderr
    if os.geteuid() != 0:  # root writes anywhere: a read-only folder only stops other users
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        result = run_cli(datalist, locked, weights)
        assert result.returncode != 0 and "is not writable" in result.stderr
