"""PET-only focal lesions: hot and cold blobs in grey or white matter that change the activity and not the T1."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["draw_lesions"]


def draw_lesions(
    gm: np.ndarray,
    wm: np.ndarray,
    affine: np.ndarray,
    rng: np.random.Generator,
    count_range: tuple[int, int] = (1, 3),
    diameter_mm: tuple[float, float] = (8.0, 20.0),
    hot_contrast: tuple[float, float] = (1.3, 2.5),
    cold_reduction: tuple[float, float] = (0.2, 0.5),
    hot_probability: float = 0.5,
) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Draw 1-3 lesions: irregular blobs (a sphere whose radius varies +-15 % with direction) with a soft edge.

    Blobs are confined to brain tissue (GM + WM > 0.01): a lesion at the cortical surface does not spill into the
    skull or scalp.

    Each lesion multiplies the activity by its contrast (hot: ``hot_contrast``; cold: ``1 - cold_reduction``), so
    its true contrast is relative to the lesion-free uptake of the same voxels.

    Args:
        gm, wm: (X, Y, Z) tissue probabilities (centres are voxels with GM + WM > 0.5).
        affine: voxel -> world (RAS mm) matrix.
        rng: numpy generator.
        count_range: inclusive range of the number of lesions.
        diameter_mm: range of the blob diameter.
        hot_contrast: range of the hot lesion uptake ratio.
        cold_reduction: range of the cold lesion uptake reduction.
        hot_probability: probability that a lesion is hot.

    Returns:
        float32 multiplicative activity factor, uint8 lesion mask (lesion k = k + 1 where its blob covers > 50 % of
        the voxel) and one dict per lesion (index, kind, contrast, diameter_mm, centre_mm).
    """
    voxel_mm = float(abs(affine[0, 0]))
    tissue = np.flatnonzero((gm + wm).ravel() > 0.5)
    factor = np.ones(gm.shape, dtype=np.float32)
    mask = np.zeros(gm.shape, dtype=np.uint8)
    lesions = []
    for k in range(int(rng.integers(count_range[0], count_range[1] + 1))):
        centre = np.array(np.unravel_index(int(rng.choice(tissue)), gm.shape))
        diameter = float(rng.uniform(*diameter_mm))
        hot = bool(rng.random() < hot_probability)
        contrast = float(rng.uniform(*hot_contrast)) if hot else 1.0 - float(rng.uniform(*cold_reduction))
        half = int(np.ceil(0.6 * diameter / voxel_mm)) + 2
        lo = np.maximum(centre - half, 0)
        hi = np.minimum(centre + half + 1, gm.shape)
        grids = np.meshgrid(*[np.arange(a, b) - c for a, b, c in zip(lo, hi, centre)], indexing="ij")
        dist = np.sqrt(sum(g.astype(np.float32) ** 2 for g in grids)) * voxel_mm
        wobble = ndimage.gaussian_filter(rng.standard_normal(dist.shape).astype(np.float32), 1.5, mode="wrap")
        radius = 0.5 * diameter * (1.0 + 0.15 * wobble / max(float(wobble.std()), 1e-6))
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        cover = np.clip((radius - dist) / voxel_mm + 0.5, 0.0, 1.0) * ((gm[box] + wm[box]) > 0.01)  # brain tissue
        factor[box] *= 1.0 + (contrast - 1.0) * cover
        mask[box][cover > 0.5] = k + 1
        world = (affine @ np.append(centre, 1.0))[:3]
        lesions.append(
            {
                "index": k + 1,
                "kind": "hot" if hot else "cold",
                "contrast": round(contrast, 4),
                "diameter_mm": round(diameter, 3),
                "centre_mm": [round(float(v), 2) for v in world],
            }
        )
    return factor, mask, lesions
