"""A failed study's reason as a short DICOM report for the PACS: a Basic Text SR in the patient's study.

The report's Series and SOP Instance UIDs are derived from the StudyInstanceUID and the bundle version, so a study that
fails again replaces its report rather than adding one. Its codes are private (coding scheme ``99M2DIFF``).
"""

from __future__ import annotations

import datetime
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.sop_class import BasicTextSRStorage

from scripts.io.dicom import RESEARCH_USE, RESEARCH_USE_SHORT, derived_uid

REPORT_SERIES_NUMBER = 1999
#: patient and study attributes copied from the study's instances
COPIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)


def _code(value: str, meaning: str) -> Dataset:
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, "99M2DIFF", meaning
    return code


def failure_report(source: Dataset, reason: str, version: str, path: Path) -> Path:
    """Write a Basic Text SR saying that M2Diff did not enhance the study of ``source``, and why.

    Args:
        source: any instance of the study (its patient and study attributes are copied).
        reason: the failure's reason.
        version: the bundle version.
        path: the file to write.
    """
    ds = Dataset()
    for keyword in COPIED:
        setattr(ds, keyword, source.get(keyword, ""))
    now = datetime.datetime.now()
    ds.SOPClassUID = BasicTextSRStorage
    ds.SeriesInstanceUID = derived_uid(source.StudyInstanceUID, "M2Diff failure report", version)
    ds.SOPInstanceUID = derived_uid(ds.SeriesInstanceUID, "1")
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "SR", REPORT_SERIES_NUMBER, 1
    ds.SeriesDescription = f"{RESEARCH_USE_SHORT}: M2Diff v{version} not enhanced"[:64]
    ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    ds.ConceptNameCodeSequence = [_code("NOTENHANCED", "M2Diff: study not enhanced")]
    item = Dataset()
    item.RelationshipType, item.ValueType = "CONTAINS", "TEXT"
    item.ConceptNameCodeSequence = [_code("REASON", "Reason")]
    item.TextValue = f"{reason} ({RESEARCH_USE}; no enhanced series was sent)"[:1024]
    ds.ContentSequence = [item]
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
