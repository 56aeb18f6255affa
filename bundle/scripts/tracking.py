"""Experiment tracking: record every setting of a run as an MLflow parameter.

``--tracking mlflow`` makes MONAI add ``MLFlowHandler`` s that log the metrics and the executed config (an artifact),
but as parameters only ``max_epochs`` and ``epoch_length``. :func:`log_config_parameters` (called in the configs'
``initialize``) gives those handlers the settings of the executed config (overrides included) as parameters.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

#: longest parameter value kept (MLflow's limit is larger; longer values are cut with an ellipsis)
MAX_VALUE_CHARS = 500
#: sub-dicts whose plain settings are parameters too (as ``<name>.<key>``: MLflow names allow no ``#``)
NESTED_SETTINGS = ("network_def",)


def _is_setting(value) -> bool:
    scalar = (bool, int, float, str, type(None))
    return isinstance(value, scalar) or (isinstance(value, list) and all(isinstance(v, scalar) for v in value))


def _text(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 3] + "..."


def config_parameters(config: dict) -> dict[str, str]:
    """The plain settings of a config (top-level values and those of :data:`NESTED_SETTINGS`) as strings."""
    params = {}
    for key, value in config.items():
        if key.startswith("_") or key == "imports":
            continue
        if _is_setting(value):
            params[key] = _text(value)
        elif key in NESTED_SETTINGS and isinstance(value, dict):
            params.update({f"{key}.{k}": _text(v) for k, v in value.items() if _is_setting(v) and k != "_target_"})
    return params


def log_config_parameters(*handler_lists: Iterable) -> int:
    """Give each ``MLFlowHandler`` among the handlers the settings of the executed config it saves as artifact.

    Args:
        handler_lists: the engines' handler lists (``@train#handlers``, ``@validate#handlers`` or ``@handlers``).

    Returns:
        the number of handlers given parameters (0 without ``--tracking mlflow``).
    """
    from monai.handlers import MLFlowHandler

    count = 0
    for handler in (h for handlers in handler_lists for h in (handlers or [])):
        if not isinstance(handler, MLFlowHandler):
            continue
        configs = [str(p) for p in handler.artifacts if str(p).endswith(".json")]
        if not configs:
            continue
        with open(configs[0]) as f:
            params = config_parameters(json.load(f))
        handler.experiment_param = {**params, **(handler.experiment_param or {})}
        count += 1
    return count
