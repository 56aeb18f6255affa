"""C-STORE of derived series to the destination AE, each instance once (a per-study log of what was sent)."""

from __future__ import annotations

import os
from pathlib import Path

import pydicom
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from scripts.io.writers import fsync_directory

SENT_LOG = "_sent.log"


class SendError(RuntimeError):
    """The destination could not be reached or refused an instance."""


class DicomSender:
    """Send DICOM files to one destination AE with C-STORE.

    Args:
        host: destination host.
        port: destination DICOM port.
        ae_title: destination (called) AE title.
        calling_ae_title: this node's AE title.
        timeout_s: network timeout.
    """

    def __init__(self, host: str, port: int, ae_title: str, calling_ae_title: str, timeout_s: float = 30.0) -> None:
        self.host, self.port, self.ae_title = host, int(port), ae_title
        self.calling_ae_title = calling_ae_title
        self.timeout_s = timeout_s

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"

    def echo(self) -> bool:
        """Whether the destination answers a C-ECHO."""
        ae = AE(ae_title=self.calling_ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        ae.add_requested_context(Verification)
        assoc = ae.associate(self.host, self.port, ae_title=self.ae_title)
        if not assoc.is_established:
            return False
        try:
            return getattr(assoc.send_c_echo(), "Status", None) == 0x0000
        finally:
            assoc.release()

    def send(self, files: list[Path], study: Path) -> int:
        """C-STORE ``files`` not yet listed in ``study/_sent.log``; each success is appended (and synced) to it.

        Returns:
            the number of instances sent now.

        Raises:
            SendError: naming the destination and the problem; what was sent before stays logged.
        """
        log = study / SENT_LOG
        sent = set(log.read_text().split()) if log.is_file() else set()
        pending = [(path, pydicom.dcmread(path, stop_before_pixels=True)) for path in files]
        pending = [(path, ds) for path, ds in pending if ds.SOPInstanceUID not in sent]
        if not pending:
            return 0
        ae = AE(ae_title=self.calling_ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        for sop_class in sorted({str(ds.SOPClassUID) for _, ds in pending}):
            ae.add_requested_context(sop_class)
        assoc = ae.associate(self.host, self.port, ae_title=self.ae_title)
        if not assoc.is_established:
            raise SendError(f"could not associate with {self}")
        try:
            with open(log, "a") as record:
                for path, ds in pending:
                    status = assoc.send_c_store(path)
                    code = getattr(status, "Status", None)
                    if code != 0x0000:
                        raise SendError(f"{self} refused {path.name}: status {code if code is None else hex(code)}")
                    record.write(f"{ds.SOPInstanceUID}\n")
                    record.flush()
                    os.fsync(record.fileno())
        finally:
            assoc.release()
        fsync_directory(study)
        return len(pending)
