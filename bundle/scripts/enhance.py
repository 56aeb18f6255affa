"""The inference engine: enhance one study per iteration, record its status, write ``summary.json`` at the end.

:class:`StudyEnhancer` is a ``SupervisedEvaluator`` whose iteration normalises the study (``pet_scale``,
``mri_scale``), runs the sampler (the config's ``inferer``), restores the PET units and fires the postprocessing
(invert the reorientation, convert units, save). Any error in a study is recorded and the run goes on with the next.
:class:`StudySummaryHandler` writes the summary and makes the run fail when a study failed.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.data import MetaTensor
from monai.engines import SupervisedEvaluator
from monai.engines.utils import IterationEvents
from torch import nn

from scripts.io.errors import StudyError, find_study_error, root_cause
from scripts.io.options import flag
from scripts.io.studies import ERROR_KEY
from scripts.io.writers import write_json
from scripts.sampler import mri_scale, pet_scale

logger = logging.getLogger(__name__)

SUMMARY_NAME = "summary.json"


class StudiesFailedError(RuntimeError):
    """Raised at the end of a run in which at least one study failed (after ``summary.json`` is written)."""


class _LoadError(Exception):
    """A study that the dataset already failed to load (the message names study, file and problem)."""


def require_weights(path: str | os.PathLike) -> str:
    """Check that the network weights exist before anything runs.

    Raises:
        FileNotFoundError: saying how to get or train the weights.
    """
    if not Path(path).is_file():
        message = (
            f"network weights {path} not found. Download the released bundle (it ships models/model.pt), or train "
            "them: python -m monai.bundle run --bundle_root bundle --config_file bundle/configs/train.json "
            "(see bundle/docs/README.md), or pass --ckpt_path /path/to/model.pt"
        )
        logger.error(message)
        raise FileNotFoundError(message)
    return str(path)


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


class StudyEnhancer(SupervisedEvaluator):
    """Enhance each study of ``val_data_loader`` with ``inferer(network, pet_low_dose, mri_t1)``.

    Batches are single study dicts (see :class:`scripts.io.StudyDataset`): ``pet`` and optional ``mri`` as
    ``(1, H, W, D)`` RAS ``MetaTensor`` volumes on the PET grid. The iteration output holds ``pred`` (enhanced PET in
    the input's units), ``uncertainty`` (per-voxel SD of the samples, when ``save_uncertainty``) and the study's
    ``status`` (``"ok"``/``"failed"``), ``message``, ``seconds``, ``network_calls``, ``mri_free`` and ``outputs``
    (filled by the postprocessing's saver).

    Args:
        device: device of the network.
        val_data_loader: loader of single studies (``batch_size=1`` with ``single_study_collate``).
        network: the x0-predicting network (weights loaded by a ``CheckpointLoader`` handler).
        inferer: a :class:`scripts.sampler.DDIMVolumeSampler`.
        postprocessing: transforms run on each study's batch + output (invert, convert units, save).
        val_handlers: event handlers (checkpoint loader, summary).
        save_uncertainty: keep the sample SD as ``uncertainty``.
        kwargs: passed to ``SupervisedEvaluator``.
    """

    def __init__(
        self,
        device: torch.device | str,
        val_data_loader: Any,
        network: nn.Module,
        inferer: Callable,
        postprocessing: Callable | None = None,
        val_handlers: Sequence | None = None,
        save_uncertainty: bool = False,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("decollate", False)
        super().__init__(
            device=device,
            val_data_loader=val_data_loader,
            network=network,
            inferer=inferer,
            postprocessing=postprocessing,
            val_handlers=val_handlers,
            **kwargs,
        )
        self.save_uncertainty = flag(save_uncertainty, "save_uncertainty")

    def _method(self, mri_free: bool) -> str:
        steps = len(getattr(self.inferer, "timesteps", [])) or "?"
        samples = getattr(self.inferer, "num_samples", 1)
        return f"{steps} DDIM steps, {samples} sample(s), {'MRI-free' if mri_free else 'MRI-guided'}"

    def _iteration(self, engine: SupervisedEvaluator, batchdata: dict) -> dict:
        study_id = str(batchdata.get("id"))
        output: dict[str, Any] = {"status": "failed", "message": "", "outputs": {}, "notes": [], "network_calls": 0}
        engine.state.output = output
        start = time.perf_counter()
        try:
            if batchdata.get(ERROR_KEY):  # the dataset could not load the study; its message is complete
                raise _LoadError(batchdata[ERROR_KEY])
            pet: MetaTensor = batchdata["pet"]
            mri: MetaTensor | None = batchdata.get("mri")
            mri_free = mri is None
            output["mri_free"] = mri_free
            output["method"] = self._method(mri_free)
            drf = f", dose reduction factor {batchdata['drf']}" if batchdata.get("drf") else ""
            if mri_free:
                logger.info(f"study '{study_id}': no MRI given: using the MRI-free path{drf}")
            else:
                logger.info(f"study '{study_id}': MRI-guided enhancement{drf}")
            scale = pet_scale(pet.as_tensor())
            pet_low_dose = (pet.as_tensor() / scale)[None].float()
            mri_t1 = None if mri_free else (mri.as_tensor() / mri_scale(mri.as_tensor()))[None].float()
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            mean, std = engine.inferer(engine.network, pet_low_dose, mri_t1)
            output["network_calls"] = int(getattr(engine.inferer, "network_calls", 0))
            output["network_calls_per_slice"] = getattr(engine.inferer, "network_calls_per_slice", None)
            meta = {key: value for key, value in pet.meta.items() if key != "affine"}
            output["pred"] = MetaTensor(mean[0].cpu() * scale, affine=pet.affine, meta=dict(meta))
            if self.save_uncertainty:
                output["uncertainty"] = MetaTensor(std[0].cpu() * scale, affine=pet.affine, meta=dict(meta))
            engine.fire_event(IterationEvents.MODEL_COMPLETED)  # runs the postprocessing: invert, units, save
            output = engine.state.output
            output["units"] = batchdata.get("units")
            output["status"] = "ok"
        except _LoadError as exc:
            output["message"] = str(exc)
        except Exception as exc:  # a failed study is recorded; the run goes on
            output = engine.state.output
            output["status"] = "failed"
            pet_path = batchdata.get("pet_input", batchdata.get("pet"))
            output["message"] = _error_message(exc, study_id, pet_path if isinstance(pet_path, str) else None)
            if not find_study_error(exc):
                logger.debug(f"study '{study_id}': unexpected error", exc_info=True)  # to the run's log file
            logger.error(output["message"])
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        output["id"] = study_id
        output["drf"] = batchdata.get("drf")
        output["seconds"] = round(time.perf_counter() - start, 3)
        for key in ("pred", "uncertainty", "pet", "mri"):  # free the volumes: the summary keeps only the record
            output.pop(key, None)
        engine.state.output = output
        return output


class StudySummaryHandler:
    """Log each study's result and write ``<output_dir>/summary.json``; fail the run if a study failed.

    ``summary.json``: ``{"complete", "started", "ok", "failed", "settings", "log", "studies": [...],
    "earlier_runs": [...]}`` with one record per study holding :attr:`FIELDS` (status "ok"/"failed", the error
    message, the written outputs, seconds, network calls ...). A run into a folder that already holds a summary keeps
    the earlier runs' summaries under ``earlier_runs`` (oldest first). Details of unexpected errors (tracebacks) go to
    the run's log file ``<output_dir>/logs/run-<started>.log``, not to the terminal.

    Args:
        output_dir: results folder.
        settings: run settings to record (steps, samples, seed ...).
        raise_on_failure: raise :class:`StudiesFailedError` after writing the summary when a study failed, so that
            ``python -m monai.bundle run`` exits with a non-zero status.
    """

    FIELDS = ("id", "status", "message", "outputs", "notes", "seconds", "network_calls")
    FIELDS += ("network_calls_per_slice", "mri_free", "drf", "method", "units")

    def __init__(self, output_dir: str, settings: dict | None = None, raise_on_failure: bool = True) -> None:
        self.output_dir = output_dir
        self.settings = dict(settings or {})
        self.raise_on_failure = raise_on_failure
        self.studies: list[dict] = []
        self.earlier_runs: list[dict] = []
        self.started_at = ""
        self.log_file: Path | None = None
        self._log_handler: logging.Handler | None = None

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
            logger.info(
                f"study '{record['id']}': done in {record['seconds']:.1f} s -> {record['outputs'].get('enhanced')}"
            )
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
        logger.info(f"{len(self.studies) - len(failed)} of {len(self.studies)} studies enhanced; summary: {path}")
        if failed and self.raise_on_failure:
            lines = "\n".join(f"  - {s['message']}" for s in failed)
            where = f"summary: {path}; details: {self.log_file}"
            message = f"{len(failed)} of {len(self.studies)} studies failed ({where}):\n{lines}"
            logger.error(message)
            raise StudiesFailedError(message)
