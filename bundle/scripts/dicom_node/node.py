"""A DICOM node: a Storage SCP that spools studies, enhances each quiet study with inference.json, and sends the
derived PET series back to a destination AE (a PACS) with C-STORE.

One log line per study and event: ``received``, ``enhanced``, ``sent`` or ``failed: <reason>``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pydicom
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from scripts.enhance import SUMMARY_NAME

from .sender import DicomSender
from .spool import Spool, series_folders, write_durably

logger = logging.getLogger(__name__)

PET_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.128"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
T1_WORDS = ("T1", "MPRAGE", "SPGR", "TFE")
STUDY_ID = "study"
ENHANCED_MARKER, SENT_MARKER, OUTPUT_DIR = "_enhanced", "_sent", "_output"


class StudyFailed(Exception):
    """A study that cannot be enhanced or sent; the message is its reason."""


def _describe(ds: pydicom.Dataset) -> str:
    return " ".join(str(ds.get(k, "")) for k in ("SeriesDescription", "ProtocolName")).upper()


def study_inputs(study: Path) -> tuple[Path, Path | None, int]:
    """Find the PET series and, when present, a T1 MR series of a spooled study.

    Returns:
        ``(pet_folder, mri_folder or None, number of instances)``.

    Raises:
        StudyFailed: no PET series, several PET series, a PET series of an unsupported SOP class, a corrupt file.
    """
    pets, t1s, count = [], [], 0
    for series in series_folders(study):
        files = sorted(series.glob("*.dcm"))
        count += len(files)
        headers = []
        for path in files:
            try:
                ds = pydicom.dcmread(path)
                ds.pixel_array  # a truncated or damaged file fails here  # noqa: B018
                headers.append(ds)
            except Exception as exc:  # noqa: B902 - pydicom raises many types for damaged files
                raise StudyFailed(f"corrupt file {path.name} in series {series.name}: {exc}") from exc
        if not headers:
            continue
        first = headers[0]
        modality, sop_class = first.get("Modality"), str(first.get("SOPClassUID", ""))
        if modality == "PT":
            if sop_class != PET_IMAGE_STORAGE:
                raise StudyFailed(f"unsupported SOP class {sop_class} for PET series {series.name} (PET Image Storage)")
            pets.append(series)
        elif modality == "MR" and sop_class == MR_IMAGE_STORAGE and any(w in _describe(first) for w in T1_WORDS):
            t1s.append(series)
    if not pets:
        raise StudyFailed("no PET series in the study")
    if len(pets) > 1:
        raise StudyFailed(f"{len(pets)} PET series in the study; expected one")
    return pets[0], (t1s[0] if t1s else None), count


class DicomNode:
    """Receive studies over DICOM, enhance them with the bundle's inference workflow and send the results.

    Args:
        bundle_root: the bundle folder (its ``configs/`` give the inference workflow).
        spool_dir: spool root (see :mod:`scripts.dicom_node.spool`).
        ae_title: this node's AE title.
        port: DICOM port to listen on.
        host: address to listen on.
        allowed_calling_aes: calling AE titles accepted (associations from others are rejected); empty: any.
        quiet_time_s: a study is enhanced once no instance arrived for this long.
        destination: ``{"host", "port", "ae_title"}`` of the AE that receives the derived series.
        send_retries: attempts to send before the study is moved to ``failed/``.
        retry_interval_s: wait between attempts.
        inference_config_file: config file(s) of the inference workflow (e.g. with ``inference_onnx.json``).
        inference_overrides: overrides of the inference config (``num_inference_steps``, ``ckpt_path`` ...).
        poll_interval_s: how often the spool is checked for quiet studies.
    """

    def __init__(
        self,
        bundle_root: str,
        spool_dir: str,
        ae_title: str = "M2DIFF",
        port: int = 11112,
        host: str = "0.0.0.0",
        allowed_calling_aes: Sequence[str] = (),
        quiet_time_s: float = 30.0,
        destination: dict | None = None,
        send_retries: int = 3,
        retry_interval_s: float = 30.0,
        inference_config_file: str | Sequence[str] | None = None,
        inference_overrides: dict | None = None,
        poll_interval_s: float = 1.0,
    ) -> None:
        self.bundle_root = str(bundle_root)
        self.spool = Spool(spool_dir)
        self.ae_title, self.host, self.port = ae_title, host, int(port)
        self.allowed_calling_aes = [str(a) for a in allowed_calling_aes]
        self.quiet_time_s, self.poll_interval_s = float(quiet_time_s), float(poll_interval_s)
        destination = dict(destination or {})
        self.sender = DicomSender(destination["host"], destination["port"], destination["ae_title"], ae_title)
        self.send_retries, self.retry_interval_s = max(1, int(send_retries)), float(retry_interval_s)
        configs = os.path.join(self.bundle_root, "configs")
        self.inference_config_file = inference_config_file or os.path.join(configs, "inference.json")
        self.inference_overrides = dict(inference_overrides or {})
        self.meta_file = os.path.join(configs, "metadata.json")
        self.server = None
        self.stopping = threading.Event()

    # receiving -----------------------------------------------------------------------------------------------------
    def _on_store(self, event) -> int:
        ds = event.dataset
        try:
            self.spool.store(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, event.encoded_dataset())
        except (ValueError, AttributeError) as exc:
            logger.warning(f"refused an instance from {event.assoc.requestor.ae_title}: {exc}")
            return 0xC000  # cannot understand
        except OSError as exc:
            logger.error(f"could not spool an instance: {exc}")
            return 0xA700  # out of resources
        return 0x0000

    def start(self) -> None:
        """Start the Storage SCP (and Verification) in background threads."""
        ae = AE(ae_title=self.ae_title)
        ae.supported_contexts = AllStoragePresentationContexts
        ae.add_supported_context(Verification)
        if self.allowed_calling_aes:
            ae.require_calling_aet = self.allowed_calling_aes
        else:
            logger.warning("allowed_calling_aes is empty: any calling AE may store studies here")
        handlers = [(evt.EVT_C_STORE, self._on_store)]
        self.server = ae.start_server((self.host, self.port), block=False, evt_handlers=handlers)
        logger.info(f"DICOM node {self.ae_title} listening on {self.host}:{self.port}; spool {self.spool.root}")

    def stop(self, *args) -> None:
        """Stop after the current study (SIGTERM/SIGINT)."""
        self.stopping.set()

    # processing ----------------------------------------------------------------------------------------------------
    def serve(self) -> None:
        """Receive and process studies until stopped (claimed studies left by a crash are finished first)."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self.stop)
        self.start()
        try:
            for study in sorted(self.spool.folder("processing").iterdir()):
                logger.info(f"study {study.name}: resuming after a restart")
                self.process(study)
            while not self.stopping.is_set():
                for study in self.spool.quiet_studies(self.quiet_time_s):
                    self.process(self.spool.claim(study))
                self.stopping.wait(self.poll_interval_s)
        finally:
            self.server.shutdown()

    def process(self, study: Path) -> None:
        """Enhance (unless already done) and send one claimed study; move it to ``done/`` or ``failed/``."""
        try:
            if not (study / ENHANCED_MARKER).is_file():
                pet, mri, count = study_inputs(study)
                mode = f"with T1 series {mri.name}" if mri else "MRI-free (no T1 series)"
                logger.info(f"study {study.name}: received {count} instances; PET series {pet.name}, {mode}")
                start = time.perf_counter()
                self.enhance(study, pet, mri)
                logger.info(f"study {study.name}: enhanced in {time.perf_counter() - start:.1f} s")
            files = self.derived_files(study)
            sent = self.send(study, files)
            write_durably(b"", study / SENT_MARKER)
            self.spool.move(study, "done")
            logger.info(f"study {study.name}: sent {sent} instances to {self.sender}")
        except Exception as exc:  # noqa: B902 - one bad study must not stop the node (or fail again at each restart)
            reason = str(exc) if isinstance(exc, StudyFailed) else f"unexpected error: {type(exc).__name__}: {exc}"
            if not isinstance(exc, StudyFailed):
                logger.exception(f"study {study.name}: unexpected error")
            target = self.spool.move(study, "failed", reason)
            logger.error(f"study {study.name}: failed: {reason} (moved to {target})")

    def enhance(self, study: Path, pet: Path, mri: Path | None) -> None:
        """Run the inference workflow on the study; writes ``_output/`` and the ``_enhanced`` marker."""
        from monai.bundle import ConfigWorkflow

        output_dir = study / OUTPUT_DIR
        shutil.rmtree(output_dir, ignore_errors=True)  # a crash during the last attempt left partial results
        record = {"id": STUDY_ID, "pet": str(pet), **({"mri": str(mri)} if mri else {})}
        datalist = write_durably(json.dumps([record]).encode(), study / "_datalist.json")
        overrides = {**self.inference_overrides, "datalist": str(datalist), "output_dir": str(output_dir)}
        workflow = ConfigWorkflow(
            config_file=self.inference_config_file,
            meta_file=self.meta_file,
            logging_file=False,
            workflow_type="inference",
            bundle_root=self.bundle_root,
            **{**overrides, "save_dicom": True},
        )
        try:
            workflow.initialize()
            workflow.run()
        except Exception as exc:  # noqa: B902 - the summary names the study's problem; anything else is the reason
            raise StudyFailed(self._failure_reason(output_dir, exc)) from exc
        finally:
            workflow.finalize()
        write_durably(b"", study / ENHANCED_MARKER)

    @staticmethod
    def _failure_reason(output_dir: Path, exc: Exception) -> str:
        try:
            failed = [s for s in json.loads((output_dir / SUMMARY_NAME).read_text())["studies"] if s["status"] != "ok"]
            return failed[0]["message"]
        except (OSError, ValueError, KeyError, IndexError):
            while exc.__cause__ is not None:
                exc = exc.__cause__
            return f"inference failed: {type(exc).__name__}: {exc}"

    def derived_files(self, study: Path) -> list[Path]:
        """The derived DICOM files to send (the enhanced series)."""
        folder = study / OUTPUT_DIR / STUDY_ID
        files = sorted((folder / f"{STUDY_ID}_enhanced_dicom").glob("*.dcm"))
        if not files:
            raise StudyFailed(f"the inference wrote no derived DICOM series in {folder}")
        return files

    def send(self, study: Path, files: list[Path]) -> int:
        """Send with retries; raises :class:`StudyFailed` after the last failed attempt."""
        for attempt in range(1, self.send_retries + 1):
            try:
                return self.sender.send(files, study)
            except Exception as exc:  # noqa: B902 - network errors come in many types
                if attempt == self.send_retries:
                    raise StudyFailed(f"could not send to {self.sender} after {attempt} attempts: {exc}") from exc
                logger.warning(f"study {study.name}: send attempt {attempt} failed ({exc}); retrying")
                self.stopping.wait(self.retry_interval_s)
        return 0
