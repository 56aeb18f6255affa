"""Export simulated volumes as DICOM series: a PET series (PET Image Storage, BQML) and an MR series.

Both series share one StudyInstanceUID and FrameOfReferenceUID. Geometry is written in LPS (DICOM) from a RAS
NIfTI-style affine; in-plane axes are flipped where needed so ImageOrientationPatient is the usual axial
``[1, 0, 0, 0, 1, 0]`` for a RAS-aligned grid. One file per axial slice, int16 pixels with a per-slice RescaleSlope.
Patient, study and series identity is one :class:`SeriesInfo` per series.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .constants import F18_HALF_LIFE_S
from .files import atomic_path

__all__ = ["SeriesInfo", "write_pet_series", "write_mr_series", "export_subject", "new_uid"]

PET_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.128"
MR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.4"
# modality: (SOP class, UID kind, default SeriesNumber, default SeriesDescription); the modality is the file prefix
_MODALITIES = {
    "PT": (PET_SOP_CLASS, "pet-series", 1, "PET Brain FDG (simulated)"),
    "MR": (MR_SOP_CLASS, "mr-series", 2, "T1w MPRAGE (simulated)"),
}
DEFAULT_SCAN_START = _dt.datetime(2024, 1, 1, 10, 0, 0)  # deterministic series date/time
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # NIfTI RAS <-> DICOM LPS (x and y negated); its own inverse


@dataclass
class SeriesInfo:
    """Patient, study and series identity of one exported series.

    Args:
        patient_id: PatientID.
        patient_name: PatientName.
        patient_weight_kg: PatientWeight (required for PET: SUV).
        study_uid: StudyInstanceUID (new if None; pass the other series' to build one study).
        frame_of_reference_uid: FrameOfReferenceUID (new if None; pass the other series' when co-registered).
        series_uid: SeriesInstanceUID (new if None).
        series_number: SeriesNumber (None: 1 for PET, 2 for MR).
        series_description: SeriesDescription (None: the modality's default).
        scan_start: series (acquisition) date/time (None: 2024-01-01 10:00:00, deterministic).
        uid_entropy: values that make all UIDs deterministic (same entropy, same UIDs).
    """

    patient_id: str = "SIM0001"
    patient_name: str = "SIMULATED^SUBJECT"
    patient_weight_kg: float | None = None
    study_uid: str | None = None
    frame_of_reference_uid: str | None = None
    series_uid: str | None = None
    series_number: int | None = None
    series_description: str | None = None
    scan_start: _dt.datetime | None = None
    uid_entropy: Sequence[object] | None = None

    @property
    def start(self) -> _dt.datetime:
        """``scan_start``, or the deterministic default 2024-01-01 10:00:00."""
        return self.scan_start or DEFAULT_SCAN_START


def new_uid(*entropy: object) -> str:
    """A DICOM UID; deterministic when ``entropy`` is given (pydicom ``generate_uid`` with entropy sources)."""
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[str(e) for e in entropy] if entropy else None)


def _lps_slices(volume: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (volume, LPS affine) with in-plane axes flipped so the first two axes point to +L and +P."""
    if volume.ndim != 3:
        raise ValueError(f"expected a 3D volume (X, Y, Z), got shape {volume.shape}")
    aff = RAS_TO_LPS @ np.asarray(affine, dtype=np.float64)
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


def _int16_pixels(plane: np.ndarray) -> tuple[np.ndarray, str]:
    """int16 pixels of a slice and their RescaleSlope (DS string, intercept 0): the largest magnitude maps to 32767."""
    peak = float(np.abs(plane).max(initial=0.0))
    slope = f"{peak / 32767.0:.10g}" if peak > 0 else "1"
    return np.clip(np.round(np.asarray(plane, np.float64) / float(slope)), -32768, 32767).astype(np.int16), slope


def _base_dataset(sop_class: str, modality: str, info: SeriesInfo):
    """The attributes both series share (patient, study, series, image pixel) from a resolved ``info``."""
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
    ds.PatientName = info.patient_name
    ds.PatientID = info.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    if info.patient_weight_kg is not None:
        ds.PatientWeight = _ds(info.patient_weight_kg)
    ds.StudyInstanceUID = info.study_uid
    ds.SeriesInstanceUID = info.series_uid
    ds.FrameOfReferenceUID = info.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.StudyDate = info.start.strftime("%Y%m%d")
    ds.StudyTime = info.start.strftime("%H%M%S")
    ds.SeriesDate = ds.StudyDate
    ds.SeriesTime = ds.StudyTime
    ds.ContentDate = ds.StudyDate
    ds.ContentTime = ds.StudyTime
    ds.AcquisitionDate = ds.StudyDate
    ds.AcquisitionTime = ds.StudyTime
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.StudyDescription = "Simulated brain FDG-PET/MR (M2Diff bundle)"
    ds.SeriesNumber = int(info.series_number)
    ds.SeriesDescription = info.series_description
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


def _series_uids(info: SeriesInfo, kind: str, description: str) -> tuple[str, str, str]:
    """Study, frame-of-reference and series UIDs: the given ones, else new (deterministic with ``uid_entropy``)."""
    ent = list(info.uid_entropy) if info.uid_entropy is not None else None

    def make(*tag: object) -> str:
        return new_uid(*ent, *tag) if ent else new_uid()

    return (
        info.study_uid or make("study"),
        info.frame_of_reference_uid or make("for"),
        info.series_uid or make(kind, description),
    )


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
        pixels, ds.RescaleSlope = _int16_pixels(plane)
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


def _write_series(
    volume: np.ndarray,
    affine: np.ndarray,
    out_dir: str | os.PathLike,
    info: SeriesInfo,
    modality: str,
    attributes: dict,
    per_slice_extra: Callable | None = None,
) -> dict:
    """Resolve the UIDs, build the base dataset plus the modality's ``attributes`` and write one file per slice."""
    sop_class, kind, default_number, default_description = _MODALITIES[modality]
    number = default_number if info.series_number is None else info.series_number
    description = default_description if info.series_description is None else info.series_description
    study_uid, frame_of_reference_uid, series_uid = _series_uids(info, kind, description)
    info = replace(
        info,
        study_uid=study_uid,
        frame_of_reference_uid=frame_of_reference_uid,
        series_uid=series_uid,
        series_number=number,
        series_description=description,
    )
    ds = _base_dataset(sop_class, modality, info)
    ds.update(attributes)
    ent = info.uid_entropy and [*info.uid_entropy, series_uid]
    sops = _write_slices(ds, volume, affine, Path(out_dir), modality, ent, per_slice_extra)
    return {
        "study_uid": study_uid,
        "series_uid": series_uid,
        "frame_of_reference_uid": frame_of_reference_uid,
        "sop_instance_uids": sops,
        "out_dir": str(out_dir),
    }


def write_pet_series(
    volume_bq_ml: np.ndarray,
    affine: np.ndarray,
    out_dir: str | os.PathLike,
    info: SeriesInfo,
    *,
    injected_dose_bq: float,
    half_life_s: float = F18_HALF_LIFE_S,
    uptake_time_s: float = 3600.0,
    frame_duration_s: float = 600.0,
    reconstruction_method: str = "OSEM 4i21s PSF 3mm",
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY"),
) -> dict:
    """Write a PET series (PET Image Storage, Units BQML, decay-corrected to the scan start).

    Args:
        volume_bq_ml: (X, Y, Z) activity concentration in Bq/ml, axial = last axis.
        affine: (4, 4) voxel-to-world RAS affine (NIfTI convention) of ``volume_bq_ml``.
        out_dir: output folder (created); files ``PT0001.dcm`` ... one per slice.
        info: patient, study and series identity; ``patient_weight_kg`` is required.
        injected_dose_bq: RadionuclideTotalDose (at RadiopharmaceuticalStartDateTime).
        half_life_s: RadionuclideHalfLife.
        uptake_time_s: injection to scan start, sets RadiopharmaceuticalStartDateTime.
        frame_duration_s: ActualFrameDuration.
        reconstruction_method: ReconstructionMethod.
        image_type: ImageType (e.g. ``("DERIVED", "SECONDARY")`` for an enhanced image).

    Returns:
        dict with ``study_uid``, ``series_uid``, ``frame_of_reference_uid``, ``sop_instance_uids``, ``out_dir``.
    """
    from pydicom.dataset import Dataset

    if info.patient_weight_kg is None:
        raise ValueError("a PET series needs info.patient_weight_kg (PatientWeight, for SUV)")
    injection = info.start - _dt.timedelta(seconds=float(uptake_time_s))
    decay_during = float(np.log(2) * frame_duration_s / half_life_s)
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
    attributes = {
        "ImageType": list(image_type),
        "Units": "BQML",
        "CountsSource": "EMISSION",
        "SeriesType": ["STATIC", "IMAGE"],
        "CorrectedImage": ["DECY", "ATTN", "SCAT", "RAN", "NORM"],
        "DecayCorrection": "START",
        "RandomsCorrectionMethod": "DLYD",
        "AttenuationCorrectionMethod": "MR-based (simulated mu-map)",
        "ScatterCorrectionMethod": "model-based (simulated)",
        "ReconstructionMethod": reconstruction_method,
        "NumberOfSlices": int(np.asarray(volume_bq_ml).shape[2]),
        "FrameReferenceTime": "0",
        "ActualFrameDuration": int(round(frame_duration_s * 1000)),
        "DecayFactor": _ds(decay_during / (1 - np.exp(-decay_during))),
        "PatientOrientationCodeSequence": [],
        "RadiopharmaceuticalInformationSequence": [radio],
    }

    def image_index(d, k):
        d.ImageIndex = k + 1

    return _write_series(volume_bq_ml, affine, out_dir, info, "PT", attributes, image_index)


def write_mr_series(volume: np.ndarray, affine: np.ndarray, out_dir: str | os.PathLike, info: SeriesInfo) -> dict:
    """Write a T1-weighted MR series (MR Image Storage) on the same geometry conventions as the PET.

    Args:
        volume: (X, Y, Z) MR intensities (arbitrary units), axial = last axis.
        affine: (4, 4) voxel-to-world RAS affine.
        out_dir: output folder; files ``MR0001.dcm`` ... one per slice.
        info: patient, study and series identity (pass the PET's study and frame-of-reference UIDs to share them).

    Returns:
        dict with ``study_uid``, ``series_uid``, ``frame_of_reference_uid``, ``sop_instance_uids``, ``out_dir``.
    """
    attributes = {
        "ImageType": ["ORIGINAL", "PRIMARY", "M", "ND"],
        "ScanningSequence": "GR",
        "SequenceVariant": ["SP", "MP"],
        "ScanOptions": "",
        "MRAcquisitionType": "3D",
        "RepetitionTime": "2300",
        "EchoTime": "2.98",
        "InversionTime": "900",
        "EchoTrainLength": "1",
        "MagneticFieldStrength": "3",
    }
    return _write_series(volume, affine, out_dir, info, "MR", attributes)


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
    mr_info = SeriesInfo(patient_id=sid, uid_entropy=["m2diff-sim", sid])
    mr = write_mr_series(np.asarray(t1.dataobj, dtype=np.float32), t1.affine, Path(out_dir) / "MR", mr_info)
    pet_info = replace(
        mr_info,
        patient_weight_kg=params["patient_weight_kg"],
        study_uid=mr["study_uid"],
        frame_of_reference_uid=mr["frame_of_reference_uid"],
        series_description=f"PET Brain FDG {pet_key} (simulated)",
    )
    pet_res = write_pet_series(
        np.asarray(pet.dataobj, dtype=np.float32),
        pet.affine,
        Path(out_dir) / "PET",
        pet_info,
        injected_dose_bq=params["injected_dose_bq"],
        half_life_s=params["half_life_s"],
        uptake_time_s=params["uptake_time_s"],
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
