"""DICOM series in (validated geometry, per-slice rescale, SUV from the header) and a derived PET series out.

Array convention (the same as MONAI's ``PydicomReader`` with ``swap_ij=True``): ``array[i, j, k]`` is column ``i``,
row ``j`` of the ``k``-th slice sorted by position along the slice normal (row direction x column direction); the
affine maps voxel indices to RAS millimetres (DICOM LPS with x and y negated).

Slices are sorted by position, not by InstanceNumber, and the spacing between them is checked, so a missing slice,
duplicate positions, mixed series or uneven spacing stop the study with a clear error instead of silently giving
wrong geometry.
"""

from __future__ import annotations

import copy
import datetime
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import DA, DT, TM

from ..constants import LPS_TO_RAS
from .errors import StudyError
from .writers import atomic_directory

#: relative tolerance on the distance between consecutive slices
SPACING_TOLERANCE = 0.01


@dataclass
class DicomSeries:
    """A validated DICOM series.

    Attributes:
        array: ``(columns, rows, slices)`` float32 values after each slice's RescaleSlope/Intercept.
        affine: 4x4 voxel-to-RAS matrix.
        files: the slice files in array order (``array[..., k]`` comes from ``files[k]``).
        header: the first slice's header (no pixel data).
        acquisition_times: each slice's AcquisitionDateTime (``None`` where absent).
    """

    array: np.ndarray
    affine: np.ndarray
    files: list[str]
    header: Dataset
    acquisition_times: list[datetime.datetime | None] = field(default_factory=list)


def _read_slices(folder: Path) -> list[tuple[Path, Dataset]]:
    slices = []
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        try:
            slices.append((path, pydicom.dcmread(path)))
        except pydicom.errors.InvalidDicomError:
            continue  # not a DICOM file (a README, a DICOMDIR without preamble ...)
        except Exception as exc:  # a truncated or otherwise broken file
            raise StudyError(f"cannot read DICOM file {path.name}: {exc}", folder) from exc
    return [(p, ds) for p, ds in slices if "PixelData" in ds]


def _require(ds: Dataset, keyword: str, path: Path, folder: Path):
    value = ds.get(keyword)
    if value is None or value == "":
        raise StudyError(f"DICOM file {path.name} lacks {keyword}, needed for the image geometry", folder)
    return value


def read_dicom_series(folder: str | os.PathLike) -> DicomSeries:
    """Read one DICOM series from a folder, checking that its slices form a regular 3D grid.

    Raises:
        StudyError: no DICOM images; several series; multi-frame files; slices of different size or orientation;
            duplicate positions; a missing slice; uneven slice spacing.
    """
    folder = Path(folder)
    slices = _read_slices(folder)
    if not slices:
        raise StudyError("expected a DICOM series folder, found no DICOM images in it", folder)
    series_uids = sorted({str(ds.get("SeriesInstanceUID", "")) for _, ds in slices})
    if len(series_uids) > 1:
        raise StudyError(f"expected one DICOM series per folder, found {len(series_uids)}: {series_uids}", folder)
    for path, ds in slices:
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise StudyError(f"{path.name} is a multi-frame image; expected one slice per file", folder)
    if len(slices) < 2:
        raise StudyError(f"expected a 3D series (2 or more slices), found {len(slices)} slice", folder)

    first_path, first = slices[0]
    orientation = np.asarray(_require(first, "ImageOrientationPatient", first_path, folder), dtype=np.float64)
    spacing = np.asarray(_require(first, "PixelSpacing", first_path, folder), dtype=np.float64)
    size = (int(first.Rows), int(first.Columns))
    for path, ds in slices:
        if not np.allclose(
            np.asarray(_require(ds, "ImageOrientationPatient", path, folder), float), orientation, atol=1e-4
        ):
            raise StudyError(f"slice {path.name} has another ImageOrientationPatient than {first_path.name}", folder)
        if not np.allclose(np.asarray(_require(ds, "PixelSpacing", path, folder), float), spacing, rtol=1e-4):
            raise StudyError(
                f"slice {path.name} has PixelSpacing {list(ds.PixelSpacing)}, expected {list(spacing)}", folder
            )
        if (int(ds.Rows), int(ds.Columns)) != size:
            raise StudyError(f"slice {path.name} is {ds.Rows}x{ds.Columns}, expected {size[0]}x{size[1]}", folder)
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    positions = [np.asarray(_require(ds, "ImagePositionPatient", p, folder), dtype=np.float64) for p, ds in slices]
    order = np.argsort([float(pos @ normal) for pos in positions], kind="stable")
    slices = [slices[i] for i in order]
    positions = [positions[i] for i in order]
    _check_slice_spacing([float(pos @ normal) for pos in positions], [p.name for p, _ in slices], folder)

    array = np.empty((size[1], size[0], len(slices)), dtype=np.float32)
    for k, (path, ds) in enumerate(slices):
        try:
            pixels = ds.pixel_array.astype(np.float64)
        except Exception as exc:
            raise StudyError(f"cannot decode the pixel data of {path.name}: {exc}", folder) from exc
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
        array[:, :, k] = (pixels * slope + intercept).T
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = row_dir * spacing[1]
    affine_lps[:3, 1] = col_dir * spacing[0]
    affine_lps[:3, 2] = (positions[-1] - positions[0]) / (len(slices) - 1)
    affine_lps[:3, 3] = positions[0]
    header = copy.deepcopy(slices[0][1])
    del header.PixelData
    return DicomSeries(
        array=array,
        affine=LPS_TO_RAS @ affine_lps,
        files=[str(p) for p, _ in slices],
        header=header,
        acquisition_times=[_acquisition_datetime(ds) for _, ds in slices],
    )


def _check_slice_spacing(along_normal: list[float], names: list[str], folder: Path) -> None:
    gaps = np.diff(along_normal)
    if np.any(gaps < 1e-3):
        k = int(np.argmin(gaps))
        raise StudyError(f"slices {names[k]} and {names[k + 1]} share position {along_normal[k]:.3f} mm", folder)
    expected = float(np.median(gaps))
    for k, gap in enumerate(gaps):
        if abs(gap - expected) <= SPACING_TOLERANCE * expected:
            continue
        ratio = gap / expected
        if abs(ratio - round(ratio)) <= SPACING_TOLERANCE * round(ratio) and round(ratio) >= 2:
            raise StudyError(
                f"missing slice: {round(ratio) - 1} slice(s) absent between {names[k]} ({along_normal[k]:.2f} mm) and "
                f"{names[k + 1]} ({along_normal[k + 1]:.2f} mm): gap {gap:.2f} mm, expected {expected:.2f} mm",
                folder,
            )
        raise StudyError(
            f"inconsistent slice spacing: {gap:.2f} mm between {names[k]} and {names[k + 1]}, "
            f"expected {expected:.2f} mm like the other slices",
            folder,
        )


def _parse_datetime(date: str | None, time: str | None) -> datetime.datetime | None:
    """DICOM DA + TM -> datetime (pydicom's ``DA`` and ``TM``; 1900-01-01 without a DA); ``None`` when absent or
    unparsable."""
    try:
        day = DA(str(date).strip()) if date else datetime.date(1900, 1, 1)
        return datetime.datetime.combine(day, TM(str(time).strip())) if time else None
    except ValueError:
        return None


def _parse_dt(value: str | None) -> datetime.datetime | None:
    """DICOM DT -> naive datetime (pydicom's ``DT``; its UTC offset is dropped); ``None`` when absent or unparsable."""
    try:
        moment = DT(str(value).strip())
    except ValueError:
        return None
    return datetime.datetime.combine(moment.date(), moment.time())


def _acquisition_datetime(ds: Dataset) -> datetime.datetime | None:
    if ds.get("AcquisitionDateTime"):
        return _parse_dt(ds.AcquisitionDateTime)
    return _parse_datetime(ds.get("AcquisitionDate") or ds.get("SeriesDate"), ds.get("AcquisitionTime"))


@dataclass
class SuvCalibration:
    """How to turn the series' values into SUVbw: ``suv = value * factor``.

    Attributes:
        units: the DICOM Units of the pixel values (``BQML``, ``GML`` ...).
        factor: multiplier from the stored units to SUVbw (``1`` when the units already are ``GML``).
        bqml_factor: multiplier from the stored units to Bq/ml (``None`` when unknown).
        description: how the factor was derived, for the log.
    """

    units: str
    factor: float | None
    bqml_factor: float | None
    description: str


def suv_calibration(series: DicomSeries, folder: str | os.PathLike) -> SuvCalibration:
    """SUVbw factor from the PET header: weight, injected dose, half-life, injection time and decay correction.

    ``SUV = Bq/ml * weight [g] / (dose [Bq] * 2 ** (-(t_ref - t_injection) / half_life))`` where ``t_ref`` is the
    decay-correction reference: the series start (``DecayCorrection`` START: the earlier of SeriesTime and the first
    AcquisitionTime) or the injection itself (ADMIN: no decay factor).

    Returns a calibration whose ``factor`` is ``None`` (with the reason in ``description``) when the header lacks what
    SUV needs; the caller decides whether that is an error.
    """
    ds = series.header
    units = str(ds.get("Units", "")).upper() or "UNKNOWN"
    try:
        bqml_to_suv, how = _bqml_to_suv(series)
    except ValueError as exc:
        bqml_to_suv, how = None, str(exc)
    if units == "BQML":
        return SuvCalibration(units, bqml_to_suv, 1.0, how)
    if units == "GML":
        return SuvCalibration(units, 1.0, None if bqml_to_suv is None else 1.0 / bqml_to_suv, "values already SUVbw")
    return SuvCalibration(units, None, None, f"DICOM Units is '{units}'; SUV needs BQML (Bq/ml) or GML values")


def _bqml_to_suv(series: DicomSeries) -> tuple[float, str]:
    ds = series.header
    weight = ds.get("PatientWeight")
    if not weight or float(weight) <= 0:
        raise ValueError("the header has no PatientWeight (0010,1030)")
    info = ds.get("RadiopharmaceuticalInformationSequence")
    if not info:
        raise ValueError("the header has no RadiopharmaceuticalInformationSequence (0054,0016)")
    drug = info[0]
    dose, half_life = drug.get("RadionuclideTotalDose"), drug.get("RadionuclideHalfLife")
    if not dose or float(dose) <= 0:
        raise ValueError("the header has no RadionuclideTotalDose (0018,1074)")
    if not half_life or float(half_life) <= 0:
        raise ValueError("the header has no RadionuclideHalfLife (0018,1075)")
    correction = str(ds.get("DecayCorrection", "START")).upper()
    weight_g, dose = float(weight) * 1000.0, float(dose)
    if correction == "ADMIN":
        return weight_g / dose, f"weight {weight} kg, dose {dose:.4g} Bq, decay-corrected to administration"
    if correction != "START":
        raise ValueError(f"DecayCorrection '{correction}' is not supported for SUV (expected START or ADMIN)")
    injection = (
        _parse_dt(drug.get("RadiopharmaceuticalStartDateTime"))
        if drug.get("RadiopharmaceuticalStartDateTime")
        else _parse_datetime(ds.get("SeriesDate"), drug.get("RadiopharmaceuticalStartTime"))
    )
    if injection is None:
        raise ValueError("the header has no RadiopharmaceuticalStartTime (0018,1072)")
    candidates = [_parse_datetime(ds.get("SeriesDate"), ds.get("SeriesTime"))]
    candidates += [t for t in series.acquisition_times if t is not None]
    candidates = [t for t in candidates if t is not None]
    if not candidates:
        raise ValueError("the header has neither SeriesTime nor AcquisitionTime for the decay correction")
    reference = min(candidates)
    elapsed = (reference - injection).total_seconds()
    if elapsed < 0 and not ds.get("SeriesDate"):
        elapsed += 86400.0  # times without dates that cross midnight
    if elapsed < 0:
        raise ValueError(f"the scan reference time {reference} is before the injection {injection}")
    decayed = dose * math.pow(2.0, -elapsed / float(half_life))
    return weight_g / decayed, (
        f"weight {weight} kg, dose {dose:.4g} Bq at {injection.time()}, {elapsed / 60:.1f} min to the series start, "
        f"half-life {float(half_life):.0f} s"
    )


def encode_int16(plane: np.ndarray) -> tuple[np.ndarray, str]:
    """Signed 16-bit pixels of a float image slice and their RescaleSlope (a DICOM DS string; intercept 0).

    The slope maps the slice's largest magnitude to 32767, so each slice keeps its full 16-bit precision.
    """
    plane = np.asarray(plane, dtype=np.float64)
    peak = float(np.max(np.abs(plane))) if plane.size else 0.0
    slope = f"{peak / 32767.0:.10g}" if peak > 0 else "1"
    return np.clip(np.round(plane / float(slope)), -32768, 32767).astype(np.int16), slope


def write_derived_series(
    volume: np.ndarray,
    source: DicomSeries | list[str],
    folder: str | os.PathLike,
    series_description: str,
    units: str,
    derivation: str,
) -> list[Path]:
    """Write ``volume`` as a new derived series with the source series' geometry, atomically.

    Each output slice copies its source slice's header (patient, study, FrameOfReferenceUID, position, orientation,
    spacing), gets SOP/Series Instance UIDs derived from the source's and the SeriesDescription (so writing the same
    source with the same model version again gives the same UIDs, and a PACS replaces rather than adds the series),
    SeriesNumber the source's + ``DERIVED_SERIES_NUMBER_OFFSET``, ImageType DERIVED\\SECONDARY, the given
    SeriesDescription (after "RESEARCH ONLY: ") and Units, ImageComments "RESEARCH USE ONLY - not for diagnosis", a
    Source/ReferencedImageSequence pointing at the source slice, and int16 pixels with its own RescaleSlope.

    Args:
        volume: ``(columns, rows, slices)`` values in the array order of :func:`read_dicom_series`.
        source: the source series (or its slice files in array order).
        folder: output folder (replaced atomically if it exists).
        series_description: SeriesDescription of the new series.
        units: DICOM Units of ``volume`` (``BQML`` or ``GML``).
        derivation: DerivationDescription text.

    Returns:
        The written files, in array order.
    """
    files = source.files if isinstance(source, DicomSeries) else list(source)
    volume = np.asarray(volume, dtype=np.float64)
    if volume.ndim != 3 or volume.shape[2] != len(files):
        raise ValueError(f"volume of shape {volume.shape} does not match a source series of {len(files)} slices")
    series_uid = derived_uid(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID, series_description)
    folder = Path(folder)
    written = []
    with atomic_directory(folder) as tmp:
        for k, path in enumerate(files):
            src = pydicom.dcmread(path, stop_before_pixels=True)
            if (int(src.Columns), int(src.Rows)) != volume.shape[:2]:
                raise ValueError(f"slice {k} is {volume.shape[:2]} but source {path} is {src.Columns}x{src.Rows}")
            ds = _derived_slice(src, volume[:, :, k].T, series_uid, series_description, units, derivation)
            name = f"IM{k + 1:05d}.dcm"
            ds.save_as(tmp / name, enforce_file_format=True)
            written.append(folder / name)
    return written


#: a derived series' SeriesNumber is its source's plus this
DERIVED_SERIES_NUMBER_OFFSET = 1000


def derived_uid(source_uid: str, *identity: str) -> str:
    """A UID that is a function of a source UID and what identifies the derivation (e.g. the model version)."""
    return generate_uid(entropy_srcs=[str(source_uid), *identity])


#: every derived series says it is for research use (SeriesDescription starts with the short form)
RESEARCH_USE = "RESEARCH USE ONLY - not for diagnosis"
RESEARCH_USE_SHORT = "RESEARCH ONLY"


def _derived_slice(
    src: Dataset, pixels: np.ndarray, series_uid: str, description: str, units: str, derivation: str
) -> Dataset:
    ds = copy.deepcopy(src)
    for keyword in (
        "SmallestImagePixelValue",
        "LargestImagePixelValue",
        "WindowCenter",
        "WindowWidth",
        "PixelPaddingValue",
        "RescaleType",
        "PixelData",
        "ReferencedImageSequence",
        "SourceImageSequence",
    ):
        if keyword in ds:
            delattr(ds, keyword)
    reference = Dataset()
    reference.ReferencedSOPClassUID = src.SOPClassUID
    reference.ReferencedSOPInstanceUID = src.SOPInstanceUID
    ds.SourceImageSequence = DicomSequence([copy.deepcopy(reference)])
    ds.ReferencedImageSequence = DicomSequence([reference])
    ds.SOPInstanceUID = derived_uid(src.SOPInstanceUID, series_uid)
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = int(src.get("SeriesNumber", 0) or 0) + DERIVED_SERIES_NUMBER_OFFSET
    ds.SeriesDescription = f"{RESEARCH_USE_SHORT}: {description}"[:64]
    ds.ImageComments = f"{RESEARCH_USE}. {derivation}"[:10240]
    ds.DerivationDescription = derivation[:1024]
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.Units = units
    now = datetime.datetime.now()
    ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    stored, slope = encode_int16(pixels)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = slope, "0"
    ds.PixelData = stored.tobytes()
    ds["PixelData"].VR = "OW"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds
