"""Knob values from the command line: ``--save_dicom false`` arrives as the string ``"false"`` (Python Fire)."""

from __future__ import annotations

from typing import Any

TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off", "none", "null", "")


def flag(value: Any, name: str = "flag") -> bool:
    """``True``/``False`` from a bool, a number or a word (true/false, yes/no, on/off, 1/0, null).

    Raises:
        ValueError: naming the knob when the value is not one of these.
    """
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return bool(value)


def output_units(value: Any) -> str:
    """``"bqml"`` or ``"suv"`` (case-insensitive).

    Raises:
        ValueError: for anything else.
    """
    units = str(value).strip().lower()
    if units not in ("bqml", "suv"):
        raise ValueError(f'output_units must be "bqml" (the input\'s Bq/ml) or "suv" (SUVbw), got {value!r}')
    return units
