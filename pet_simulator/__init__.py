"""Simulator of MRI + FDG-PET brain studies at several dose reduction factors (MNI152 anatomy, OSEM)."""

from . import acquisition, activity, anatomy, cohort, dicom_export, projector, qc, reconstruction, sample

__all__ = [
    "acquisition",
    "activity",
    "anatomy",
    "cohort",
    "dicom_export",
    "projector",
    "qc",
    "reconstruction",
    "sample",
]
