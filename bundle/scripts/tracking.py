"""Experiment tracking: record every setting of a run, and the checkpoints it used, as MLflow parameters.

``--tracking mlflow`` makes MONAI add ``MLFlowHandler`` s that log the metrics and the executed config (an artifact),
but as parameters only ``max_epochs`` and ``epoch_length``. :func:`log_config_parameters` (called in the configs'
``initialize``) gives those handlers the settings of the executed config (overrides included) as parameters, with
their resolved values (``output_dir = /data/runs/m2diff``, not ``$@runs_dir + '/' + @method``), and for each
checkpoint the run reads its absolute path, its sha256 and the MLflow run that trained it.

That link comes from :data:`RUNS_FILE` beside the checkpoints: :func:`record_training_run` (train.json) writes there,
for each ``*.pt`` file a tracked training run saves, the file's sha256 and the run's id, experiment and tracking
URI. The first run that wrote a given file content is kept (a resumed run that did not replace ``model.pt`` does
not claim it).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Mapping

from .enhance import file_sha256

logger = logging.getLogger(__name__)

#: longest parameter value kept (MLflow's limit is larger; longer values are cut with an ellipsis)
MAX_VALUE_CHARS = 500
#: sub-dicts whose plain settings are parameters too (as ``<name>.<key>``: MLflow names allow no ``#``)
NESTED_SETTINGS = ("network_def",)
#: file beside the checkpoints naming the MLflow run that saved each of them (by sha256)
RUNS_FILE = "mlflow_runs.json"
#: a config value that is only a reference to another id (``"@context_slices"``)
_REFERENCE = re.compile(r"^@([\w#]+)$")


def _is_setting(value) -> bool:
    scalar = (bool, int, float, str, type(None))
    return isinstance(value, scalar) or (isinstance(value, list) and all(isinstance(v, scalar) for v in value))


def _is_expression(value) -> bool:
    """A config expression or reference (``$...``, ``@...``), or a list holding one: not a value to log as it is."""
    values = value if isinstance(value, list) else [value]
    return any(isinstance(v, str) and v.strip().startswith(("$", "@", "%")) for v in values)


def _plain(value):
    """A resolved value as JSON-able data (tuples as lists; paths, devices and other objects as text)."""
    if isinstance(value, (bool, int, float, str, type(None))):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


def _absolute(value):
    """A resolved relative path (``./../data/sim``) of an existing file or folder as an absolute one."""
    looks_like_path = isinstance(value, str) and (os.sep in value or value.startswith("."))
    return os.path.abspath(value) if looks_like_path and os.path.exists(value) else value


def _text(value) -> str:
    value = _plain(value)
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 3] + "..."


def config_parameters(config: dict, resolved: Mapping | None = None) -> dict[str, str]:
    """The settings of a config (top-level values and those of :data:`NESTED_SETTINGS`) as strings.

    Args:
        config: the executed config as written (its values may be expressions such as ``$@runs_dir + '/x'``).
        resolved: the values the config's expressions resolved to, by id (the options the config checks): they
            replace the written values; a value that is only a reference (``@context_slices``) takes the resolved
            (or plainly written) value of its target. Other expressions are left out, never logged unresolved.
    """
    resolved = dict(resolved or {})

    def value_of(value, key: str | None = None):
        """(whether the value is known, the value)."""
        if key in resolved:
            return True, _absolute(resolved[key])
        target = _REFERENCE.match(value.strip()) if isinstance(value, str) else None
        if target and target.group(1) in resolved:
            return True, _absolute(resolved[target.group(1)])
        if target and _is_setting(config.get(target.group(1), {})) and not _is_expression(config[target.group(1)]):
            return True, config[target.group(1)]
        return not _is_expression(value), value

    params = {}
    for key, value in config.items():
        if key.startswith("_") or key == "imports":
            continue
        if _is_setting(value):
            known, value = value_of(value, key)
            if known:
                params[key] = _text(value)
        elif key in NESTED_SETTINGS and isinstance(value, dict):
            for name, item in value.items():
                known, item = value_of(item) if _is_setting(item) and name != "_target_" else (False, None)
                if known:
                    params[f"{key}.{name}"] = _text(item)
    params.update({key: _text(_absolute(value)) for key, value in resolved.items() if key not in params})
    return params


def training_run(path: str | os.PathLike, digest: str | None = None) -> dict | None:
    """The MLflow run recorded (in :data:`RUNS_FILE` beside it) as having saved the checkpoint ``path``, or ``None``.

    Returns:
        ``{"run_id", "experiment_name", "tracking_uri", "file"}`` of the training run.
    """
    runs_file = os.path.join(os.path.dirname(os.path.abspath(path)), RUNS_FILE)
    if not os.path.isfile(runs_file):
        return None
    try:
        with open(runs_file) as f:
            records = json.load(f).get("checkpoints", {})
    except (OSError, ValueError, AttributeError):
        logger.warning(f"{runs_file} is not readable: the MLflow run that trained {path} is not recorded")
        return None
    return records.get(digest or file_sha256(path))


def checkpoint_parameters(checkpoints: Mapping | None) -> dict[str, str]:
    """``<name>`` (absolute path), ``<name>.sha256`` and, when recorded, ``<name>.training_run_id`` (and the run's
    experiment and tracking URI) of each checkpoint (``None``: not used, left out)."""
    params = {}
    for name, path in (checkpoints or {}).items():
        if not path:
            continue
        params[name] = os.path.abspath(path)
        if not os.path.isfile(path):
            continue
        params[f"{name}.sha256"] = digest = file_sha256(path)
        run = training_run(path, digest)
        if run:
            params[f"{name}.training_run_id"] = str(run.get("run_id"))
            params[f"{name}.training_experiment"] = str(run.get("experiment_name"))
            params[f"{name}.training_tracking_uri"] = str(run.get("tracking_uri"))
        else:
            logger.info(f"{path}: no MLflow training run recorded for it (in {RUNS_FILE} beside it)")
    return params


def _mlflow_handlers(handler_lists: Iterable[Iterable | None]) -> list:
    from monai.handlers import MLFlowHandler

    return [h for handlers in handler_lists for h in (handlers or []) if isinstance(h, MLFlowHandler)]


def log_config_parameters(
    *handler_lists: Iterable,
    handlers: Iterable | None = None,
    resolved: Mapping | None = None,
    checkpoints: Mapping | None = None,
) -> int:
    """Give each ``MLFlowHandler`` among the handlers the settings of the executed config it saves as artifact.

    Args:
        handler_lists: the engines' handler lists (``@train#handlers``, ``@validate#handlers`` or ``@handlers``).
        handlers: one more handler list, by name (a config's ``_target_`` passes keywords only).
        resolved: resolved values by config id (the config's checked options): see :func:`config_parameters`.
        checkpoints: checkpoint files the run reads, by name (``{"model_file": path}``; ``None`` values are left
            out): see :func:`checkpoint_parameters`.

    Returns:
        the number of handlers given parameters (0 without ``--tracking mlflow``).
    """
    count = 0
    for handler in _mlflow_handlers(handler_lists + ((handlers,) if handlers is not None else ())):
        configs = [str(p) for p in handler.artifacts if str(p).endswith(".json")]
        if not configs:
            continue
        with open(configs[0]) as f:
            params = config_parameters(json.load(f), resolved)
        params.update(checkpoint_parameters(checkpoints))
        handler.experiment_param = {**params, **(handler.experiment_param or {})}
        count += 1
    return count


def record_training_run(engine, handlers: Iterable | None, ckpt_dir: str) -> bool:
    """Write, after each epoch and at the end of ``engine``'s run, which MLflow run saved each ``*.pt`` of ``ckpt_dir``.

    Call after the checkpoint savers are attached (their files are then written when this runs). Nothing is
    recorded without an ``MLFlowHandler`` among ``handlers`` (no ``--tracking mlflow``, or not rank 0).

    Returns:
        whether the engine records its run.
    """
    from ignite.engine import Events

    mlflow_handlers = _mlflow_handlers([handlers])
    if not mlflow_handlers:
        return False
    handler = mlflow_handlers[0]
    run: dict = {}
    hashed: dict = {}  # path -> ((size, mtime), sha256): unchanged files are not hashed again

    def started(_engine) -> None:
        if handler.cur_run is not None:
            run.update(
                run_id=handler.cur_run.info.run_id,
                experiment_name=handler.experiment_name,
                tracking_uri=str(getattr(handler.client, "tracking_uri", "")),
            )

    def saved(_engine) -> None:
        if run:
            _record_checkpoints(ckpt_dir, run, hashed)

    engine.add_event_handler(Events.STARTED, started)
    engine.add_event_handler(Events.EPOCH_COMPLETED, saved)
    engine.add_event_handler(Events.COMPLETED, saved)
    return True


def _record_checkpoints(ckpt_dir: str, run: dict, hashed: dict) -> None:
    runs_file = os.path.join(ckpt_dir, RUNS_FILE)
    try:
        with open(runs_file) as f:
            records = json.load(f).get("checkpoints", {})
    except (OSError, ValueError, AttributeError):
        records = {}
    new = []
    for entry in sorted(os.scandir(ckpt_dir), key=lambda e: e.name) if os.path.isdir(ckpt_dir) else []:
        if not (entry.is_file() and entry.name.endswith(".pt")):
            continue
        stat = entry.stat()
        key = (stat.st_size, stat.st_mtime_ns)
        if hashed.get(entry.path, (None,))[0] != key:
            hashed[entry.path] = (key, file_sha256(entry.path))
        digest = hashed[entry.path][1]
        if digest not in records:
            records[digest] = {**run, "file": entry.name}
            new.append(entry.name)
    if new:
        description = "the MLflow run that saved each checkpoint file, by the file's sha256 (scripts/tracking.py)"
        tmp = f"{runs_file}.tmp"
        with open(tmp, "w") as f:
            json.dump({"description": description, "checkpoints": records}, f, indent=1)
        os.replace(tmp, runs_file)
        logger.info(f"wrote {runs_file}: MLflow run {run['run_id']} saved {', '.join(new)}")
