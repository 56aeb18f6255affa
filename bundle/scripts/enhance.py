"""The inference engine: enhance one study per iteration, record its status, write ``summary.json`` at the end.

Normalise (preprocessing: ``scripts.normalise.NormaliseStudyd``), sample (``inferer(inputs, network)``: the config's
``scripts.sampler.DDIMVolumeSampler``), restore (postprocessing: ``Invertd``, units, save). :class:`StudyEnhancer` is
MONAI's ``SupervisedEvaluator`` plus per-study failure capture; :class:`StudySummaryHandler` writes the summary and
records the failed studies, which :meth:`StudySummaryHandler.raise_if_failed` turns into the run's failure.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from monai.data import MetaTensor
from monai.data.utils import affine_to_spacing
from monai.engines import PrepareBatch, SupervisedEvaluator
from monai.utils import convert_to_tensor
from torch import nn

from scripts.io.errors import StudyError, find_study_error, root_cause
from scripts.io.studies import ERROR_KEY
from scripts.io.volumes import source_path
from scripts.io.writers import write_json

logger = logging.getLogger(__name__)

SUMMARY_NAME = "summary.json"


class StudiesFailedError(RuntimeError):
    """Raised at the end of a run in which at least one study failed (after ``summary.json`` is written)."""


class _LoadError(Exception):
    """A study that the dataset already failed to load (the message names study, file and problem)."""


def require_weights(path: str | os.PathLike) -> str:
    """Check that the network weights exist before anything runs; log their sha256 (warn if not the recorded one).

    Raises:
        FileNotFoundError: saying how to get or train the weights.
    """
    if not Path(path).is_file():
        message = (
            f"network weights {path} not found. Download the released bundle (it ships models/model.pt), or train "
            "them: python -m monai.bundle run --bundle_root bundle --config_file "
            "\"['bundle/configs/inference.json','bundle/configs/train.json']\" "
            "(see bundle/docs/README.md), or pass --ckpt_path /path/to/model.pt"
        )
        logger.error(message)
        raise FileNotFoundError(message)
    digest = file_sha256(path)
    recorded = Path(f"{path}.sha256")
    expected = recorded.read_text().split()[0] if recorded.is_file() and recorded.read_text().strip() else digest
    logger.info(f"network weights {path}: sha256 {digest}")
    if digest != expected:
        logger.warning(f"network weights {path}: sha256 differs from the one recorded in {recorded} ({expected})")
    return str(path)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file (the shipped weights' is recorded in ``models/model.pt.sha256``)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def bundle_version(bundle_root: str | os.PathLike) -> str:
    """The bundle's ``version`` from ``configs/metadata.json`` (``"unknown"`` when unavailable)."""
    try:
        return str(json.loads((Path(bundle_root) / "configs" / "metadata.json").read_text())["version"])
    except (OSError, ValueError, KeyError):
        return "unknown"


def _error_message(exc: BaseException, study_id: str, file: str | None) -> str:
    error = find_study_error(exc)
    if error is None:
        cause = root_cause(exc)
        memory = any(words in str(cause).lower() for words in ("out of memory", "can't allocate memory"))
        hint = " (lower --slice_batch_size to use less memory)" if memory else ""
        error = StudyError(f"{type(cause).__name__}: {cause}{hint}", file)
    return str(error.for_study(study_id))


class StudyPrepareBatch(PrepareBatch):
    """``(inputs, label, (), {"dose_reduction_factor": K})`` for an inferer: ``inputs`` = ``[PET, MRI]`` channels,
    ``(B, 2, H, W, D)``, or ``(B, 1, H, W, D)`` when the study has no MRI (the MRI-free path). The keywords also
    carry ``voxel_size_mm`` for the data consistency: the PET's voxel size as the network sees it (after the
    preprocessing's ``Spacingd``: the training spacing, not the input file's).

    Args:
        pet_key: the normalised low-dose PET, ``(C=1, H, W, D)`` per study.
        mri_key: the normalised MRI on the PET grid (absent or ``None``: no MRI).
        drf_key: the dose reduction factor (optional).
        batched: the loader collated a batch dimension (``False``: ``single_study_collate``'s single study).
        label_key: the target of the evaluator's metrics (training validation); ``None``: no target.
    """

    def __init__(
        self,
        pet_key: str = "pet",
        mri_key: str = "mri",
        drf_key: str = "drf",
        batched: bool = False,
        label_key: str | None = None,
    ):
        self.pet_key, self.mri_key, self.drf_key, self.batched = pet_key, mri_key, drf_key, batched
        self.label_key = label_key

    def __call__(self, batchdata: dict, device=None, non_blocking: bool = False, **kwargs):
        images = [batchdata[k] for k in (self.pet_key, self.mri_key) if batchdata.get(k) is not None]
        inputs = convert_to_tensor(torch.cat(images, dim=1 if self.batched else 0), track_meta=False).float()
        inputs = (inputs if self.batched else inputs[None]).to(device=device, non_blocking=non_blocking, **kwargs)
        drf = batchdata.get(self.drf_key)
        drf = int(drf[0]) if isinstance(drf, (list, torch.Tensor)) else drf  # collated: one value per batch
        pet = batchdata[self.pet_key]
        spacing = None
        if isinstance(pet, MetaTensor):  # a batch shares one grid here: the first study's voxel size
            affine = pet.affine[0] if pet.affine.ndim == 3 else pet.affine
            spacing = [float(v) for v in affine_to_spacing(affine, r=3)]
        label = (
            None if self.label_key is None else batchdata[self.label_key].to(device=device, non_blocking=non_blocking)
        )
        return inputs, label, (), {"dose_reduction_factor": drf, "voxel_size_mm": spacing}


class StudyEnhancer(SupervisedEvaluator):
    """MONAI's ``SupervisedEvaluator`` over single studies that records a failed study and goes on with the next.

    Each iteration is MONAI's (``prepare_batch``, ``inferer``, ``FORWARD_COMPLETED``, ``MODEL_COMPLETED`` with the
    postprocessing); the override only captures a study's failure. The iteration output is the study's record
    (``status`` "ok"/"failed", ``message``, ``seconds``, ``network_calls``, ``mri_free``, ``method``, ``outputs``,
    ``input_grid`` and ``network_grid``: the input's shape and voxel size, and those the network ran at).

    Args:
        device: device of the network.
        val_data_loader: loader of single studies (``batch_size=1`` with ``single_study_collate``).
        network: the x0-predicting network (weights loaded by a ``CheckpointLoader`` handler).
        inferer: a :class:`scripts.sampler.DDIMVolumeSampler`.
        kwargs: passed to ``SupervisedEvaluator`` (``prepare_batch``, ``postprocessing``, ``val_handlers``, ``amp``).
    """

    def __init__(self, device: torch.device | str, val_data_loader: Any, network: nn.Module, inferer: Any, **kwargs):
        kwargs.setdefault("decollate", False)
        kwargs.setdefault("prepare_batch", StudyPrepareBatch())
        if kwargs.get("val_handlers"):  # a handler the config disabled comes as None (evaluate.json's weights)
            kwargs["val_handlers"] = [handler for handler in kwargs["val_handlers"] if handler is not None]
        super().__init__(device=device, val_data_loader=val_data_loader, network=network, inferer=inferer, **kwargs)

    def _method(self, mri_free: bool) -> str:
        steps = len(getattr(self.inferer, "timesteps", [])) or "?"
        samples = getattr(self.inferer, "num_samples", 1)
        steps = f"{steps} DDIM step{'' if steps == 1 else 's'}"
        return f"{steps}, {samples} sample{'' if samples == 1 else 's'}, {'MRI-free' if mri_free else 'MRI-guided'}"

    def _iteration(self, engine: SupervisedEvaluator, batchdata: dict) -> dict:
        study_id = str(batchdata.get("id"))
        record: dict[str, Any] = {"status": "failed", "message": "", "outputs": {}, "notes": [], "network_calls": 0}
        start = time.perf_counter()
        try:
            if batchdata.get(ERROR_KEY):  # the dataset could not load the study; its message is complete
                raise _LoadError(batchdata[ERROR_KEY])
            mri_free = batchdata.get("mri") is None or not getattr(engine.inferer, "use_mri", True)
            batchdata["method"] = record["method"] = self._method(mri_free)
            record["mri_free"] = mri_free
            drf = f", dose reduction factor {batchdata['drf']}" if batchdata.get("drf") else ""
            path = "no MRI given: using the MRI-free path" if mri_free else "MRI-guided enhancement"
            logger.info(f"study '{study_id}': {path}{drf}")
            output = super()._iteration(engine, batchdata)
            record.update(outputs=output.get("outputs") or {}, notes=output.get("notes") or [], status="ok")
            record.update(units=batchdata.get("units"), network_calls=int(getattr(engine.inferer, "network_calls", 0)))
            record["network_calls_per_slice"] = getattr(engine.inferer, "network_calls_per_slice", None)
            record["consistency_fwhm_mm"] = (getattr(engine.inferer, "consistency_cutoffs_mm", None) or [None])[0]
            record.update(input_grid=batchdata.get("input_grid"), network_grid=batchdata.get("network_grid"))
            record["mri_registration"] = batchdata.get("mri_registration")
        except _LoadError as exc:
            record["message"] = str(exc)
        except Exception as exc:  # a failed study is recorded; the run goes on
            partial = engine.state.output if isinstance(engine.state.output, dict) else {}
            record.update(outputs=partial.get("outputs") or {}, notes=partial.get("notes") or [], status="failed")
            pet = batchdata.get("pet")
            pet_path = source_path(pet) if isinstance(pet, MetaTensor) else pet
            record["message"] = _error_message(exc, study_id, pet_path if isinstance(pet_path, str) else None)
            if not find_study_error(exc):
                logger.debug(f"study '{study_id}': unexpected error", exc_info=True)  # to the run's log file
            logger.error(record["message"])
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        record.update(id=study_id, drf=batchdata.get("drf"), seconds=round(time.perf_counter() - start, 3))
        engine.state.output = record  # the summary keeps only the record, not the volumes
        return record


class StudySummaryHandler:
    """Log each study's result and write ``<output_dir>/summary.json``; fail the run if a study failed.

    ``summary.json``: ``{"complete", "started", "ok", "failed", "settings", "log", "studies": [...],
    "earlier_runs": [...]}`` with one record per study holding :attr:`FIELDS` (status "ok"/"failed", the error
    message, the written outputs, seconds, network calls, the input grid and the grid the network ran on ...). A run
    into a folder that already holds a summary keeps the earlier runs' summaries under ``earlier_runs`` (oldest
    first). Details of unexpected errors (tracebacks) go to the run's log file ``<output_dir>/logs/run-<started>.log``,
    not to the terminal.

    Args:
        output_dir: results folder.
        settings: run settings to record (steps, samples, seed ...).
        raise_on_failure: let :meth:`raise_if_failed` (the config's ``run`` step after the engine) raise
            :class:`StudiesFailedError` when a study failed, so that ``python -m monai.bundle run`` exits with status 1.
    """

    FIELDS = ("id", "status", "message", "outputs", "notes", "seconds", "network_calls")
    FIELDS += ("network_calls_per_slice", "consistency_fwhm_mm", "mri_free", "drf", "method", "units")
    FIELDS += ("input_grid", "network_grid", "mri_registration")

    def __init__(self, output_dir: str, settings: dict | None = None, raise_on_failure: bool = True) -> None:
        self.output_dir = output_dir
        self.settings = dict(settings or {})
        self.raise_on_failure = raise_on_failure
        self.studies: list[dict] = []
        self.earlier_runs: list[dict] = []
        self.started_at = ""
        self.log_file: Path | None = None
        self._log_handler: logging.Handler | None = None
        self.failure: StudiesFailedError | None = None

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    @property
    def path(self) -> Path:
        return Path(self.output_dir) / SUMMARY_NAME

    def _read_earlier_runs(self) -> list[dict]:
        """The runs recorded in an existing ``summary.json`` (its own run last), oldest first."""
        try:
            earlier = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return []
        if not isinstance(earlier, dict):
            return []
        runs = earlier.pop("earlier_runs", None) or []
        return [run for run in runs if isinstance(run, dict)] + [earlier]

    def _open_log(self) -> None:
        self.log_file = Path(self.output_dir) / "logs" / f"run-{self.started_at.replace(':', '')}.log"
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self._log_handler = logging.FileHandler(self.log_file)
        self._log_handler.setLevel(logging.DEBUG)
        self._log_handler.setFormatter(logging.Formatter("%(asctime)s - %(name)s - %(levelname)s - %(message)s"))
        scripts_logger = logging.getLogger("scripts")
        scripts_logger.setLevel(logging.DEBUG)  # the console handlers keep their own (INFO) level
        scripts_logger.addHandler(self._log_handler)

    def _close_log(self) -> None:
        if self._log_handler is not None:
            logging.getLogger("scripts").removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None

    def started(self, engine: Any) -> None:
        self._close_log()  # left open by a run that stopped with an exception
        self.studies = []
        self.started_at = time.strftime("%Y-%m-%dT%H:%M:%S")
        self.earlier_runs = self._read_earlier_runs()
        self._open_log()

    def iteration_completed(self, engine: Any) -> None:
        output = engine.state.output or {}
        record = {key: output.get(key) for key in self.FIELDS}
        self.studies.append(record)
        if record["status"] == "ok":
            written = ", ".join(f"{kind} {path}" for kind, path in (record["outputs"] or {}).items())
            logger.info(f"study '{record['id']}': done in {record['seconds']:.1f} s; wrote {written}")
        write_json(self.summary(complete=False), self.path)  # progress, if killed later

    @property
    def failed(self) -> list[dict]:
        return [s for s in self.studies if s["status"] != "ok"]

    def summary(self, complete: bool = True) -> dict:
        """The summary so far; ``complete`` is ``False`` while studies remain."""
        return {
            "complete": complete,
            "started": self.started_at,
            "ok": len(self.studies) - len(self.failed),
            "failed": len(self.failed),
            "settings": self.settings,
            "log": None if self.log_file is None else str(self.log_file),
            "studies": self.studies,
            "earlier_runs": self.earlier_runs,
        }

    def completed(self, engine: Any) -> None:
        path = write_json(self.summary(), self.path)
        self._close_log()
        failed = self.failed
        enhanced = f"{len(self.studies) - len(failed)} of {len(self.studies)} studies enhanced"
        logger.info(f"{enhanced}; wrote the summary {path} and the log {self.log_file}")
        self.failure = None
        if failed:
            lines = "\n".join(f"  - {s['message']}" for s in failed)
            where = f"summary: {path}; details: {self.log_file}"
            self.failure = StudiesFailedError(
                f"{len(failed)} of {len(self.studies)} studies failed ({where}):\n{lines}"
            )

    def raise_if_failed(self) -> None:
        """The step after the engine's run: raise when a study failed, so that the run exits with status 1.

        Raised here rather than in the engine's handler, so that the framework does not report it as a crash
        (ignite's "Engine run is terminating due to exception"); the command line shows its first line once.

        Raises:
            StudiesFailedError: naming the failed studies, the summary and the log (unless ``raise_on_failure`` is
                off).
        """
        if self.failure is not None and self.raise_on_failure:
            raise self.failure
