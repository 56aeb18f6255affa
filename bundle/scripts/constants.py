"""Physical and geometric constants shared by the bundle (and the simulator): one place for each number."""

from __future__ import annotations

import math

import numpy as np

#: half-life of fluorine-18 in seconds (DICOM RadionuclideHalfLife of FDG)
F18_HALF_LIFE_S = 6586.2

#: full width at half maximum of a Gaussian in units of its standard deviation
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))

#: DICOM LPS <-> NIfTI RAS (x and y negated); its own inverse
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def fwhm_to_sigma(fwhm):
    """Standard deviation of a Gaussian of the given full width at half maximum (same units; number or array)."""
    return fwhm / FWHM_PER_SIGMA
