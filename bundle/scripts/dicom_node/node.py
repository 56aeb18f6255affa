"""A DICOM node: a Storage SCP that spools studies, enhances each complete and quiet study with inference.json, and
sends the derived PET series back to a destination AE (a PACS) with C-STORE.

Its audit log (``<spool_dir>/audit.log``, rotated) has one line per event: start (and the start-up checks),
association accepted / rejected / released (:mod:`.receiver`), a study's first instance, ``received`` (instance
counts), the series chosen and left out, ``waiting for the rest`` (incomplete), ``enhanced``, ``could not send``,
``sent`` (the derived series UID), ``failed: <reason>`` (and the failure report, with ``report_failures``), stop.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import shutil
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pydicom

from scripts import option_checks
from scripts.enhance import SUMMARY_NAME, bundle_version, file_sha256, require_weights

from .receiver import StorageReceiver
from .report import failure_report
from .sender import DicomSender
from .series import StudyFailed, StudyIncomplete, choose_pet, choose_t1, missing_slices, read_series
from .spool import Spool, series_folders, write_durably

logger = logging.getLogger(__name__)

STUDY_ID = "study"
ENHANCED_MARKER, SENT_MARKER, OUTPUT_DIR = "_enhanced", "_sent", "_output"
AUDIT_LOG, AUDIT_LOG_BYTES, AUDIT_LOG_BACKUPS = "audit.log", 10_000_000, 5
REPORT_FILE = "_report/failure_report.dcm"
#: override keys of the inference config that name files or folders (resolved against the bundle root)
PATH_SUFFIXES = ("_path", "_file", "_dir")


@dataclass
class StudyInputs:
    """The series of a study that the node enhances."""

    pet: Path
    mri: Path | None
    count: int
    series: int
    notes: list[str] = field(default_factory=list)


def study_inputs(study: Path, check_pixels: bool = True) -> StudyInputs:
    """Choose the PET and T1 series of a spooled study (:mod:`.series`) and check that they are complete.

    Raises:
        StudyIncomplete: a chosen series lacks slices its headers declare, or has a gap in its positions.
        StudyFailed: no PET series to enhance, several, an unsupported one, a corrupt file (``check_pixels``).
    """
    series = read_series(study)
    pet, notes = choose_pet(series)
    mri, mr_notes = choose_t1(series)
    for role, chosen in (("PET", pet), ("T1", mri)):
        missing = missing_slices(chosen) if chosen is not None else None
        if missing:
            raise StudyIncomplete(f"{role} series {chosen.name}: {missing}")
        if check_pixels and chosen is not None:
            _check_pixels(chosen.files)
    count = sum(len(s.files) for s in series)
    return StudyInputs(pet.folder, mri.folder if mri else None, count, len(series), notes + mr_notes)


def _check_pixels(files: list[Path]) -> None:
    for path in files:
        try:
            pydicom.dcmread(path).pixel_array  # a truncated or damaged file fails here  # noqa: B018
        except Exception as exc:  # noqa: B902 - pydicom raises many types for damaged files
            raise StudyFailed(f"corrupt file {path.name} in series {path.parent.name}: {exc}") from exc


def resolve(bundle_root: str | os.PathLike, path: str | os.PathLike) -> Path:
    """``path`` itself when absolute, else relative to the bundle root."""
    return Path(path) if os.path.isabs(path) else Path(bundle_root) / path


class DicomNode:
    """Receive studies over DICOM, enhance them with the bundle's inference workflow and send the results.

    Args:
        bundle_root: the bundle folder; relative paths of the other options are resolved against it.
        spool_dir: spool root (see :mod:`scripts.dicom_node.spool`); holds the audit log.
        ae_title: this node's AE title; associations calling another title are rejected.
        port: DICOM port to listen on.
        host: address to listen on.
        allowed_calling_aes: calling AE titles accepted (associations from others are rejected); empty: any.
        quiet_time_s: a complete study is enhanced once no instance arrived for this long.
        incomplete_timeout_s: a study still incomplete this long after its last instance goes to ``failed/``.
        destination: ``{"host", "port", "ae_title"}`` of the AE that receives the derived series.
        send_timeout_s: an enhanced study that could not be sent stays in ``processing/`` and is sent again every
            ``retry_interval_s``, until this long after its enhancement; then it goes to ``failed/``.
        retry_interval_s: wait between send attempts.
        inference_config_file: config file(s) of the inference workflow (e.g. with ``configs/inference_onnx.json``).
        inference_overrides: overrides of the inference config (``num_inference_steps``, ``ckpt_path`` ...).
        poll_interval_s: how often the spool is checked for quiet studies.
        threads: torch's intra-op threads and, unless ``inference_overrides`` names them, ONNX Runtime's
            (``onnx_threads``); 0: the libraries' defaults (every core).
        network_log: log pynetdicom's per-message details (off: its warnings and errors only).
        report_failures: send a failed study's reason to the destination as a Basic Text SR in the patient's study.
    """

    def __init__(
        self,
        bundle_root: str,
        spool_dir: str,
        ae_title: str = "M2DIFF",
        port: int = 11112,
        host: str = "0.0.0.0",
        allowed_calling_aes: Sequence[str] = (),
        quiet_time_s: float = 10.0,
        incomplete_timeout_s: float = 600.0,
        destination: dict | None = None,
        send_timeout_s: float = 86400.0,
        retry_interval_s: float = 30.0,
        inference_config_file: str | Sequence[str] = "configs/inference.json",
        inference_overrides: dict | None = None,
        poll_interval_s: float = 1.0,
        threads: int = 1,
        network_log: bool = False,
        report_failures: bool = False,
    ) -> None:
        self.bundle_root = os.path.abspath(bundle_root)
        self.spool = Spool(resolve(self.bundle_root, spool_dir))
        self.ae_title, self.port = ae_title, int(port)
        self.receiver = StorageReceiver(self.spool, ae_title, host, self.port, allowed_calling_aes)
        self.quiet_time_s, self.poll_interval_s = float(quiet_time_s), float(poll_interval_s)
        self.incomplete_timeout_s = float(incomplete_timeout_s)
        destination = dict(destination or {})
        self.sender = DicomSender(destination["host"], destination["port"], destination["ae_title"], ae_title)
        self.send_timeout_s, self.retry_interval_s = float(send_timeout_s), float(retry_interval_s)
        files = (
            [inference_config_file] if isinstance(inference_config_file, (str, os.PathLike)) else inference_config_file
        )
        self.inference_config_file = [str(resolve(self.bundle_root, f)) for f in files]
        self.inference_overrides = {
            key: str(resolve(self.bundle_root, value)) if self._is_path_option(key, value) else value
            for key, value in dict(inference_overrides or {}).items()
        }
        self.meta_file = os.path.join(self.bundle_root, "configs", "metadata.json")
        self.threads, self.network_log, self.report_failures = int(threads), bool(network_log), bool(report_failures)
        if self.threads > 0:
            self.inference_overrides.setdefault("onnx_threads", self.threads)  # unused without ONNX Runtime
        self.stopping = threading.Event()
        self._waiting: dict[str, float] = {}  # incomplete studies: their newest instance's time when last checked
        self._unsent: dict[Path, float] = {}  # enhanced studies whose send failed: the time of the last attempt

    @staticmethod
    def _is_path_option(key: str, value) -> bool:
        return isinstance(value, str) and key.endswith(PATH_SUFFIXES) and value[:1] not in ("$", "@", "%")

    # start-up ------------------------------------------------------------------------------------------------------
    def open_audit_log(self) -> Path:
        """Add the rotating audit log to the node's loggers; quiet pynetdicom unless ``network_log``."""
        path = self.spool.root / AUDIT_LOG
        package = logging.getLogger(__package__)
        package.setLevel(logging.INFO)
        if not any(getattr(h, "baseFilename", None) == str(path.resolve()) for h in package.handlers):
            handler = logging.handlers.RotatingFileHandler(
                path, maxBytes=AUDIT_LOG_BYTES, backupCount=AUDIT_LOG_BACKUPS, encoding="utf-8"
            )
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            package.addHandler(handler)
        logging.getLogger("pynetdicom").setLevel(logging.DEBUG if self.network_log else logging.WARNING)
        return path

    def check(self) -> None:
        """Start-up checks: the inference configs exist and parse, the weights load (a state_dict with torch, an
        ``.onnx`` graph with ONNX Runtime; sha256 logged and compared with ``<weights>.sha256``), the destination
        answers C-ECHO (a warning when it does not).

        Raises:
            FileNotFoundError: a config file or the weights are missing.
            ValueError: an inference override's value is not what that option expects (``scripts.option_checks``).
            RuntimeError: the weights cannot be loaded.
        """
        import torch
        from monai.bundle import ConfigParser

        for path in self.inference_config_file:
            if not Path(path).is_file():
                raise FileNotFoundError(
                    f"inference_config_file {path} not found (relative paths are resolved against the bundle root "
                    f"{self.bundle_root})"
                )
        parser = ConfigParser()
        parser.read_config(self.inference_config_file)
        parser.update({"bundle_root": self.bundle_root, **self.inference_overrides})
        values = {  # paths: the checks below name what is missing
            name: parser.get_parsed_content(name)
            for name, expected in option_checks.EXPECTED.items()
            if name in self.inference_overrides and not isinstance(expected, (option_checks.Path, option_checks.Paths))
        }
        problems = option_checks.option_problems(values)
        if problems:
            raise ValueError("inference_overrides: " + "; ".join(problems))
        weights = require_weights(str(parser.get_parsed_content("ckpt_path")))
        try:
            if weights.endswith(".onnx"):
                import onnxruntime

                onnxruntime.InferenceSession(weights, providers=["CPUExecutionProvider"])
            else:
                torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: B902 - torch raises many types for a damaged file
            raise RuntimeError(f"network weights {weights} cannot be loaded: {type(exc).__name__}: {exc}") from exc
        self._log_weights(Path(weights))
        if self.sender.echo():
            logger.info(f"destination {self.sender} answers C-ECHO")
        else:
            logger.warning(
                f"destination {self.sender} does not answer C-ECHO; studies are received and enhanced, and their "
                f"results wait in the spool (sent again every {self.retry_interval_s:g} s for "
                f"{self.send_timeout_s:g} s)"
            )

    @staticmethod
    def _log_weights(weights: Path) -> None:
        digest, recorded = file_sha256(weights), weights.with_name(f"{weights.name}.sha256")
        expected = recorded.read_text().split()[0] if recorded.is_file() and recorded.read_text().strip() else None
        if expected not in (None, digest):
            logger.warning(f"network weights {weights}: sha256 {digest}, not the {expected} recorded in {recorded}")
        else:
            logger.info(f"network weights {weights}: sha256 {digest}" + (" (as recorded)" if expected else ""))

    def start(self) -> None:
        """Start receiving (Storage SCP and Verification) in background threads."""
        self.receiver.start()

    def stop(self, signum: int | None = None, frame=None) -> None:
        """Stop after the current study (SIGTERM/SIGINT)."""
        why = signal.Signals(signum).name if signum else "requested"
        logger.info(f"stopping ({why}) after the current study")
        self.stopping.set()

    # processing ----------------------------------------------------------------------------------------------------
    def serve(self) -> None:
        """Check, then receive and process studies until stopped (claimed studies left by a crash are finished
        first)."""
        audit = self.open_audit_log()
        logger.info(
            f"starting M2Diff {bundle_version(self.bundle_root)} DICOM node {self.ae_title}: audit log {audit}, "
            f"inference {self.inference_config_file}, quiet {self.quiet_time_s:g} s, incomplete timeout "
            f"{self.incomplete_timeout_s:g} s, destination {self.sender}"
        )
        if self.threads > 0:
            import torch

            torch.set_num_threads(self.threads)
        try:
            self.check()
        except Exception as exc:
            logger.error(f"start-up check failed: {exc}")
            raise
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self.stop)
            signal.signal(signal.SIGINT, self.stop)
        self.start()
        try:
            for study in sorted(self.spool.folder("processing").iterdir()):
                logger.info(f"study {study.name}: resuming after a restart")
                self.process(study)
            while not self.stopping.is_set():
                try:
                    self.poll()
                    self.resend()
                except Exception:  # noqa: B902 - receiving goes on; the spool is re-read at the next poll
                    logger.exception("error while polling the spool")
                self.stopping.wait(self.poll_interval_s)
        finally:
            self.receiver.shutdown()
            logger.info(f"DICOM node {self.ae_title} stopped")

    def poll(self) -> None:
        """Claim and process every quiet study that is complete (or incomplete past ``incomplete_timeout_s``)."""
        for study, newest in self.spool.quiet_studies(self.quiet_time_s):
            if self.stopping.is_set() or not self.ready(study, newest):
                continue
            claimed = self.spool.claim(study, newest)
            if claimed is None:  # an instance arrived meanwhile
                continue
            self.receiver.forget(study.name)
            self.process(claimed)

    def resend(self) -> None:
        """Send again the results that could not be sent, every ``retry_interval_s``."""
        for study, last in sorted(self._unsent.items(), key=lambda item: item[1]):
            if not self.stopping.is_set() and time.time() - last >= self.retry_interval_s:
                self.process(study)

    def ready(self, study: Path, newest: float) -> bool:
        """Whether a quiet study is complete by its headers, or has been incomplete for ``incomplete_timeout_s``.

        A study that cannot be enhanced for another reason is ready too: processing moves it to ``failed/``.
        """
        waited = time.time() - newest
        if self._waiting.get(study.name) == newest and waited < self.incomplete_timeout_s:
            return False  # nothing new since the last check
        try:
            study_inputs(study, check_pixels=False)
        except StudyIncomplete as exc:
            if waited < self.incomplete_timeout_s:
                logger.info(f"study {study.name}: waiting for the rest: {exc}")
                self._waiting[study.name] = newest
                return False
        except Exception:  # noqa: B902 - processing moves the study to failed/ with the reason
            pass
        self._waiting.pop(study.name, None)
        return True

    def process(self, study: Path) -> None:
        """Enhance (unless already done) and send one claimed study; move it to ``done/`` or ``failed/``."""
        try:
            if not (study / ENHANCED_MARKER).is_file():
                counts = [len(list(series.glob("*.dcm"))) for series in series_folders(study)]
                logger.info(
                    f"study {study.name}: received {sum(counts)} instances in {len(counts)} series "
                    f"({' + '.join(map(str, counts))})"
                )
                inputs = study_inputs(study)
                mode = f"T1 series {inputs.mri.name}" if inputs.mri else "MRI-free (no T1 series)"
                logger.info(f"study {study.name}: enhancing PET series {inputs.pet.name}, {mode}")
                for note in inputs.notes:
                    logger.info(f"study {study.name}: {note}")
                start = time.perf_counter()
                self.enhance(study, inputs.pet, inputs.mri)
                logger.info(f"study {study.name}: enhanced in {time.perf_counter() - start:.1f} s")
            files = self.derived_files(study)
            derived_uid = pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID
            sent = self.send(study, files)
            if sent is None:
                return
            write_durably(b"", study / SENT_MARKER)
            self.spool.move(study, "done")
            logger.info(f"study {study.name}: sent {sent} instances of derived series {derived_uid} to {self.sender}")
        except Exception as exc:  # noqa: B902 - one bad study must not stop the node (or fail again at each restart)
            self._unsent.pop(study, None)
            reason = str(exc) if isinstance(exc, StudyFailed) else f"unexpected error: {type(exc).__name__}: {exc}"
            if isinstance(exc, StudyIncomplete):
                reason = f"incomplete, no instance for {self.incomplete_timeout_s:g} s, no result sent: {reason}"
            elif not isinstance(exc, StudyFailed):
                logger.exception(f"study {study.name}: unexpected error")
            if self.report_failures:
                self.report_failure(study, reason)
            target = self.spool.move(study, "failed", reason)
            logger.error(f"study {study.name}: failed: {reason} (moved to {target})")

    def report_failure(self, study: Path, reason: str) -> None:
        """Send the reason to the destination as a short report (:mod:`.report`); a warning when it cannot be."""
        try:
            source = next(f for series in series_folders(study) for f in sorted(series.glob("*.dcm")))
            header = pydicom.dcmread(source, stop_before_pixels=True)
            report = failure_report(header, reason, bundle_version(self.bundle_root), study / REPORT_FILE)
            self.sender.send([report], study)
            logger.info(f"study {study.name}: failure report sent to {self.sender}")
        except Exception as exc:  # noqa: B902 - the study fails anyway; the report is a courtesy
            logger.warning(f"study {study.name}: failure report not sent: {type(exc).__name__}: {exc}")

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

    def send(self, study: Path, files: list[Path]) -> int | None:
        """Send the derived series; ``None`` when the destination failed (the study stays for :meth:`resend`).

        Raises:
            StudyFailed: the study's results could not be sent for ``send_timeout_s`` since its enhancement.
        """
        try:
            sent = self.sender.send(files, study)
        except Exception as exc:  # noqa: B902 - network errors come in many types
            waited = time.time() - (study / ENHANCED_MARKER).stat().st_mtime
            if waited >= self.send_timeout_s:
                self._unsent.pop(study, None)
                raise StudyFailed(f"could not send to {self.sender} for {waited:.0f} s: {exc}") from exc
            logger.warning(
                f"study {study.name}: could not send ({exc}); the result waits in {study.parent.name}/, next attempt "
                f"in {self.retry_interval_s:g} s"
            )
            self._unsent[study] = time.time()
            return None
        self._unsent.pop(study, None)
        return sent
