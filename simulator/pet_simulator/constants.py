"""Physical constants of the simulator: one place for each number."""

from __future__ import annotations

import math

F18_HALF_LIFE_S = 6586.2  # fluorine-18 half-life in seconds (DICOM RadionuclideHalfLife of FDG)


def fwhm_to_sigma(fwhm):
    """Standard deviation of a Gaussian of the given full width at half maximum (same units; number or array)."""
    return fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
