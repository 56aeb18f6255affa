"""Keep the enhanced PET faithful to what the study itself measured.

The low-dose image is noisy voxel by voxel but unbiased over large regions: its low spatial frequencies are as
trustworthy as the standard dose's. A network that shrinks uncertain regions toward its training cohort's average
brain moves exactly those frequencies (regional means, SUVR). :func:`low_frequency_consistency` gives them back to
the measurement: the enhanced image keeps its own detail above the cut-off and takes the low-dose image's content
below it (``enhanced + G * (low_dose - enhanced)``, with ``G`` a Gaussian low-pass), so means over regions much
larger than the cut-off are the low-dose image's, whatever the network did. Activity is then clipped at zero.

The right cut-off depends on how noisy the study is: the low-dose noise that comes back with the low frequencies
falls as the cut-off widens. :func:`measured_noise` measures the study's relative noise and
:func:`adaptive_cutoff_mm` widens the cut-off until that noise, smoothed by the Gaussian, is ``noise_pct`` % of the
activity (white-noise model: a 3D Gaussian of FWHM ``F`` divides the voxel noise by ``(F / (0.664 v)) ** 1.5`` for
voxels of size ``v``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import torch
from monai.transforms import GaussianSmooth

from scripts.constants import FWHM_PER_SIGMA

logger = logging.getLogger(__name__)

#: the adaptive cut-off stays within these FWHMs (mm): the scanners' PSF below, a lobe's size above
ADAPTIVE_CUTOFF_BOUNDS_MM = (6.0, 32.0)
#: FWHM (mm) of the smoothing that finds the voxels with uptake (where the noise is measured), and their threshold
#: as a fraction of the 99.5th percentile of the smoothed activity
_UPTAKE_FWHM_MM, _UPTAKE_FRACTION = 16.0, 0.3


def low_frequency_consistency(
    enhanced: torch.Tensor, low_dose: torch.Tensor, fwhm_voxels: Sequence[float] | None
) -> torch.Tensor:
    """Replace the enhanced image's content below a Gaussian cut-off by the low-dose image's.

    Args:
        enhanced: ``(C, H, W, D)`` enhanced PET.
        low_dose: ``(C, H, W, D)`` low-dose PET in the same units and grid.
        fwhm_voxels: FWHM of the Gaussian low-pass along each spatial axis, in voxels; ``None`` or all zero:
            the enhanced image is returned unchanged.

    Returns:
        ``(C, H, W, D)``: ``enhanced + G * (low_dose - enhanced)``.
    """
    if enhanced.shape != low_dose.shape:
        raise ValueError(f"enhanced {tuple(enhanced.shape)} and low-dose {tuple(low_dose.shape)} shapes differ")
    if not fwhm_voxels or not any(f > 0 for f in fwhm_voxels):
        return enhanced
    return enhanced + _gaussian(low_dose - enhanced, fwhm_voxels)


def consistent_with_measurement(
    enhanced: torch.Tensor,
    low_dose: torch.Tensor,
    voxel_size_mm: Sequence[float],
    fwhm_mm: float | str,
    noise_pct: float,
) -> tuple[torch.Tensor, float]:
    """``(C, H, W, D)`` enhanced image with the low-dose image's low frequencies, and the cut-off used (mm).

    ``fwhm_mm``: a cut-off in mm, or ``"auto"``: :func:`adaptive_cutoff_mm` of the study's :func:`measured_noise`.
    """
    if fwhm_mm == "auto":
        noise = measured_noise(enhanced, low_dose, voxel_size_mm)
        fwhm_mm = adaptive_cutoff_mm(noise, voxel_size_mm, noise_pct)
        logger.info(f"measured low-dose noise {100 * noise:.1f} %: data-consistency cut-off {fwhm_mm:.1f} mm")
    fwhm_mm = float(fwhm_mm)
    return low_frequency_consistency(enhanced, low_dose, [fwhm_mm / float(v) for v in voxel_size_mm]), fwhm_mm


def physical_activity(image: torch.Tensor) -> torch.Tensor:
    """Activity cannot be negative: clip at zero."""
    return image.clamp(min=0)


def _gaussian(image: torch.Tensor, fwhm_voxels: Sequence[float]) -> torch.Tensor:
    """MONAI's Gaussian smoothing of a ``(C, H, W, D)`` image, FWHM per axis in voxels."""
    return torch.as_tensor(GaussianSmooth(sigma=[float(f) / FWHM_PER_SIGMA for f in fwhm_voxels])(image))


def measured_noise(enhanced: torch.Tensor, low_dose: torch.Tensor, voxel_size_mm: Sequence[float]) -> float:
    """The study's relative voxel noise: robust SD of ``low_dose - enhanced`` over the voxels with uptake / their mean.

    The voxels with uptake are those whose smoothed enhanced activity exceeds 30 % of its 99.5th percentile; the SD is
    1.4826 x the median absolute deviation, so that lesions and edges the network missed do not count as noise.
    Returns 0 when the enhanced image has no uptake.
    """
    smooth = _gaussian(enhanced.float(), [_UPTAKE_FWHM_MM / float(v) for v in voxel_size_mm]).numpy()
    activity = enhanced.float().numpy()
    uptake = smooth > _UPTAKE_FRACTION * np.percentile(smooth, 99.5)
    if not uptake.any() or activity[uptake].mean() <= 0:
        return 0.0
    residual = (low_dose.float().numpy() - activity)[uptake]
    spread = 1.4826 * float(np.median(np.abs(residual - np.median(residual))))
    return spread / float(activity[uptake].mean())


def adaptive_cutoff_mm(noise: float, voxel_size_mm: Sequence[float], noise_pct: float) -> float:
    """The cut-off FWHM (mm) that smooths a relative voxel noise ``noise`` down to ``noise_pct`` % (white noise).

    ``F = 0.664 v (noise / tolerance) ** (2/3)``, ``v`` the geometric mean voxel size, within
    :data:`ADAPTIVE_CUTOFF_BOUNDS_MM`.
    """
    if noise_pct <= 0:
        raise ValueError(f"consistency_noise_pct must be > 0, got {noise_pct}")
    voxel = math.prod(float(v) for v in voxel_size_mm) ** (1.0 / len(voxel_size_mm))
    variance_factor = 2.0 * math.sqrt(math.pi) / FWHM_PER_SIGMA  # a Gaussian of FWHM F: var / (factor F / v) ** 3
    fwhm = voxel / variance_factor * (max(noise, 0.0) / (noise_pct / 100.0)) ** (2.0 / 3.0)
    low, high = ADAPTIVE_CUTOFF_BOUNDS_MM
    return float(min(max(fwhm, low), high))
