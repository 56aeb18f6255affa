"""Brain atrophy: cortical thinning and ventricular enlargement, applied to the tissue maps, labels and the T1.

Lost grey or white matter becomes CSF in the tissue fractions, and the T1 changes by the same fractions times the
tissue contrast, so the T1 and the PET (computed from the tissue fractions) show the same partial-volume atrophy.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .activity import REGION_LABELS, ad_hypometabolism_map

__all__ = ["apply_atrophy", "draw_atrophy"]


def draw_atrophy(ad_severity: float, rng: np.random.Generator) -> dict:
    """Atrophy parameters: AD scales with severity; cognitively normal subjects get mild age-like atrophy.

    Args:
        ad_severity: 0 for cognitively normal, > 0 for AD.
        rng: numpy generator.

    Returns:
        dict with ``gm_loss`` (fraction of GM lost where the AD pattern is strongest) and ``ventricle_mm``
        (ventricular wall displacement in mm).
    """
    if ad_severity > 0:
        return {
            "gm_loss": float(ad_severity * rng.uniform(0.15, 0.25)),
            "ventricle_mm": float(ad_severity * rng.uniform(2.0, 4.0)),
        }
    return {"gm_loss": float(rng.uniform(0.0, 0.04)), "ventricle_mm": float(rng.uniform(0.0, 1.0))}


def _tissue_level(t1: np.ndarray, prob: np.ndarray) -> float:
    sel = prob > 0.8
    return float(np.median(t1[sel])) if np.any(sel) else 0.0


def apply_atrophy(anatomy: dict[str, np.ndarray], gm_loss: float, ventricle_mm: float) -> dict[str, np.ndarray]:
    """Thin the cortex and enlarge the ventricles of a (warped) anatomy.

    GM loss per voxel is ``gm_loss`` times a regional weight (0.5 outside the AD pattern, 1 where the AD
    hypometabolism fraction is largest) times its exposure to CSF (smoothed CSF fraction, mean 1 over the GM), so the
    cortex thins from the pial side and the sulci widen. The ventricles grow by ``ventricle_mm`` (soft edge): tissue
    within that distance becomes CSF and takes the nearest ventricle label.

    Args:
        anatomy: dict with ``t1``, ``gm``, ``wm``, ``csf``, ``brain_mask``, ``labels``, ``affine``.
        gm_loss: fraction of GM lost at the strongest regional weight (0 = none).
        ventricle_mm: ventricular enlargement in mm (0 = none).

    Returns:
        a new anatomy dict (same keys and dtypes).
    """
    voxel_mm = float(abs(anatomy["affine"][0, 0]))
    gm, wm, t1 = anatomy["gm"], anatomy["wm"], anatomy["t1"]
    labels = anatomy["labels"]
    brain = anatomy["brain_mask"] > 0
    level_gm, level_wm, level_csf = (_tissue_level(t1, anatomy[k]) for k in ("gm", "wm", "csf"))  # sulcal CSF
    weight = 0.5 + 0.5 * ad_hypometabolism_map(labels, voxel_mm) / 0.25
    # thinning from the pial side: GM next to CSF (sulci, surface) loses more, the mean over GM stays gm_loss x weight
    exposure = ndimage.gaussian_filter(anatomy["csf"] + (~brain), 1.0)
    exposure /= max(float(exposure[gm > 0.5].mean()), 1e-6)
    lost_gm = gm * np.clip(gm_loss * weight * exposure, 0.0, 0.8)
    t1_new = t1 + (level_csf - level_gm) * lost_gm
    labels = labels.copy()
    lost_wm = np.zeros_like(wm)
    if ventricle_mm > 0:
        ventricles = np.isin(labels, REGION_LABELS["ventricles"])
        level_vent = _tissue_level(t1, anatomy["csf"] * ventricles)
        dist, nearest = ndimage.distance_transform_edt(~ventricles, return_indices=True)
        grow = np.clip((ventricle_mm - dist * voxel_mm) / voxel_mm + 0.5, 0.0, 1.0) * brain * ~ventricles
        lost_wm = wm * grow
        lost_gm_vent = (gm - lost_gm) * grow
        t1_new += (level_vent - level_wm) * lost_wm + (level_vent - level_gm) * lost_gm_vent
        lost_gm = lost_gm + lost_gm_vent
        moved = grow > 0.5
        labels[moved] = labels[tuple(ix[moved] for ix in nearest)]
    out = dict(anatomy)
    out["gm"] = (gm - lost_gm).astype(np.float32)
    out["wm"] = (wm - lost_wm).astype(np.float32)
    out["csf"] = np.clip(anatomy["csf"] + lost_gm + lost_wm, 0, 1).astype(np.float32)
    out["t1"] = np.clip(t1_new, 0, None).astype(np.float32)
    out["labels"] = labels
    return out
