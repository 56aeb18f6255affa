"""The node's Storage SCP: an instance is acknowledged only once the spool holds it, and every association is logged.

Associations are accepted only when they call this node's AE title and, with ``allowed_calling_aes``, come from one
of those AE titles. Log lines: association accepted / rejected (with why) / released or aborted (calling AE, called
AE, peer address and port, instances stored), a study's first instance, an instance refused or not stored.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from .spool import Spool

logger = logging.getLogger(__name__)


class StorageReceiver:
    """Receive instances into the spool (C-STORE) and answer C-ECHO.

    Args:
        spool: where instances go (durably, before the success status).
        ae_title: this node's AE title (the called AE title required).
        host: address to listen on.
        port: DICOM port.
        allowed_calling_aes: calling AE titles accepted; empty: any.
    """

    def __init__(self, spool: Spool, ae_title: str, host: str, port: int, allowed_calling_aes: Sequence[str]) -> None:
        self.spool, self.ae_title, self.host, self.port = spool, ae_title, host, int(port)
        self.allowed_calling_aes = [str(a) for a in allowed_calling_aes]
        self.server = None
        self._arriving: set[str] = set()  # studies whose first instance was logged
        self._stored: dict[int, int] = {}  # instances stored per association
        self._lock = threading.Lock()

    @staticmethod
    def _peer(event) -> str:
        requestor = event.assoc.requestor
        called = getattr(getattr(requestor, "primitive", None), "called_ae_title", "?")
        return f"calling AE {requestor.ae_title}, called AE {called}, peer {requestor.address}:{requestor.port}"

    def _on_accepted(self, event) -> None:
        logger.info(f"association accepted: {self._peer(event)}")

    def _on_rejected(self, event) -> None:
        requestor = event.assoc.requestor
        called = getattr(getattr(requestor, "primitive", None), "called_ae_title", None)
        if called != self.ae_title:
            why = f"called AE is not {self.ae_title}"
        elif self.allowed_calling_aes and requestor.ae_title not in self.allowed_calling_aes:
            why = "calling AE not in allowed_calling_aes"
        else:
            why = "no acceptable presentation context or another protocol reason"
        logger.warning(f"association rejected ({why}): {self._peer(event)}")

    def _on_closed(self, event) -> None:
        with self._lock:
            stored = self._stored.pop(id(event.assoc), 0)
        how = "aborted" if event.event is evt.EVT_ABORTED else "released"
        logger.info(f"association {how}: {self._peer(event)}; {stored} instances stored")

    def _on_store(self, event) -> int:
        calling = event.assoc.requestor.ae_title
        try:
            ds = event.dataset
            self.spool.store(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, event.encoded_dataset())
        except (ValueError, AttributeError) as exc:
            logger.warning(f"refused an instance from {calling}: {exc}")
            return 0xC000  # cannot understand
        except OSError as exc:
            logger.error(f"could not spool an instance from {calling}: {exc}")
            return 0xA700  # out of resources
        with self._lock:
            self._stored[id(event.assoc)] = self._stored.get(id(event.assoc), 0) + 1
            first = ds.StudyInstanceUID not in self._arriving
            self._arriving.add(ds.StudyInstanceUID)
        if first:
            logger.info(f"study {ds.StudyInstanceUID}: first instance received from {self._peer(event)}")
        return 0x0000

    def start(self) -> None:
        """Start the Storage SCP (and Verification) in background threads."""
        ae = AE(ae_title=self.ae_title)
        ae.supported_contexts = AllStoragePresentationContexts
        ae.add_supported_context(Verification)
        ae.require_called_aet = True
        if self.allowed_calling_aes:
            ae.require_calling_aet = self.allowed_calling_aes
        else:
            logger.warning("allowed_calling_aes is empty: any calling AE may store studies here")
        handlers = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_RELEASED, self._on_closed),
            (evt.EVT_ABORTED, self._on_closed),
        ]
        self.server = ae.start_server((self.host, self.port), block=False, evt_handlers=handlers)
        logger.info(f"DICOM node {self.ae_title} listening on {self.host}:{self.port}; spool {self.spool.root}")

    def shutdown(self) -> None:
        """Stop listening (associations in progress are ended)."""
        if self.server is not None:
            self.server.shutdown()

    def forget(self, study_uid: str) -> None:
        """A study was claimed: its next instance starts a new study (and is logged as a first instance)."""
        with self._lock:
            self._arriving.discard(study_uid)
