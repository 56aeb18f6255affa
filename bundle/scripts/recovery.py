"""What an enhanced PET keeps of what only the PET shows: contrast recovery, background variability, heterogeneity.

The NEMA NU 2 image-quality idea, in a brain (spheres and references from ``pet_simulator`` with ``spheres`` and
``anatomy_references``):

- :func:`contrast_recovery`: the contrast a sphere adds (sphere mean over the mean of a shell 4-8 mm around it, minus
  the same ratio in the noise-free image without the sphere) as a fraction of the contrast it adds in the noise-free
  standard dose. 1: kept; 0: erased (the image shows what the lesion-free brain would); < 0: painted over.
  :func:`pooled_recovery` gives a group of lesions' recovery.
- :func:`background_variability`: the spread, over 10 mm background spheres away from lesions, of their mean's
  relative error against the noise-free standard dose (noise and local bias at the lesions' scale).
- :func:`heterogeneity_retention`: uptake variation the T1 does not show, ``image / anatomy-only image - 1``, kept
  by the image: regression slope (amplitude) and correlation against the noise-free standard dose's.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from scripts.constants import fwhm_to_sigma

__all__ = [
    "lesion_rois",
    "contrast_recovery",
    "pooled_recovery",
    "background_rois",
    "background_variability",
    "heterogeneity_retention",
]

#: the background shell around a lesion, in mm from its edge
SHELL_MM = (4.0, 8.0)
#: background spheres: diameter, spacing of their centres, distance kept from lesions (mm)
BACKGROUND_ROI_MM, BACKGROUND_SPACING_MM, LESION_MARGIN_MM = 10.0, 16.0, 8.0
#: heterogeneity is scored where the anatomy-only image exceeds this fraction of its 99th percentile (grey matter and
#: deep nuclei: the ratio is unstable in low-uptake voxels), after a normalised Gaussian smoothing of this FWHM
UPTAKE_FRACTION, PATTERN_FWHM_MM = 0.3, 8.0


def _distance_mm(mask: np.ndarray, spacing_mm: Sequence[float]) -> np.ndarray:
    """Distance (mm) of every voxel to the nearest voxel of ``mask``."""
    return ndimage.distance_transform_edt(~mask, sampling=[float(s) for s in spacing_mm])


def lesion_rois(
    lesion_mask: np.ndarray, brain_mask: np.ndarray, spacing_mm: Sequence[float]
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per lesion index: its voxels and its background shell (brain voxels 4-8 mm from it, no voxel near a lesion).

    Raises:
        ValueError: when a lesion has no shell voxel.
    """
    lesion_mask = np.asarray(lesion_mask)
    near_any = _distance_mm(lesion_mask > 0, spacing_mm) < SHELL_MM[0]
    rois = {}
    for index in (int(i) for i in np.unique(lesion_mask[lesion_mask > 0])):
        roi = lesion_mask == index
        distance = _distance_mm(roi, spacing_mm)
        shell = (distance > SHELL_MM[0]) & (distance <= SHELL_MM[1]) & (np.asarray(brain_mask) > 0) & ~near_any
        if not shell.any():
            raise ValueError(f"lesion {index} has no background shell inside the brain")
        rois[index] = (roi, shell)
    return rois


def _contrast(image: np.ndarray, roi: np.ndarray, shell: np.ndarray) -> float:
    return float(np.mean(image[roi]) / np.mean(image[shell]) - 1.0)


def contrast_recovery(
    image: np.ndarray, reference: np.ndarray, lesion_free: np.ndarray, roi: np.ndarray, shell: np.ndarray
) -> dict[str, float]:
    """The fraction of a lesion's contrast that ``image`` keeps.

    Args:
        image: the image scored.
        reference: the noise-free standard dose (with the lesion).
        lesion_free: the noise-free standard dose without the lesions (the same scanner and subject).
        roi, shell: the lesion's voxels and background shell (:func:`lesion_rois`).

    Returns:
        ``recovery`` (``(C_image - C_free) / (C_reference - C_free)``, ``C`` = roi mean / shell mean - 1),
        ``contrast`` (``C_image``), ``contrast_reference`` and ``contrast_lesion_free``.
    """
    free, ref, mine = (_contrast(x, roi, shell) for x in (lesion_free, reference, image))
    if abs(ref - free) < 1e-6:
        raise ValueError("the lesion adds no contrast to the reference")
    return {
        "recovery": (mine - free) / (ref - free),
        "contrast": mine,
        "contrast_reference": ref,
        "contrast_lesion_free": free,
    }


def pooled_recovery(scores: Sequence[dict]) -> float:
    """Recovery of a group of lesions: the contrast they add in the image over what they add in the reference.

    A mean of ratios weighted by each lesion's reference contrast, so a faint lesion's noisy ratio does not dominate.
    """
    if not scores:
        return float("nan")
    added = sum(s["contrast"] - s["contrast_lesion_free"] for s in scores)
    return float(added / sum(s["contrast_reference"] - s["contrast_lesion_free"] for s in scores))


def background_rois(lesion_mask: np.ndarray, brain_mask: np.ndarray, spacing_mm: Sequence[float]) -> list[np.ndarray]:
    """10 mm spheres on a 16 mm grid, wholly in the brain and at least 8 mm from every lesion (deterministic)."""
    spacing = np.asarray([float(s) for s in spacing_mm])
    brain = np.asarray(brain_mask) > 0
    inside = ndimage.distance_transform_edt(brain, sampling=spacing) > BACKGROUND_ROI_MM / 2
    lesions = np.asarray(lesion_mask) > 0
    if lesions.any():
        inside &= _distance_mm(lesions, spacing) > LESION_MARGIN_MM + BACKGROUND_ROI_MM / 2
    step = np.maximum(np.round(BACKGROUND_SPACING_MM / spacing).astype(int), 1)
    grid = np.zeros_like(inside)
    grid[tuple(slice(s // 2, None, s) for s in step)] = True
    radius = np.ceil(BACKGROUND_ROI_MM / 2 / spacing).astype(int)
    offsets = np.stack(np.meshgrid(*[np.arange(-r, r + 1) for r in radius], indexing="ij"), -1).reshape(-1, 3)
    offsets = offsets[np.linalg.norm(offsets * spacing, axis=1) <= BACKGROUND_ROI_MM / 2]
    rois = []
    for centre in np.argwhere(inside & grid):
        roi = np.zeros(brain.shape, dtype=bool)
        roi[tuple((centre + offsets).T)] = True
        rois.append(roi)
    return rois


def background_variability(image: np.ndarray, reference: np.ndarray, rois: Sequence[np.ndarray]) -> float:
    """SD (%) over the background ROIs of ``mean(image) / mean(reference) - 1`` (NEMA's BV, against a reference)."""
    if len(rois) < 2:
        raise ValueError(f"need at least 2 background ROIs, got {len(rois)}")
    errors = [np.mean(image[roi]) / np.mean(reference[roi]) - 1.0 for roi in rois]
    return float(100.0 * np.std(errors, ddof=1))


def _smooth_inside(values: np.ndarray, region: np.ndarray, sigma_voxels: Sequence[float]) -> np.ndarray:
    """Gaussian smoothing restricted to ``region`` (normalised convolution)."""
    weight = ndimage.gaussian_filter(region.astype(np.float64), sigma_voxels)
    smooth = ndimage.gaussian_filter(np.where(region, values, 0.0), sigma_voxels)
    return smooth / np.maximum(weight, 1e-6)


def heterogeneity_retention(
    image: np.ndarray,
    reference: np.ndarray,
    anatomy: np.ndarray,
    brain_mask: np.ndarray,
    lesion_mask: np.ndarray,
    spacing_mm: Sequence[float],
) -> dict[str, float]:
    """How much of the uptake variation the anatomy does not predict an image keeps.

    The pattern of an image is ``image / anatomy - 1`` (``anatomy``: the noise-free image of the subject without
    lesions and heterogeneity), smoothed inside the scored region: brain voxels with uptake, away from lesions.

    Returns:
        ``amplitude``: regression slope of the image's pattern on the reference's (1 = all kept; independent noise
        does not bias it); ``correlation``: their Pearson correlation.
    """
    anatomy = np.asarray(anatomy, dtype=np.float64)
    brain = np.asarray(brain_mask) > 0
    region = brain & (anatomy > UPTAKE_FRACTION * np.percentile(anatomy[brain], 99))
    lesions = np.asarray(lesion_mask) > 0
    if lesions.any():
        region &= _distance_mm(lesions, spacing_mm) > LESION_MARGIN_MM
    sigma = [fwhm_to_sigma(PATTERN_FWHM_MM) / float(s) for s in spacing_mm]
    patterns = []
    for x in (image, reference):
        ratio = np.where(region, np.asarray(x, dtype=np.float64) / np.maximum(anatomy, 1e-12) - 1.0, 0.0)
        patterns.append(_smooth_inside(ratio, region, sigma)[region])
    mine, theirs = (p - p.mean() for p in patterns)
    return {
        "amplitude": float(np.dot(mine, theirs) / np.dot(theirs, theirs)),
        "correlation": float(np.corrcoef(mine, theirs)[0, 1]),
    }
