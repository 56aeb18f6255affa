"""Simulator of MRI + FDG-PET brain studies at several dose reduction factors (MNI152 anatomy, OSEM).

Ships the Neuromorphometrics atlas in ``data/`` (CC BY-NC; see the README and the repository's
``bundle/docs/data_license.txt``). Imports nothing from the M2Diff bundle.
"""

from . import (
    acquisition,
    activity,
    anatomy,
    atrophy,
    cohort,
    dicom_export,
    head,
    heterogeneity,
    lesions,
    projector,
    qc,
    reconstruction,
    sample,
)

__all__ = [
    "acquisition",
    "activity",
    "anatomy",
    "atrophy",
    "cohort",
    "dicom_export",
    "head",
    "heterogeneity",
    "lesions",
    "projector",
    "qc",
    "reconstruction",
    "sample",
]
