"""Command-line checks for ``python -m monai.bundle run``: an unknown ``--key`` stops the run before any work.

MONAI adds any ``--key value`` to the config, so a typo (``--num_sample 4`` for ``--num_samples 4``) would be
silently ignored. Every entrypoint config calls :func:`prepare_command_line` first in its ``initialize`` list: it
checks the keys, makes an uncaught error end in one line on the terminal (the traceback goes to a log file) and
silences notices nobody can act on (:func:`quiet_notices`).
"""

from __future__ import annotations

import ast
import difflib
import inspect
import logging
import os
import re
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path

#: separator of nested config ids (``validate#dataset#cache_rate``)
ID_SEP = "#"
#: options of MONAI's ``run`` and ``ConfigWorkflow`` that are not config ids
MONAI_OPTIONS = ("bundle_root", "workflow_type", "workflow_name", "properties_path", "args_file")
#: options earlier versions had, and why they are gone
REMOVED_OPTIONS = {
    "save_uncertainty": "removed in 0.4.0: the samples' spread did not rank the errors, so no uncertainty map is "
    "written (docs/README.md, 'No uncertainty map')",
    "send_uncertainty": "removed in 0.4.0: no uncertainty map is written (docs/README.md, 'No uncertainty map')",
}


def _monai_options() -> set[str]:
    from monai.bundle import ConfigWorkflow
    from monai.bundle.scripts import run

    names = set(MONAI_OPTIONS)
    for function in (run, ConfigWorkflow.__init__):
        names |= {p.name for p in inspect.signature(function).parameters.values() if p.kind is not p.VAR_KEYWORD}
    return names - {"self"}


def config_ids(config, prefix: str = "") -> set[str]:
    """Every id of a config (nested ids joined with ``#``, list items by index)."""
    ids = set()
    items = config.items() if isinstance(config, dict) else enumerate(config) if isinstance(config, list) else ()
    for key, value in items:
        name = f"{prefix}{ID_SEP}{key}" if prefix else str(key)
        ids.add(name)
        ids |= config_ids(value, name)
    return ids


def override_keys(argv: Sequence[str]) -> dict[str, str | None]:
    """``--key value`` / ``--key=value`` pairs of a command line (value ``None`` when absent)."""
    pairs: dict[str, str | None] = {}
    for index, token in enumerate(argv):
        if not token.startswith("--") or len(token) == 2:
            continue
        key, has_value, value = token[2:].partition("=")
        if not has_value:
            following = argv[index + 1] if index + 1 < len(argv) else None
            value = None if following is None or following.startswith("--") else following
        pairs[key] = value
    return pairs


def unknown_keys(argv: Sequence[str]) -> list[str]:
    """One message per ``--key`` of ``argv`` that is neither a config id nor a MONAI option, naming the closest.

    The configs are read (not resolved) from the command line's ``--config_file``.
    """
    from monai.bundle import ConfigParser

    pairs = override_keys(argv)
    if not pairs.get("config_file"):
        return []
    known = _monai_options() | config_ids(ConfigParser.load_config_files(_as_files(pairs["config_file"])))
    messages = []
    for key in pairs:
        if key in known:
            continue
        if key in REMOVED_OPTIONS:
            messages.append(f"option --{key} {REMOVED_OPTIONS[key]}")
            continue
        close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
        hint = f"; did you mean --{close[0]}?" if close else ""
        messages.append(f"unknown option --{key}{hint} (see the config's _desc_ for the options)")
    return messages


def _as_files(value: str) -> str | list[str]:
    """``--config_file`` as fire passes it on: one path, a comma-separated string or a Python list literal."""
    text = str(value).strip()
    if text.startswith("["):
        return [str(f) for f in ast.literal_eval(text)]
    return text


def launched_by_monai_bundle(argv: Sequence[str]) -> bool:
    """Whether ``argv`` is a ``python -m monai.bundle`` command line (not a Python caller of ``ConfigWorkflow``)."""
    parts = Path(argv[0]).parts if argv else ()
    return len(parts) >= 3 and parts[-3:] == ("monai", "bundle", "__main__.py")


def check_override_keys(argv: Sequence[str] | None = None) -> None:
    """Stop with one line per unknown ``--key`` of a ``python -m monai.bundle run`` command line.

    Args:
        argv: the command line (``None``: ``sys.argv``, checked only when launched as ``python -m monai.bundle``,
            so that Python callers of ``ConfigWorkflow`` are not affected).

    Raises:
        SystemExit: exit status 2 after printing the messages to stderr (no traceback).
    """
    if argv is None:
        if not launched_by_monai_bundle(sys.argv):
            return
        argv = sys.argv
    messages = unknown_keys(list(argv))
    if messages:
        print("\n".join(messages), file=sys.stderr)
        raise SystemExit(2)


#: MONAI's wrappers around the error raised while building or running a config item
MONAI_WRAPPERS = ("Failed to instantiate", "Failed to evaluate", "Failed to run")


def user_error(exc: BaseException) -> BaseException:
    """The error behind MONAI's ``RuntimeError("Failed to evaluate ...")`` wrappers: the one saying what is wrong."""
    seen = set()
    while isinstance(exc, RuntimeError) and str(exc).strip().startswith(MONAI_WRAPPERS) and id(exc) not in seen:
        seen.add(id(exc))
        cause = exc.__cause__ or exc.__context__
        if cause is None:
            break
        exc = cause
    return exc


def install_error_hook(log_dir: str | None = None) -> None:
    """Show an uncaught error of a command-line run as one line; write its traceback to a log file.

    The traceback goes to ``<log_dir>/logs/traceback-<time>.log`` (the system's temporary folder when ``log_dir``
    cannot be written). Set the environment variable ``M2DIFF_DEBUG=1`` to keep Python's own traceback on the
    terminal. Installed only for ``python -m monai.bundle`` runs.
    """
    if os.environ.get("M2DIFF_DEBUG") or not launched_by_monai_bundle(sys.argv):
        return
    default_hook = sys.excepthook

    def hook(exc_type, exc, tb) -> None:
        if not isinstance(exc, Exception):
            return default_hook(exc_type, exc, tb)
        error = user_error(exc)
        message = str(error).strip() or type(error).__name__
        if type(error).__name__ == "StudiesFailedError":  # not a crash: the failed studies are listed above
            print(f"ERROR: {message.splitlines()[0].rstrip(':')}", file=sys.stderr)
            return
        text = "".join(traceback.format_exception(exc_type, exc, tb))
        log_file = _write_traceback(text, log_dir)
        if not isinstance(error, (OSError, ValueError)) and type(error).__name__ not in message:
            message = f"{type(error).__name__}: {message}"
        print(f"ERROR: {message} (traceback: {log_file})", file=sys.stderr)

    sys.excepthook = hook


def _write_traceback(text: str, log_dir: str | None) -> str:
    name = f"traceback-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.log"
    for folder in ([os.path.join(log_dir, "logs")] if log_dir else []) + [tempfile.gettempdir()]:
        try:
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, name)
            with open(path, "w") as f:
                f.write(text)
            return path
        except OSError:
            continue
    return "not written"


#: notices nobody can act on, by the logger that prints them: MONAI builds its nvImageCodec DICOM reader in every
#: ``LoadImage`` and says each time that nvImageCodec (GPU decoding of compressed DICOM) is missing; the bundle
#: reads DICOM with pydicom itself (scripts/io/dicom.py), so installing nvImageCodec changes nothing
QUIET_LOG_MESSAGES = {"monai.data.nvimgcodec_pydicom_plugin": ("nvImageCodec is not available",)}
#: the same notice as a Python warning, by the start of its message
QUIET_WARNINGS = ("NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register",)


class _DropMessages(logging.Filter):
    """Drops a logger's records whose message starts with one of ``starts``."""

    def __init__(self, starts: tuple[str, ...]) -> None:
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.starts)


def quiet_notices() -> None:
    """Silence :data:`QUIET_LOG_MESSAGES` and :data:`QUIET_WARNINGS` (nothing else: other warnings still show)."""
    for name, starts in QUIET_LOG_MESSAGES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(starts))
    for text in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(text), category=UserWarning)


def prepare_command_line(log_dir: str | None = None) -> None:
    """First step of every entrypoint: refuse unknown ``--key`` options, install the one-line error hook and silence
    the notices nobody can act on (:func:`quiet_notices`)."""
    check_override_keys()
    install_error_hook(log_dir)
    quiet_notices()
