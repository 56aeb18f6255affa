"""DICOM node: receive studies (Storage SCP), enhance complete ones with inference.json, send the results (C-STORE)."""

from .node import DicomNode, StudyInputs, study_inputs
from .receiver import StorageReceiver
from .sender import DicomSender, SendError
from .series import StudyFailed, StudyIncomplete
from .spool import Spool

__all__ = [
    "DicomNode",
    "DicomSender",
    "SendError",
    "Spool",
    "StudyFailed",
    "StudyIncomplete",
    "StudyInputs",
    "StorageReceiver",
    "study_inputs",
]
