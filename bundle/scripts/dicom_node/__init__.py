"""DICOM node: receive studies (Storage SCP), enhance them with inference.json, send the results (C-STORE)."""

from .node import DicomNode, StudyFailed, study_inputs
from .sender import DicomSender, SendError
from .spool import Spool

__all__ = ["DicomNode", "DicomSender", "SendError", "Spool", "StudyFailed", "study_inputs"]
