"""Helpers for the inference / clinical I/O tests: a tiny network, synthetic studies (NIfTI and DICOM), workflows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, PositronEmissionTomographyImageStorage, generate_uid

from scripts.constants import F18_HALF_LIFE_S

torch.set_num_threads(1)  # the test machine's cores are shared; more threads only contend

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundle"
CONFIG = BUNDLE / "configs" / "inference.json"
META = BUNDLE / "configs" / "metadata.json"
LOGGING = BUNDLE / "configs" / "logging.conf"

TINY_NETWORK = {
    "network_def#base_channels": 8,
    "network_def#channel_mult": [1, 2],
    "network_def#num_res_blocks": 1,
    "network_def#attention_levels": [False, True],
    "network_def#norm_num_groups": 4,
    "network_def#num_heads": 1,
    "num_inference_steps": 2,
    "slice_batch_size": 8,
}

#: a tiny 4-level network for big volumes: its only attention (the middle block) works at 1/8 resolution
TINY_4_LEVELS = {
    "network_def#base_channels": 4,
    "network_def#channel_mult": [1, 1, 1, 1],
    "network_def#attention_levels": [False, False, False, False],
}


def save_tiny_weights(path: Path, **architecture) -> Path:
    """Random-init tiny M2DiffNet (:data:`TINY_NETWORK`, or the given ``network_def`` keys) saved as a state_dict.

    Its ``context_slices`` is inference.json's unless given, so the weights load into the shipped configuration.
    """
    from scripts.network import M2DiffNet

    torch.manual_seed(0)
    settings = {k.split("#")[1]: v for k, v in TINY_NETWORK.items() if k.startswith("network_def#")}
    settings["context_slices"] = json.loads(CONFIG.read_text())["network_def"]["context_slices"]
    network = M2DiffNet(**{**settings, **architecture}, dropout=0.0)
    torch.save(network.state_dict(), path)
    return path


def blob_volume(shape=(20, 24, 10), peak=1000.0, seed=0, background=30.0) -> np.ndarray:
    """A positive 'brain-like' blob plus noise, float32."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    radius2 = sum(g**2 for g in grids)
    return (peak * np.exp(-2 * radius2) + background * rng.random(shape)).astype(np.float32)


def grid_affine(spacing=(2.0, 2.0, 2.5), origin=(-20.0, -24.0, -12.0)) -> np.ndarray:
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    return affine


def save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), affine), str(path))
    return path


def nifti_study(folder: Path, study_id="s1", with_mri=True, scale=1.0, shape=(20, 24, 10)) -> dict:
    """Write a synthetic PET (and MRI) NIfTI study; returns its datalist record (absolute paths)."""
    folder.mkdir(parents=True, exist_ok=True)
    affine = grid_affine()
    record = {
        "id": study_id,
        "pet": str(save_nifti(scale * blob_volume(shape), affine, folder / f"{study_id}_pet.nii.gz")),
    }
    if with_mri:
        mri = blob_volume(shape, peak=400.0, seed=1, background=5.0)
        record["mri"] = str(save_nifti(mri, affine, folder / f"{study_id}_t1.nii.gz"))
    return record


def write_datalist(records: list, path: Path) -> Path:
    path.write_text(json.dumps(records, indent=1))
    return path


def write_dicom_series(
    volume: np.ndarray,
    folder: Path,
    modality: str = "PT",
    spacing=(2.0, 2.0, 2.5),
    origin=(-20.0, -24.0, -12.0),
    skip_slices=(),
    z_offsets: dict | None = None,
    weight_kg: float = 70.0,
    dose_bq: float = 200e6,
    injection_time: str = "100000",
    series_time: str = "110000",
    decay_correction: str = "START",
    units: str = "BQML",
) -> Path:
    """Write ``volume`` ``(columns, rows, slices)`` as an axial DICOM series (LPS, IOP = 1\\0\\0\\0\\1\\0).

    PET slices get their own RescaleSlope and a radiopharmaceutical header for SUV. ``skip_slices`` leaves slices out
    (a missing slice); ``z_offsets`` {k: mm} shifts slice k (uneven spacing).
    """
    folder.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    columns, rows, slices = volume.shape
    for k in range(slices):
        if k in skip_slices:
            continue
        ds = Dataset()
        ds.SOPClassUID = PositronEmissionTomographyImageStorage if modality == "PT" else MRImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.Modality, ds.PatientName, ds.PatientID = modality, "Test^Phantom", "TEST01"
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = "20250102"
        ds.SeriesTime, ds.AcquisitionTime = series_time, series_time
        ds.SeriesNumber, ds.InstanceNumber = 3, k + 1
        ds.SeriesDescription = f"test {modality}"
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        z = origin[2] + k * spacing[2] + (z_offsets or {}).get(k, 0.0)
        ds.ImagePositionPatient = [origin[0], origin[1], z]
        ds.PixelSpacing = [spacing[1], spacing[0]]  # row spacing (between rows), column spacing
        ds.SliceThickness = spacing[2]
        ds.Rows, ds.Columns = rows, columns
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        plane = volume[:, :, k].T.astype(np.float64)
        if modality == "PT":
            slope = max(float(plane.max()), 1e-6) / 65535.0
            ds.Units, ds.DecayCorrection, ds.CorrectedImage = units, decay_correction, ["DECY", "ATTN"]
            ds.PatientWeight = weight_kg
            drug = Dataset()
            drug.RadionuclideTotalDose, drug.RadionuclideHalfLife = dose_bq, F18_HALF_LIFE_S
            drug.RadiopharmaceuticalStartTime = injection_time
            ds.RadiopharmaceuticalInformationSequence = DicomSequence([drug])
        else:
            slope = 1.0
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.10g}", "0"
        ds.PixelData = np.round(plane / float(f"{slope:.10g}")).clip(0, 65535).astype(np.uint16).tobytes()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        ds.save_as(folder / f"slice{k:03d}.dcm", enforce_file_format=True)
    return folder


def dicom_affine(spacing=(2.0, 2.0, 2.5), origin=(-20.0, -24.0, -12.0)) -> np.ndarray:
    """RAS affine of :func:`write_dicom_series`'s grid (LPS origin, x and y negated)."""
    lps = np.diag([*spacing, 1.0])
    lps[:3, 3] = origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def make_workflow(datalist: Path, output_dir: Path, weights: Path, **overrides):
    """ConfigWorkflow of bundle/configs/inference.json with the tiny network and the given overrides."""
    from monai.bundle import ConfigWorkflow

    settings = {**TINY_NETWORK, "datalist": str(datalist), "output_dir": str(output_dir), "ckpt_path": str(weights)}
    settings.update(overrides)
    return ConfigWorkflow(
        workflow_type="inference",
        config_file=str(CONFIG),
        meta_file=str(META),
        logging_file=str(LOGGING),
        bundle_root=str(BUNDLE),
        **settings,
    )


def run_workflow(datalist: Path, output_dir: Path, weights: Path, **overrides):
    workflow = make_workflow(datalist, output_dir, weights, **overrides)
    workflow.initialize()
    try:
        workflow.run()
    finally:
        workflow.finalize()
    return workflow


def run_failing(datalist: Path, output_dir: Path, weights: Path, **overrides) -> BaseException:
    """Run a workflow that must fail; returns the error behind MONAI's ``RuntimeError("Failed to evaluate ...")``."""
    try:
        run_workflow(datalist, output_dir, weights, **overrides)
    except Exception as exc:  # noqa: B902
        while exc.__cause__ is not None and isinstance(exc, RuntimeError) and "Failed to evaluate" in str(exc):
            exc = exc.__cause__
        return exc
    raise AssertionError("the workflow was expected to fail")


def run_cli(datalist: Path, output_dir: Path, weights: Path, *extra: str, cwd: Path = REPO):
    """``python -m monai.bundle run`` from the repository root; returns the CompletedProcess."""
    args = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--bundle_root",
        "bundle",
        "--config_file",
        "bundle/configs/inference.json",
        "--datalist",
        str(datalist),
        "--output_dir",
        str(output_dir),
        "--ckpt_path",
        str(weights),
    ]
    for key, value in TINY_NETWORK.items():
        args += [f"--{key}", json.dumps(value).replace("false", "False").replace("true", "True")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(args + list(extra), cwd=cwd, capture_output=True, text=True, env=env, timeout=300)


def snapshot(paths) -> dict:
    """(size, mtime, bytes hash) of every file under the given paths, to check inputs are untouched."""
    import hashlib

    state = {}
    for root in paths:
        root = Path(root)
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            state[str(f)] = (f.stat().st_size, f.stat().st_mtime_ns, hashlib.sha1(f.read_bytes()).hexdigest())
    return state


def summary(output_dir: Path) -> dict:
    return json.loads((Path(output_dir) / "summary.json").read_text())


def study_status(output_dir: Path) -> dict:
    return {s["id"]: s for s in summary(output_dir)["studies"]}


def dicom_values(folder: Path) -> np.ndarray:
    """Stack a series with plain pydicom in slice-position order, ``(columns, rows, slices)``."""
    datasets = [pydicom.dcmread(p) for p in sorted(Path(folder).iterdir())]
    datasets.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    return np.stack([(d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept)).T for d in datasets], -1)
