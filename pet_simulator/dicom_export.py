"""Export simulated volumes as DICOM series: a PET series (PET Image Storage, BQML) and an MR series.

Both series share one StudyInstanceUID and FrameOfReferenceUID. Geometry is written in LPS (DICOM) from a RAS
NIfTI-style affine; in-plane axes are flipped where needed so ImageOrientationPatient is the usual axial
``[1, 0, 0, 0, 1, 0]`` for a RAS-aligned grid. One file per axial slice, int16 pixels with a per-slice RescaleSlope.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from scripts.constants import F18_HALF_LIFE_S, LPS_TO_RAS
from scripts.io.dicom import encode_int16
from scripts.io.writers import atomic_path

__all__ = ["write_pet_series", "write_mr_series", "export_subject", "new_uid"]

PET_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.128"
MR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.4"


def new_uid(*entropy: object) -> str:
    """A DICOM UID; deterministic when ``entropy`` is given (pydicom ``generate_uid`` with entropy sources)."""
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[str(e) for e in entropy] if entropy else None)


def _lps_slices(volume: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (volume, LPS affine) with in-plane axes flipped so the first two axes point to +L and +P."""
    if volume.ndim != 3:
        raise ValueError(f"expected a 3D volume (X, Y, Z), got shape {volume.shape}")
    aff = LPS_TO_RAS @ np.asarray(affine, dtype=np.float64)  # RAS -> LPS (the matrix is its own inverse)
    vol = volume
    for axis in (0, 1):
        if aff[axis, axis] < 0:
            n = vol.shape[axis]
            aff = aff.copy()
            aff[:3, 3] = aff[:3, 3] + (n - 1) * aff[:3, axis]
            aff[:3, axis] = -aff[:3, axis]
            vol = np.flip(vol, axis=axis)
    return np.ascontiguousarray(vol), aff


def _ds(value: float) -> str:
    from pydicom.valuerep import format_number_as_ds

    return format_number_as_ds(float(value) + 0.0)  # + 0.0 turns -0.0 into 0.0


def _base_dataset(
    sop_class: str,
    modality: str,
    *,
    study_uid: str,
    series_uid: str,
    frame_of_reference_uid: str,
    series_number: int,
    series_description: str,
    patient_id: str,
    patient_name: str,
    patient_weight_kg: float | None,
    study_datetime: _dt.datetime,
):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.Modality = modality
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    if patient_weight_kg is not None:
        ds.PatientWeight = _ds(patient_weight_kg)
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.StudyDate = study_datetime.strftime("%Y%m%d")
    ds.StudyTime = study_datetime.strftime("%H%M%S")
    ds.SeriesDate = ds.StudyDate
    ds.SeriesTime = ds.StudyTime
    ds.ContentDate = ds.StudyDate
    ds.ContentTime = ds.StudyTime
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.StudyDescription = "Simulated brain FDG-PET/MR (M2Diff bundle)"
    ds.SeriesNumber = int(series_number)
    ds.SeriesDescription = series_description
    ds.Manufacturer = "M2Diff simulator"
    ds.BodyPartExamined = "BRAIN"
    ds.PatientPosition = "HFS"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = "0"
    ds.BurnedInAnnotation = "NO"
    return ds


def _series_uids(uid_entropy, study_uid, frame_of_reference_uid, series_uid, kind: str, description: str):
    """Study, frame-of-reference and series UIDs: the given ones, else new (deterministic with ``uid_entropy``)."""
    ent = list(uid_entropy) if uid_entropy is not None else None

    def make(*tag: object) -> str:
        return new_uid(*ent, *tag) if ent else new_uid()

    return study_uid or make("study"), frame_of_reference_uid or make("for"), series_uid or make(kind, description)


def _write_slices(
    template,
    volume: np.ndarray,
    affine: np.ndarray,
    out_dir: Path,
    prefix: str,
    uid_entropy: Sequence[object] | None,
    per_slice_extra=None,
) -> list[str]:
    """Write one file per axial slice from a base dataset; returns the SOPInstanceUIDs."""
    import copy

    vol, aff = _lps_slices(np.asarray(volume, dtype=np.float64), affine)
    nx, ny, nz = vol.shape
    col_step, row_step = aff[:3, 0], aff[:3, 1]  # along columns (i) and along rows (j)
    dx, dy = np.linalg.norm(col_step), np.linalg.norm(row_step)
    slice_step = aff[:3, 2]
    dz = float(np.linalg.norm(slice_step))
    out_dir.mkdir(parents=True, exist_ok=True)
    template.Rows, template.Columns = int(ny), int(nx)
    template.PixelSpacing = [_ds(dy), _ds(dx)]
    template.SliceThickness = _ds(dz)
    template.SpacingBetweenSlices = _ds(dz)
    template.ImageOrientationPatient = [_ds(v) for v in (*(col_step / dx), *(row_step / dy))]
    sop_uids = []
    for k in range(nz):
        ds = copy.deepcopy(template)
        sop_uid = new_uid(*uid_entropy, prefix, k) if uid_entropy is not None else new_uid()
        ds.SOPInstanceUID = sop_uid
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.InstanceNumber = k + 1
        pos = aff[:3, :3] @ np.array([0.0, 0.0, k]) + aff[:3, 3]
        ds.ImagePositionPatient = [_ds(v) for v in pos]
        ds.SliceLocation = _ds(pos[2])
        plane = vol[:, :, k].T  # (rows = j, columns = i)
        pixels, ds.RescaleSlope = encode_int16(plane)
        ds.SmallestImagePixelValue = int(pixels.min())
        ds.LargestImagePixelValue = int(pixels.max())
        ds["SmallestImagePixelValue"].VR = "SS"
        ds["LargestImagePixelValue"].VR = "SS"
        ds.PixelData = pixels.tobytes()
        if per_slice_extra is not None:
            per_slice_extra(ds, k)
        path = out_dir / f"{prefix}{k + 1:04d}.dcm"
        with atomic_path(path) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
        sop_uids.append(sop_uid)
    return sop_uids


def write_pet_series(
    volume_bq_ml: np.ndarray,
    affine: np.ndarray,
    out_dir: str | os.PathLike,
    *,
    patient_weight_kg: float,
    injected_dose_bq: float,
    half_life_s: float = F18_HALF_LIFE_S,
    series_description: str = "PET Brain FDG (simulated)",
    study_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    series_uid: str | None = None,
    series_number: int = 1,
    patient_id: str = "SIM0001",
    patient_name: str = "SIMULATED^SUBJECT",
    scan_start: _dt.datetime | None = None,
    uptake_time_s: float = 3600.0,
    frame_duration_s: float = 600.0,
    reconstruction_method: str = "OSEM 4i21s PSF 3mm",
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY"),
    uid_entropy: Sequence[object] | None = None,
) -> dict:
    """Write a PET series (PET Image Storage, Units BQML, decay-corrected to the scan start).

    Args:
        volume_bq_ml: (X, Y, Z) activity concentration in Bq/ml, axial = last axis.
        affine: (4, 4) voxel-to-world RAS affine (NIfTI convention) of ``volume_bq_ml``.
        out_dir: output folder (created); files ``PT0001.dcm`` ... one per slice.
        patient_weight_kg: PatientWeight.
        injected_dose_bq: RadionuclideTotalDose (at RadiopharmaceuticalStartDateTime).
        half_life_s: RadionuclideHalfLife.
        series_description: SeriesDescription.
        study_uid: StudyInstanceUID (new if None).
        frame_of_reference_uid: FrameOfReferenceUID (new if None); pass the MR's to share it.
        series_uid: SeriesInstanceUID (new if None).
        series_number: SeriesNumber.
        patient_id: PatientID.
        patient_name: PatientName.
        scan_start: acquisition (series) start; default 2024-01-01 10:00:00 (deterministic).
        uptake_time_s: injection to scan start, sets RadiopharmaceuticalStartDateTime.
        frame_duration_s: ActualFrameDuration.
        reconstruction_method: ReconstructionMethod.
        image_type: ImageType (e.g. ``("DERIVED", "SECONDARY")`` for an enhanced image).
        uid_entropy: values that make all UIDs deterministic (same entropy, same UIDs).

    Returns:
        dict with ``study_uid``, ``series_uid``, ``frame_of_reference_uid``, ``sop_instance_uids``, ``out_dir``.
    """
    from pydicom.dataset import Dataset

    study_uid, frame_of_reference_uid, series_uid = _series_uids(
        uid_entropy, study_uid, frame_of_reference_uid, series_uid, "pet-series", series_description
    )
    start = scan_start or _dt.datetime(2024, 1, 1, 10, 0, 0)
    injection = start - _dt.timedelta(seconds=float(uptake_time_s))
    ds = _base_dataset(
        PET_SOP_CLASS,
        "PT",
        study_uid=study_uid,
        series_uid=series_uid,
        frame_of_reference_uid=frame_of_reference_uid,
        series_number=series_number,
        series_description=series_description,
        patient_id=patient_id,
        patient_name=patient_name,
        patient_weight_kg=patient_weight_kg,
        study_datetime=start,
    )
    ds.ImageType = list(image_type)
    ds.Units = "BQML"
    ds.CountsSource = "EMISSION"
    ds.SeriesType = ["STATIC", "IMAGE"]
    ds.CorrectedImage = ["DECY", "ATTN", "SCAT", "RAN", "NORM"]
    ds.DecayCorrection = "START"
    ds.RandomsCorrectionMethod = "DLYD"
    ds.AttenuationCorrectionMethod = "MR-based (simulated mu-map)"
    ds.ScatterCorrectionMethod = "model-based (simulated)"
    ds.ReconstructionMethod = reconstruction_method
    ds.NumberOfSlices = int(np.asarray(volume_bq_ml).shape[2])
    ds.AcquisitionDate = start.strftime("%Y%m%d")
    ds.AcquisitionTime = start.strftime("%H%M%S")
    ds.FrameReferenceTime = "0"
    ds.ActualFrameDuration = int(round(frame_duration_s * 1000))
    decay_during = float(np.log(2) * frame_duration_s / half_life_s)
    ds.DecayFactor = _ds(decay_during / (1 - np.exp(-decay_during)))
    ds.PatientOrientationCodeSequence = []
    radio = Dataset()
    radio.Radiopharmaceutical = "Fluorodeoxyglucose"
    radio.RadiopharmaceuticalStartTime = injection.strftime("%H%M%S")
    radio.RadiopharmaceuticalStartDateTime = injection.strftime("%Y%m%d%H%M%S")
    radio.RadionuclideTotalDose = _ds(injected_dose_bq)
    radio.RadionuclideHalfLife = _ds(half_life_s)
    radio.RadionuclidePositronFraction = "0.9673"
    code = Dataset()
    code.CodeValue = "C-111A1"
    code.CodingSchemeDesignator = "SRT"
    code.CodeMeaning = "^18^Fluorine"
    radio.RadionuclideCodeSequence = [code]
    ds.RadiopharmaceuticalInformationSequence = [radio]

    def _extra(d, k):
        d.ImageIndex = k + 1

    sops = _write_slices(
        ds, volume_bq_ml, affine, Path(out_dir), "PT", uid_entropy and [*uid_entropy, series_uid], _extra
    )
    return {
        "study_uid": study_uid,
        "series_uid": series_uid,
        "frame_of_reference_uid": frame_of_reference_uid,
        "sop_instance_uids": sops,
        "out_dir": str(out_dir),
    }


def write_mr_series(
    volume: np.ndarray,
    affine: np.ndarray,
    out_dir: str | os.PathLike,
    *,
    series_description: str = "T1w MPRAGE (simulated)",
    study_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    series_uid: str | None = None,
    series_number: int = 2,
    patient_id: str = "SIM0001",
    patient_name: str = "SIMULATED^SUBJECT",
    patient_weight_kg: float | None = None,
    scan_start: _dt.datetime | None = None,
    uid_entropy: Sequence[object] | None = None,
) -> dict:
    """Write a T1-weighted MR series (MR Image Storage) on the same geometry conventions as the PET.

    Args:
        volume: (X, Y, Z) MR intensities (arbitrary units), axial = last axis.
        affine: (4, 4) voxel-to-world RAS affine.
        out_dir: output folder; files ``MR0001.dcm`` ... one per slice.
        series_description: SeriesDescription.
        study_uid: StudyInstanceUID (pass the PET's to build one study).
        frame_of_reference_uid: FrameOfReferenceUID (pass the PET's: co-registered).
        series_uid: SeriesInstanceUID (new if None).
        series_number: SeriesNumber.
        patient_id: PatientID.
        patient_name: PatientName.
        patient_weight_kg: PatientWeight (optional).
        scan_start: series date/time (default 2024-01-01 10:00:00).
        uid_entropy: values that make all UIDs deterministic.

    Returns:
        dict with ``study_uid``, ``series_uid``, ``frame_of_reference_uid``, ``sop_instance_uids``, ``out_dir``.
    """
    study_uid, frame_of_reference_uid, series_uid = _series_uids(
        uid_entropy, study_uid, frame_of_reference_uid, series_uid, "mr-series", series_description
    )
    start = scan_start or _dt.datetime(2024, 1, 1, 10, 0, 0)
    ds = _base_dataset(
        MR_SOP_CLASS,
        "MR",
        study_uid=study_uid,
        series_uid=series_uid,
        frame_of_reference_uid=frame_of_reference_uid,
        series_number=series_number,
        series_description=series_description,
        patient_id=patient_id,
        patient_name=patient_name,
        patient_weight_kg=patient_weight_kg,
        study_datetime=start,
    )
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.ScanningSequence = "GR"
    ds.SequenceVariant = ["SP", "MP"]
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "3D"
    ds.RepetitionTime = "2300"
    ds.EchoTime = "2.98"
    ds.InversionTime = "900"
    ds.EchoTrainLength = "1"
    ds.MagneticFieldStrength = "3"
    ds.AcquisitionDate = start.strftime("%Y%m%d")
    ds.AcquisitionTime = start.strftime("%H%M%S")
    sops = _write_slices(ds, volume, affine, Path(out_dir), "MR", uid_entropy and [*uid_entropy, series_uid])
    return {
        "study_uid": study_uid,
        "series_uid": series_uid,
        "frame_of_reference_uid": frame_of_reference_uid,
        "sop_instance_uids": sops,
        "out_dir": str(out_dir),
    }


def export_subject(
    subject_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    pet_key: str = "pet_drf20",
    subject_id: str | None = None,
) -> dict:
    """Export one simulated subject (a cohort folder ``sub-XXXX/``) as a DICOM study: ``PET/`` and ``MR/`` series.

    Args:
        subject_dir: the subject folder with ``{id}_{key}.nii.gz`` and ``{id}_params.json``.
        out_dir: output folder (``PET/`` and ``MR/`` are created inside).
        pet_key: which PET image to export (``pet_sd``, ``pet_drf20``, ...).
        subject_id: the subject id (default: the folder name).

    Returns:
        dict with the ``pet`` and ``mr`` results of :func:`write_pet_series` / :func:`write_mr_series`.
    """
    import json

    import nibabel as nib

    subject_dir = Path(subject_dir)
    sid = subject_id or subject_dir.name
    params = json.loads((subject_dir / f"{sid}_params.json").read_text())
    pet = nib.load(str(subject_dir / f"{sid}_{pet_key}.nii.gz"))
    t1 = nib.load(str(subject_dir / f"{sid}_t1.nii.gz"))
    ent = ["m2diff-sim", sid]
    start = _dt.datetime(2024, 1, 1, 10, 0, 0)
    mr = write_mr_series(
        np.asarray(t1.dataobj, dtype=np.float32), t1.affine, Path(out_dir) / "MR", patient_id=sid, uid_entropy=ent
    )
    pet_res = write_pet_series(
        np.asarray(pet.dataobj, dtype=np.float32),
        pet.affine,
        Path(out_dir) / "PET",
        patient_weight_kg=params["patient_weight_kg"],
        injected_dose_bq=params["injected_dose_bq"],
        half_life_s=params["half_life_s"],
        series_description=f"PET Brain FDG {pet_key} (simulated)",
        study_uid=mr["study_uid"],
        frame_of_reference_uid=mr["frame_of_reference_uid"],
        patient_id=sid,
        scan_start=start,
        uptake_time_s=params["uptake_time_s"],
        uid_entropy=ent,
    )
    return {"pet": pet_res, "mr": mr}


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(description="Export a simulated subject folder as a DICOM PET + MR study.")
    parser.add_argument("subject_dir", help="e.g. data/sim/sub-0001")
    parser.add_argument("out_dir", help="output folder (PET/ and MR/ are created)")
    parser.add_argument("--pet_key", default="pet_drf20", help="pet_sd, pet_drf4, pet_drf20, ...")
    args = parser.parse_args()
    res = export_subject(args.subject_dir, args.out_dir, args.pet_key)
    print(json.dumps({k: {kk: v[kk] for kk in ("study_uid", "series_uid", "out_dir")} for k, v in res.items()}))
