"""Regions for FDG-PET SUVR: Alzheimer's meta-ROI and the pons reference (Neuromorphometrics labels)."""

from __future__ import annotations

import numpy as np

__all__ = ["META_ROI_LABELS", "BRAIN_STEM_LABEL", "PONS_Z_RANGE_MM", "meta_roi_mask", "pons_mask", "suvr"]

# posterior cingulate, precuneus, angular, supramarginal, inferior and middle temporal gyri (right and left)
META_ROI_LABELS: tuple[int, ...] = (166, 167, 168, 169, 106, 107, 194, 195, 132, 133, 154, 155)
BRAIN_STEM_LABEL = 35
PONS_Z_RANGE_MM = (-40.0, -18.0)


def meta_roi_mask(labels: np.ndarray) -> np.ndarray:
    """Boolean mask of the AD meta-ROI (posterior cingulate, precuneus, angular, supramarginal, ITG, MTG).

    Args:
        labels: (X, Y, Z) integer Neuromorphometrics labels.

    Returns:
        bool array of the same shape.
    """
    return np.isin(np.asarray(labels), META_ROI_LABELS)


def pons_mask(labels: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Boolean mask of the pons: Brain_Stem voxels with world (MNI) z between -40 and -18 mm.

    Args:
        labels: (X, Y, Z) integer Neuromorphometrics labels.
        affine: (4, 4) voxel-to-world affine of ``labels``.

    Returns:
        bool array of the same shape.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"expected 3D labels (X, Y, Z), got shape {labels.shape}")
    ijk = np.indices(labels.shape).reshape(3, -1)
    z = (np.asarray(affine, dtype=float)[2, :3] @ ijk + float(affine[2, 3])).reshape(labels.shape)
    return (labels == BRAIN_STEM_LABEL) & (z >= PONS_Z_RANGE_MM[0]) & (z <= PONS_Z_RANGE_MM[1])


def suvr(pet: np.ndarray, labels: np.ndarray, affine: np.ndarray) -> float:
    """Meta-ROI mean over pons mean (standardised uptake value ratio).

    Args:
        pet: (X, Y, Z) PET (any linear units: Bq/ml, SUV).
        labels: (X, Y, Z) labels on the same grid.
        affine: (4, 4) affine of the grid.

    Returns:
        the SUVR as a float.
    """
    pet = np.asarray(pet)
    if pet.shape != np.asarray(labels).shape:
        raise ValueError(f"pet and labels must share a grid, got {pet.shape} and {np.asarray(labels).shape}")
    meta, pons = meta_roi_mask(labels), pons_mask(labels, affine)
    if not meta.any() or not pons.any():
        raise ValueError(f"empty region: meta-ROI voxels {int(meta.sum())}, pons voxels {int(pons.sum())}")
    return float(pet[meta].mean() / pet[pons].mean())
