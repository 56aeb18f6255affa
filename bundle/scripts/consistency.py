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

Below the cut-off, a lesion the network shrank is still in the low-dose image: :func:`restore_significant_residual`
gives back what the residual shows beyond its own measured noise at 8-16 mm, and its departure map says where the
network left the measurement, in noise SDs.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

from scripts.constants import FWHM_PER_SIGMA

logger = logging.getLogger(__name__)

#: the adaptive cut-off stays within these FWHMs (mm): the scanners' PSF below, a lobe's size above
ADAPTIVE_CUTOFF_BOUNDS_MM = (6.0, 32.0)
#: significance consistency: the scales (Gaussian FWHM, mm) at which the residual is tested, and the FWHM of what is
#: given back (chosen on validation subjects, docs/README.md)
SIGNIFICANCE_SCALES_MM, GIVEBACK_FWHM_MM = (8.0, 11.3, 16.0), 5.7
#: the noise of a smoothed residual is measured on every 7th voxel (plenty for a median, 7x faster)
_NOISE_SUBSAMPLE = 7
#: a measured relative noise above this is no PET study's (1/100 dose measured about 0.7): the network missed the input
IMPLAUSIBLE_NOISE = 1.5
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
        if noise > IMPLAUSIBLE_NOISE:
            logger.warning(
                f"measured low-dose noise {100 * noise:.0f} % is implausible for a PET study (1/100 dose measures "
                "about 70 %): the network's output is far from the input (untrained or wrong weights?)"
            )
    fwhm_mm = float(fwhm_mm)
    return low_frequency_consistency(enhanced, low_dose, [fwhm_mm / float(v) for v in voxel_size_mm]), fwhm_mm


def restore_significant_residual(
    enhanced: torch.Tensor,
    low_dose: torch.Tensor,
    voxel_size_mm: Sequence[float],
    threshold: float,
    scales_mm: Sequence[float] = SIGNIFICANCE_SCALES_MM,
    giveback_fwhm_mm: float = GIVEBACK_FWHM_MM,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Give back what the low-dose image shows beyond its noise and the enhanced image lacks.

    The residual ``low_dose - enhanced`` smoothed by a Gaussian of each FWHM in ``scales_mm`` is divided by its noise
    SD there (:func:`residual_noise`: measured on the study, spatial correlation included, as a function of the local
    activity); the departure map is the largest ``|z|`` over the scales. Where it exceeds ``threshold``, the residual
    smoothed to ``giveback_fwhm_mm`` is given back, with a gain rising from 0 at ``threshold`` to 1 one SD above it:
    a lesion the network shrank or painted over returns at near the scanner's resolution, noise stays out. Scales
    finer than 8 mm are not tested: there the noise's largest peaks, not lesions, would be what passes (measured on
    validation subjects, docs/README.md).

    Args:
        enhanced: ``(C, H, W, D)`` enhanced PET.
        low_dose: ``(C, H, W, D)`` low-dose PET in the same units and grid.
        voxel_size_mm: voxel size per spatial axis.
        threshold: significance, in noise SDs, beyond which a departure is given back (> 0).
        scales_mm: FWHMs (mm) at which the residual's significance is tested.
        giveback_fwhm_mm: FWHM (mm) of the residual given back.

    Returns:
        the restored image and the departure map (where the network left the measurement, in noise SDs).
    """
    if threshold <= 0:
        raise ValueError(f"the significance threshold must be > 0 noise SDs, got {threshold}")
    activity = _gaussian(enhanced.float(), [_UPTAKE_FWHM_MM / float(v) for v in voxel_size_mm])
    residual = low_dose.float() - enhanced.float()
    departure = torch.zeros_like(residual)
    for fwhm in scales_mm:
        band = _gaussian(residual, [float(fwhm) / float(v) for v in voxel_size_mm])
        departure = torch.maximum(departure, band.abs() / residual_noise(band, activity))
    gain = (departure - threshold).clamp(0, 1)
    given = _gaussian(residual, [float(giveback_fwhm_mm) / float(v) for v in voxel_size_mm])
    return enhanced.float() + gain * given, departure


def residual_noise(band: torch.Tensor, activity: torch.Tensor, bins: int = 8) -> torch.Tensor:
    """Per-voxel noise SD of a smoothed residual, as a function of the local activity.

    The voxels with uptake (smoothed activity above 5 % of its 99.5th percentile) are cut into ``bins`` quantile bins
    of activity; in each the SD is 1.4826 x the median absolute deviation (lesions and edges are too few to move it);
    between bin centres it is interpolated, beyond them held, and never below 1e-6 of the peak activity.
    """
    level = activity.flatten().numpy()
    top = float(np.percentile(level[::_NOISE_SUBSAMPLE], 99.5))
    level, values = level[::_NOISE_SUBSAMPLE], band.flatten().numpy()[::_NOISE_SUBSAMPLE]
    uptake = level > 0.05 * top
    if uptake.sum() < 10 * bins:
        return torch.full_like(band, max(float(np.std(values)), 1e-6 * max(top, 1e-12)))
    edges = np.quantile(level[uptake], np.linspace(0, 1, bins + 1))
    centres, spreads = [], []
    for low, high in zip(edges[:-1], edges[1:]):
        inside = uptake & (level >= low) & (level <= high)
        centres.append(float(np.median(level[inside])))
        spreads.append(1.4826 * float(np.median(np.abs(values[inside] - np.median(values[inside])))))
    sd = np.interp(activity.flatten().numpy(), centres, spreads)
    return torch.from_numpy(np.maximum(sd, 1e-6 * top).reshape(band.shape).astype(np.float32))


def physical_activity(image: torch.Tensor) -> torch.Tensor:
    """Activity cannot be negative: clip at zero."""
    return image.clamp(min=0)


def _gaussian(image: torch.Tensor, fwhm_voxels: Sequence[float]) -> torch.Tensor:
    """Gaussian smoothing of a ``(C, H, W, D)`` CPU image, FWHM per axis in voxels (scipy, zero padding: on CPU about
    10x faster than MONAI's erf-kernel ``GaussianSmooth`` and within 0.5 % of it)."""
    sigma = [0.0] + [float(f) / FWHM_PER_SIGMA for f in fwhm_voxels]
    smooth = ndimage.gaussian_filter(image.detach().cpu().float().numpy(), sigma, mode="constant", truncate=4.0)
    return torch.from_numpy(smooth)


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
