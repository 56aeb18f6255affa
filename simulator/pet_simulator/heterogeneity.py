"""Uptake the MRI does not predict: a smooth multiplicative Gaussian random field over the whole activity image."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .constants import fwhm_to_sigma

__all__ = ["uptake_heterogeneity"]


def uptake_heterogeneity(
    anatomy: dict[str, np.ndarray], rng: np.random.Generator, amplitude_range=(0.05, 0.15), scales_mm=(8.0, 30.0)
) -> tuple[np.ndarray, dict]:
    """Multiplicative field ``1 + amplitude * g``: ``g`` a Gaussian random field of unit SD inside the brain.

    ``g`` is the normalised sum of two smoothed white-noise fields, one with a fine and one with a coarse correlation
    length (Gaussian FWHM drawn in the lower and upper halves of ``scales_mm``), so uptake varies within and across
    atlas regions independently of the anatomy.

    Args:
        anatomy: dict with ``brain_mask`` (where the SD is normalised) and ``affine`` (voxel size).
        rng: numpy generator (amplitude, scales, noise).
        amplitude_range: range of the field SD (relative uptake change), drawn uniformly.
        scales_mm: range of the smoothing FWHM in mm.

    Returns:
        float32 (X, Y, Z) field (clipped to [0.5, 1.5]) and the drawn parameters.
    """
    amplitude = float(rng.uniform(*amplitude_range))
    mid = 0.5 * (scales_mm[0] + scales_mm[1])
    fine_mm, coarse_mm = float(rng.uniform(scales_mm[0], mid)), float(rng.uniform(mid, scales_mm[1]))
    brain_mask, voxel_mm = anatomy["brain_mask"], float(abs(anatomy["affine"][0, 0]))
    inside = brain_mask > 0
    field = np.zeros(brain_mask.shape, dtype=np.float32)
    for fwhm in (fine_mm, coarse_mm):
        noise = rng.standard_normal(brain_mask.shape, dtype=np.float32)
        smooth = ndimage.gaussian_filter(noise, fwhm_to_sigma(fwhm) / voxel_mm, mode="wrap")
        field += smooth / float(smooth[inside].std())
    field -= float(field[inside].mean())
    field /= float(field[inside].std())
    params = {"heterogeneity_sd": amplitude, "heterogeneity_fwhm_mm": [fine_mm, coarse_mm]}
    return np.clip(1.0 + amplitude * field, 0.5, 1.5).astype(np.float32), params
