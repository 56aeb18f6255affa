"""Clinical input/output of the M2Diff bundle: studies, DICOM with SUV, checks, and atomic writers."""

from .dataset import StudyDataset, single_study_collate
from .dicom import DicomSeries, SuvCalibration, read_dicom_series, suv_calibration, write_derived_series
from .errors import StudyError
from .studies import (
    DatalistError,
    check_outputs_spare_inputs,
    default_study_id,
    load_datalist,
    prepare_output_dir,
    study_outputs,
)
from .transforms import ConvertUnitsd, LoadStudyd, SaveStudyd, units_for_study
from .volumes import check_volume, dicom_series, read_volume, source_path
from .writers import atomic_directory, atomic_path, remove_stale_temporaries, write_json, write_nifti

__all__ = [
    "ConvertUnitsd",
    "DatalistError",
    "DicomSeries",
    "LoadStudyd",
    "SaveStudyd",
    "StudyDataset",
    "StudyError",
    "SuvCalibration",
    "atomic_directory",
    "atomic_path",
    "check_outputs_spare_inputs",
    "check_volume",
    "default_study_id",
    "dicom_series",
    "load_datalist",
    "prepare_output_dir",
    "read_dicom_series",
    "read_volume",
    "remove_stale_temporaries",
    "single_study_collate",
    "source_path",
    "study_outputs",
    "suv_calibration",
    "units_for_study",
    "write_derived_series",
    "write_json",
    "write_nifti",
]
