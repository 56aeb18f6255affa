"""What a clinician must be able to trust in an enhanced PET: focal findings, uptake patterns, uncertainty.

- :func:`lesion_contrast`: lesion mean over the mean of a surrounding shell (a hot lesion > 1, a cold one < 1).
- :func:`uptake_pattern`: within-region uptake variation (each atlas region divided by its own mean, smoothed), the
  part of the PET that the T1 does not predict; :func:`pattern_retention` compares it with a reference's.
- :func:`uncertainty_calibration`: rank correlation of a per-voxel SD map with the actual absolute error, and the
  fraction of voxels whose error is within two SD.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage, stats


def lesion_contrast(pet: np.ndarray, lesion_mask: np.ndarray, shell_voxels: int = 3) -> float:
    """Lesion mean / mean of a shell ``shell_voxels`` thick around it (the shell excludes the lesion).

    Raises:
        ValueError: when the mask is empty.
    """
    lesion = np.asarray(lesion_mask) > 0
    if not lesion.any():
        raise ValueError("the lesion mask is empty")
    shell = ndimage.binary_dilation(lesion, iterations=shell_voxels) & ~lesion
    return float(np.mean(pet[lesion]) / np.mean(pet[shell]))


def uptake_pattern(pet: np.ndarray, labels: np.ndarray, smooth_voxels: float = 2.0) -> np.ndarray:
    """Within-region variation: ``pet / mean(pet in its atlas region) - 1``, smoothed inside the labelled voxels.

    Args:
        pet: 3D PET.
        labels: 3D integer atlas labels on the same grid (0 = outside the brain).
        smooth_voxels: Gaussian sigma in voxels of a normalised smoothing restricted to labelled voxels (suppresses
            voxel noise without mixing in the background; 0 = none).

    Returns:
        3D array, 0 outside labelled voxels.
    """
    labels = np.asarray(labels).astype(np.int64)
    index = np.unique(labels[labels > 0])
    means = np.zeros(labels.max() + 1)
    means[index] = ndimage.mean(np.asarray(pet, np.float64), labels, index)
    inside = (labels > 0) & (means[labels] > 0)
    pattern = np.zeros(labels.shape)
    pattern[inside] = pet[inside] / means[labels[inside]] - 1
    if smooth_voxels:
        weight = ndimage.gaussian_filter(inside.astype(np.float64), smooth_voxels)
        pattern = np.where(inside, ndimage.gaussian_filter(pattern, smooth_voxels) / np.maximum(weight, 1e-6), 0.0)
    return pattern


def pattern_retention(pet: np.ndarray, reference: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """How much of the reference's within-region uptake variation an image keeps.

    Returns:
        ``amplitude`` (std of the image's pattern / std of the reference's, 1 = all kept) and ``correlation``
        (Pearson correlation of the two patterns over labelled voxels).
    """
    inside = np.asarray(labels) > 0
    mine = uptake_pattern(pet, labels)[inside]
    theirs = uptake_pattern(reference, labels)[inside]
    return {"amplitude": float(mine.std() / theirs.std()), "correlation": float(np.corrcoef(mine, theirs)[0, 1])}


def uncertainty_calibration(pred: np.ndarray, sd: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> dict:
    """Does the SD map say where the errors are?

    Returns:
        ``spearman`` (rank correlation of SD and |pred - reference| in the mask) and ``coverage_2sd`` (fraction of
        mask voxels with |error| <= 2 SD).
    """
    inside = np.asarray(mask) > 0
    error = np.abs(np.asarray(pred) - np.asarray(reference))[inside]
    spread = np.asarray(sd)[inside]
    return {
        "spearman": float(stats.spearmanr(spread, error).statistic),
        "coverage_2sd": float(np.mean(error <= 2 * spread)),
    }
