"""What each option of the entrypoint configs accepts, checked before any study is read.

The ``run`` list of inference.json and the ``initialize`` lists of train.json and evaluate.json call
:func:`check_options` first, with each option's value (before ``scripts.cli.prepare_command_line``, whose log folder
is built from options). A bad value stops the run with one line per option naming it, the value and what is
expected (on the command line, with the unknown option names)::

    option num_samples: got 'four', expected an integer >= 1

Values arrive as Python Fire parses them: ``--num_samples 4`` is the integer 4, ``--save_dicom false`` the string
``"false"`` (read by :func:`scripts.io.options.flag`), ``--warm_start_timestep None`` is ``None``.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .cli import launched_by_monai_bundle, unknown_keys
from .io.options import flag

#: how to make the cohort that training and evaluation read
SIMULATE_COMMAND = (
    "python -m monai.bundle run --bundle_root bundle --config_file bundle/configs/simulate.json --output_dir data/sim"
)
DOSE_WORDS = ("random",)
#: words that mean ``None`` where an option takes them (``warm_start_timestep``)
NONE_WORDS = ("none", "null")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Number:
    """A number (``integer``: a whole one) from ``minimum`` to ``maximum``; ``above``/``below``: bounds excluded.

    ``none`` also accepts ``None``; ``words`` are accepted strings (case-insensitive), such as ``"auto"``;
    ``from_text``: a number written as text too (where the config converts it, ``int(@warm_start_timestep)``).
    """

    minimum: float | None = None
    maximum: float | None = None
    integer: bool = False
    above: bool = False
    below: bool = False
    none: bool = False
    words: tuple[str, ...] = ()
    from_text: bool = False

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.none
        if isinstance(value, str) and value.strip().lower() in self.words:
            return True
        if isinstance(value, str):
            number = _parse_number(value) if self.from_text else None
            return number is not None and self.accepts(number)
        if not _is_number(value) or (self.integer and not isinstance(value, int)):
            return False
        low_ok = self.minimum is None or (value > self.minimum if self.above else value >= self.minimum)
        high_ok = self.maximum is None or (value < self.maximum if self.below else value <= self.maximum)
        return low_ok and high_ok

    def describe(self, plural: bool = False) -> str:
        """``an integer >= 1``; ``plural``: ``integers >= 1``."""
        text = ("integers" if plural else "an integer") if self.integer else ("numbers" if plural else "a number")
        bounds = []
        if self.minimum is not None:
            bounds.append(f"{'>' if self.above else '>='} {self.minimum:g}")
        if self.maximum is not None:
            bounds.append(f"{'<' if self.below else '<='} {self.maximum:g}")
        text = " ".join([text, " and ".join(bounds)]) if bounds else text
        words = [f"'{word}'" for word in self.words if word not in NONE_WORDS]
        return _or(text, words + (["None"] if self.none else []))

    def __str__(self) -> str:
        return self.describe()


def _parse_number(text: str) -> int | float | None:
    """``"500"`` -> 500, ``"0.5"`` -> 0.5, anything else -> ``None``."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return None


def Integer(minimum: int | None = None, maximum: int | None = None, none: bool = False, **kwargs) -> Number:
    """A whole number from ``minimum`` to ``maximum`` (see :class:`Number`)."""
    return Number(minimum, maximum, integer=True, none=none, **kwargs)


@dataclass(frozen=True)
class Numbers:
    """A list of :class:`Number` ``each`` (``none``: or ``None``; ``single``: or one number)."""

    each: Number
    none: bool = False
    single: bool = False

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.none
        if isinstance(value, (list, tuple)):
            return len(value) > 0 and all(self.each.accepts(item) for item in value)
        return self.single and self.each.accepts(value)

    def __str__(self) -> str:
        text = f"a list of {self.each.describe(plural=True)}"
        text = f"{self.each} or {text}" if self.single else text
        return f"{text}, or None" if self.none else text


@dataclass(frozen=True)
class PerDoseLevel:
    """One :class:`Number` ``each``, or one per dose reduction factor (``{20: 4.0, 100: 6.0}``)."""

    each: Number

    def accepts(self, value: Any) -> bool:
        if not isinstance(value, Mapping):
            return self.each.accepts(value)
        return bool(value) and all(_parse_number(str(k)) is not None and self.each.accepts(v) for k, v in value.items())

    def __str__(self) -> str:
        return f"{self.each} or one per dose level ({{dose reduction factor: {self.each.describe(plural=True)}}})"


@dataclass(frozen=True)
class Text:
    """A non-empty name."""

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) and bool(value.strip())

    def __str__(self) -> str:
        return "a name (text)"


@dataclass(frozen=True)
class Flag:
    """``True`` or ``False``, or true/false, yes/no, on/off, 1/0 (:func:`scripts.io.options.flag`)."""

    def accepts(self, value: Any) -> bool:
        try:
            flag(value)
        except ValueError:
            return False
        return isinstance(value, (bool, str)) or value in (0, 1)

    def __str__(self) -> str:
        return "true or false"


@dataclass(frozen=True)
class Choice:
    """One of ``choices`` (case-insensitive for strings)."""

    choices: tuple[str, ...]

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) and value.strip().lower() in {c.lower() for c in self.choices}

    def __str__(self) -> str:
        first, *others = [f"'{choice}'" for choice in self.choices]
        return _or(first, others)


@dataclass(frozen=True)
class Path:
    """A path as text; ``exists``: a ``"file"`` or ``"folder"`` that must exist (``holds``: with this file in it);
    ``none``: or ``None``; ``hint``: where to get it."""

    exists: str = ""
    holds: str = ""
    none: bool = False
    hint: str = ""

    def accepts(self, value: Any) -> bool:
        if value is None or value == "":
            return self.none
        if not isinstance(value, (str, os.PathLike)):
            return False
        if self.holds:
            return os.path.isfile(os.path.join(value, self.holds))
        return {"file": os.path.isfile, "folder": os.path.isdir}.get(self.exists, lambda _: True)(value)

    def __str__(self) -> str:
        text = f"an existing {self.exists}" if self.exists else "a path (text)"
        text = f"{text} holding {self.holds}" if self.holds else text
        text = _or(text, ["None"] if self.none else [])
        return f"{text} ({self.hint})" if self.hint else text


@dataclass(frozen=True)
class Paths:
    """A list of paths, each as :class:`Path` ``each``."""

    each: Path

    def accepts(self, value: Any) -> bool:
        return isinstance(value, (list, tuple)) and all(self.each.accepts(item) for item in value)

    def __str__(self) -> str:
        return f"a list of paths, each {self.each}"


def _or(text: str, alternatives: Sequence[str]) -> str:
    return ", ".join([text, *alternatives[:-1]]) + f" or {alternatives[-1]}" if alternatives else text


_STEPS = Integer(1)
_DOSE = Number(0, above=True)

#: what each option accepts, by name (a config may narrow ``method``'s choices, see :func:`check_options`)
EXPECTED = {
    # inference.json
    "datalist": Path("file", hint="a JSON list of studies"),
    "output_dir": Path(),
    "ckpt_path": Path(
        "file", hint="network weights: the released bundle's models/model.pt, or train configs/train.json"
    ),
    "num_inference_steps": _STEPS,
    "warm_start_timestep": Integer(1, 999, none=True, words=NONE_WORDS, from_text=True),
    "num_samples": Integer(1),
    "slice_batch_size": Integer(1),
    "seed": Integer(0),
    "consistency_fwhm_mm": Number(0, none=True, words=("auto",)),
    "consistency_noise_pct": Number(0, above=True),
    "save_dicom": Flag(),
    "output_units": Choice(("bqml", "suv")),
    "save_qc_png": Flag(),
    "progress": Flag(),
    "consistency_significance": Number(0, none=True),
    "register_mri": Flag(),
    # train.json
    "dataset_dir": Path("folder", holds="datalist.json", hint=f"a simulated cohort; make one with {SIMULATE_COMMAND}"),
    "extra_training_dirs": Paths(Path("folder")),
    "runs_dir": Path(),
    "method": Text(),
    "experiment_name": Text(),
    "num_threads": Integer(0),
    "num_workers": Integer(0),
    "batch_size": Integer(1),
    "patch_size": Numbers(Integer(8)),
    "context_slices": Integer(0),
    "dose_reduction_factors": Numbers(_DOSE, none=True),
    "learning_rate": Number(0),
    "weight_decay": Number(0),
    "warmup_iterations": Integer(0),
    "epoch_length": Integer(1),
    "max_epochs": Integer(1),
    "pet_loss_weight": Number(0),
    "mri_loss_weight": Number(0),
    "consistency_loss_weight": Number(0),
    "lesion_loss_weight": Number(0),
    "lesion_oversampling": Number(0),
    "mri_dropout_prob": Number(0, 1),
    "val_interval": Integer(1),
    "val_num_studies": Integer(0),
    "val_num_slices": Integer(1),
    "val_dose_reduction_factor": _DOSE,
    "val_num_inference_steps": _STEPS,
    "ema_decay": Number(0, 1, below=True),
    "save_interval": Integer(0),
    "log_interval": Integer(1),
    "resume_ckpt": Path("file", none=True, hint="a checkpoint of an earlier run: <runs_dir>/<method>/checkpoints/"),
    "pretrained_ckpt": Path("file", none=True, hint="network weights, e.g. models/model.pt"),
    # evaluate.json
    "eval_split": Choice(("training", "validation", "test")),
    "eval_dose_reduction_factors": Numbers(Number(0, above=True, words=DOSE_WORDS), none=True),
    "eval_max_studies": Integer(1, none=True),
    "gaussian_fwhm_mm": PerDoseLevel(Number(0)),
    "save_panels": Flag(),
    "eval_dir": Path(),
}


def option_problems(options: Mapping[str, Any], choices: Mapping[str, Sequence[str]] | None = None) -> list[str]:
    """One line per option whose value ``EXPECTED`` (or ``choices``, for this config) does not accept.

    Raises:
        KeyError: for an option ``EXPECTED`` does not describe (a config listing a new option must add it).
    """
    expected = dict(EXPECTED, **{name: Choice(tuple(values)) for name, values in (choices or {}).items()})
    return [
        f"option {name}: got {value!r}, expected {expected[name]}"
        for name, value in options.items()
        if not expected[name].accepts(value)
    ]


def check_options(options: Mapping[str, Any], choices: Mapping[str, Sequence[str]] | None = None) -> None:
    """Stop before any study is read when an option's value is not what it expects.

    Args:
        options: each option's value, by name (names of ``EXPECTED``).
        choices: per-config choices narrowing an option (evaluate.json: ``method`` among its methods).

    Raises:
        SystemExit: status 2 after printing one line per bad option to stderr (``python -m monai.bundle`` runs).
        ValueError: the same lines, for Python callers of ``ConfigWorkflow``.
    """
    problems = option_problems(options, choices)
    if not problems:
        return
    if launched_by_monai_bundle(sys.argv):
        problems = unknown_keys(sys.argv) + problems  # all at once: prepare_command_line comes next
        print("\n".join(problems), file=sys.stderr)
        raise SystemExit(2)
    raise ValueError("\n".join(problems))
