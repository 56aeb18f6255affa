"""Which series of a spooled study the node enhances, and whether they are complete, read from their headers.

The PET series: PET Image Storage, ORIGINAL (not DERIVED, so never one of this node's own results), static (not
SeriesType DYNAMIC or GATED, one time slice), attenuation-corrected (ATTN in CorrectedImage; a series without
CorrectedImage is taken only when no series declares ATTN). Exactly one series must qualify.

The T1 series: MR Image Storage, ORIGINAL, a T1 word in its description (``T1_WORDS``), not a localiser, no contrast
(no ContrastBolusAgent, no contrast word), 3D (MRAcquisitionType, when present), with at least ``MIN_T1_SLICES``
slices; among several, the smallest voxel wins. Enhanced MR (multi-frame) is not read: a study whose only T1 is one
is refused with that reason.

A study without a PET series is incomplete (a push may send the MR series first). A series is complete when it
holds the number of slices its headers declare (NumberOfSlices, times NumberOfTimeSlices for dynamic PET;
ImagesInAcquisition for other series) and, with or without a declared number, when its slice positions form a stack
with no gap.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pynetdicom.sop_class import (
    EnhancedMRImageStorage,
    EnhancedPETImageStorage,
    MRImageStorage,
    PositronEmissionTomographyImageStorage,
)

from scripts.io.dicom import RESEARCH_USE, RESEARCH_USE_SHORT

from .spool import series_folders

T1_WORDS = ("T1", "MPRAGE", "SPGR", "TFE", "BRAVO")
LOCALISER_WORDS = {"LOC", "LOCALIZER", "LOCALISER", "SCOUT", "SURVEY", "3PLANE", "TRIPILOT", "AAHEAD"}
CONTRAST_WORDS = {"POST", "GAD", "GD", "C+", "+C", "CE", "CONTRAST", "GADO", "POSTGAD", "POSTCONTRAST"}
MIN_T1_SLICES = 5


class StudyFailed(Exception):
    """A study that cannot be enhanced or sent; the message is its reason."""


class StudyIncomplete(StudyFailed):
    """A chosen series lacks slices that its headers say exist."""


@dataclass
class SeriesHeaders:
    """The headers (no pixel data) of one spooled series."""

    folder: Path
    files: list[Path]
    headers: list[Dataset] = field(repr=False)

    @property
    def first(self) -> Dataset:
        return self.headers[0]

    @property
    def name(self) -> str:
        return self.folder.name

    def text(self, keyword: str) -> str:
        return str(self.first.get(keyword, "") or "").upper()

    def values(self, keyword: str) -> list[str]:
        value = self.first.get(keyword) or []
        return [str(v).upper() for v in (value if isinstance(value, (list, pydicom.multival.MultiValue)) else [value])]

    def words(self) -> set[str]:
        return set(re.findall(r"[A-Z0-9+]+", f"{self.text('SeriesDescription')} {self.text('ProtocolName')}"))


def read_series(study: Path) -> list[SeriesHeaders]:
    """Read every series' headers (``*.dcm``; pixel data skipped).

    Raises:
        StudyFailed: a file that is not readable DICOM.
    """
    found = []
    for folder in series_folders(study):
        files = sorted(folder.glob("*.dcm"))
        headers = []
        for path in files:
            try:
                headers.append(pydicom.dcmread(path, stop_before_pixels=True))
            except Exception as exc:  # noqa: B902 - pydicom raises many types for damaged files
                raise StudyFailed(f"corrupt file {path.name} in series {folder.name}: {exc}") from exc
        if headers:
            found.append(SeriesHeaders(folder, files, headers))
    return found


def _as_int(value) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def declared_slices(series: SeriesHeaders) -> int:
    """The number of slice files the headers declare (0: none declared)."""
    first = series.first
    if first.get("Modality") == "PT" and _as_int(first.get("NumberOfSlices")):
        return _as_int(first.NumberOfSlices) * max(1, _as_int(first.get("NumberOfTimeSlices")))
    return _as_int(first.get("ImagesInAcquisition"))


def missing_slices(series: SeriesHeaders) -> str | None:
    """``None`` when the series is complete by its headers, else what is missing (``"48 of 95 slices received"``)."""
    received = len(series.files)
    expected = declared_slices(series)
    if received < expected:
        return f"{received} of {expected} slices received"
    gaps = _position_gaps(series.headers)
    if gaps:
        return f"{received} of {received + gaps} slices received (a gap in the slice positions)"
    return None


def _position_gaps(headers: list[Dataset]) -> int:
    """Slices absent from a stack whose positions are otherwise regular (0 when regular or not a stack)."""
    try:
        orientation = np.asarray(headers[0].ImageOrientationPatient, dtype=np.float64)
        normal = np.cross(orientation[:3], orientation[3:])
        along = np.unique([round(float(np.asarray(ds.ImagePositionPatient, float) @ normal), 3) for ds in headers])
    except (AttributeError, TypeError, ValueError):
        return 0  # no geometry (the reader stops the study with the reason)
    steps = np.diff(along)
    if len(steps) < 2 or steps.min() <= 0:
        return 0
    ratios = steps / steps.min()
    whole = np.round(ratios)
    return int(sum(r - 1 for r, w in zip(ratios, whole) if w >= 2 and abs(r - w) < 0.1))


def _pet_exclusion(series: SeriesHeaders) -> str | None:
    if series.text("SeriesDescription").startswith(RESEARCH_USE_SHORT) or series.text("ImageComments").startswith(
        RESEARCH_USE.upper()
    ):
        return "a result of this node"
    sop_class = str(series.first.get("SOPClassUID", ""))
    if sop_class == EnhancedPETImageStorage:
        return f"unsupported SOP class {sop_class} (Enhanced PET, multi-frame; the node reads PET Image Storage)"
    if sop_class != PositronEmissionTomographyImageStorage:
        return f"unsupported SOP class {sop_class} (the node reads PET Image Storage)"
    if series.values("ImageType")[:1] == ["DERIVED"]:
        return "derived (ImageType DERIVED)"
    if (
        series.values("SeriesType")[:1] in (["DYNAMIC"], ["GATED"])
        or _as_int(series.first.get("NumberOfTimeSlices")) > 1
    ):
        return "dynamic (SeriesType or NumberOfTimeSlices)"
    corrected = series.values("CorrectedImage")
    if corrected and "ATTN" not in corrected:
        return f"not attenuation-corrected (CorrectedImage {'/'.join(corrected)})"
    return None


def choose_pet(series: list[SeriesHeaders]) -> tuple[SeriesHeaders, list[str]]:
    """The PET series to enhance and one note per PET series left out.

    Raises:
        StudyIncomplete: no PET series (yet: a push may send the MR first).
        StudyFailed: no PET series qualifies, or several do.
    """
    pets = [s for s in series if s.first.get("Modality") == "PT"]
    if not pets:
        raise StudyIncomplete("no PET series in the study")
    skipped = [(s, _pet_exclusion(s)) for s in pets]
    notes = [f"PET series {s.name} left out: {why}" for s, why in skipped if why]
    candidates = [s for s, why in skipped if not why]
    corrected = [s for s in candidates if "ATTN" in s.values("CorrectedImage")]
    notes += [
        f"PET series {s.name} left out: no CorrectedImage" for s in candidates if corrected and s not in corrected
    ]
    candidates = corrected or candidates
    if not candidates:
        raise StudyFailed("no PET series to enhance: " + "; ".join(notes))
    if len(candidates) > 1:
        names = ", ".join(s.name for s in candidates)
        raise StudyFailed(f"{len(candidates)} static attenuation-corrected PET series ({names}); expected one")
    return candidates[0], notes


def _t1_exclusion(series: SeriesHeaders) -> str | None:
    words, description = series.words(), f"{series.text('SeriesDescription')} {series.text('ProtocolName')}"
    if words & LOCALISER_WORDS or "LOCALIZER" in series.values("ImageType"):
        return "a localiser"
    if not any(word in description for word in T1_WORDS):
        return "no T1 word in its description"
    if series.values("ImageType")[:1] == ["DERIVED"]:
        return "derived (ImageType DERIVED)"
    if series.text("ContrastBolusAgent") or words & CONTRAST_WORDS:
        return "post-contrast"
    if series.text("MRAcquisitionType") not in ("", "3D"):
        return f"a {series.text('MRAcquisitionType')} acquisition (3D expected)"
    if len(series.files) < MIN_T1_SLICES and str(series.first.get("SOPClassUID")) == MRImageStorage:
        return f"{len(series.files)} slices"
    return None


def _voxel_volume(series: SeriesHeaders) -> float:
    first = series.first
    spacing = [float(v) for v in first.get("PixelSpacing", [1.0, 1.0])]
    depth = float(first.get("SpacingBetweenSlices") or first.get("SliceThickness") or 1.0)
    return spacing[0] * spacing[1] * depth


def choose_t1(series: list[SeriesHeaders]) -> tuple[SeriesHeaders | None, list[str]]:
    """The T1 series to guide the enhancement (``None``: MRI-free) and one note per MR series left out.

    Raises:
        StudyFailed: the only T1 series is Enhanced MR (multi-frame), which the node does not read.
    """
    mrs = [s for s in series if s.first.get("Modality") == "MR"]
    skipped = [(s, _t1_exclusion(s)) for s in mrs]
    notes = [f"MR series {s.name} left out: {why}" for s, why in skipped if why]
    candidates = [s for s, why in skipped if not why]
    enhanced = [s for s in candidates if str(s.first.get("SOPClassUID")) == EnhancedMRImageStorage]
    classic = [s for s in candidates if str(s.first.get("SOPClassUID")) == MRImageStorage]
    if enhanced and not classic:
        raise StudyFailed(
            f"T1 series {enhanced[0].name} is Enhanced MR Image Storage (multi-frame), which the node does not read; "
            "send the T1 as MR Image Storage (one slice a file)"
        )
    if not classic:
        return None, notes
    notes += [f"MR series {s.name} left out: Enhanced MR (multi-frame), not read" for s in enhanced]
    classic.sort(key=lambda s: (_voxel_volume(s), -len(s.files), s.name))
    notes += [f"MR series {s.name} left out: a larger voxel than {classic[0].name}" for s in classic[1:]]
    return classic[0], notes
