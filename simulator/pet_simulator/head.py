"""Head outside the brain: skull and scalp shells plus a face and neck below the brain, shared by T1 and mu-map.

Tissue codes (uint8): 0 background (air outside the head), 1 skull, 2 scalp and skin, 3 soft tissue (muscle, fat of
the face and neck), 4 facial bone and spine, 5 air inside the head (airway, nasal cavity and sinuses), 6 eyes.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["TISSUE_CODES", "add_face_and_neck", "whole_head_t1", "mu_from_tissue", "extend_mu"]

TISSUE_CODES = {"skull": 1, "scalp": 2, "soft_tissue": 3, "bone": 4, "air": 5, "eye": 6}
# T1 intensity of each tissue relative to white matter (T1-weighted gradient echo): fat-rich scalp and marrow bright,
# cortical bone and air dark, muscle intermediate, vitreous like CSF
T1_LEVELS = {1: 0.25, 2: 0.95, 3: 0.55, 4: 0.3, 5: 0.02, 6: 0.2}
MU_TISSUE = 0.0096  # 1/mm at 511 keV
MU_BONE = 0.0151


def _world_grids(shape, affine):
    axes = [affine[a, a] * np.arange(n) + affine[a, 3] for a, n in enumerate(shape)]
    return np.meshgrid(*[ax.astype(np.float32) for ax in axes], indexing="ij")


def add_face_and_neck(
    tissue: np.ndarray, brain_mask: np.ndarray, affine: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, dict]:
    """Extend the skull / scalp shells (codes 1, 2) with a face and neck below the brain.

    Geometry (RAS mm, relative to the brain-mask centroid, scaled per subject): a face ellipse (cylinder) in front and
    a neck ellipse behind, from the bottom of the grid up to the level of the orbitofrontal cortex, with a skin layer,
    a facial bone arc (maxilla, mandible), a cervical spine, an airway and nasal cavity, and two eyes. Only voxels
    outside the brain and its skull shell change.

    Args:
        tissue: (X, Y, Z) uint8 shells from :func:`pet_simulator.activity.attenuation_map`.
        brain_mask: (X, Y, Z) brain mask on the same grid.
        affine: voxel -> world matrix of the grid (axis-aligned, RAS).
        rng: numpy generator (head size, skin thickness).

    Returns:
        the extended uint8 tissue map and the drawn parameters.
    """
    voxel_mm = float(abs(affine[0, 0]))
    size = float(rng.uniform(0.92, 1.08))
    skin_mm = float(rng.uniform(3.0, 6.0))
    x, y, z = _world_grids(tissue.shape, affine)
    cx, cy, cz = (float(g[brain_mask > 0].mean()) for g in (x, y, z))
    x, y, z = (x - cx) / size, (y - cy) / size, z - cz
    top = -22.0 * size  # orbitofrontal level relative to the brain centroid
    lower = z < top
    taper = 0.6 + 0.4 * np.sqrt(np.clip((top - z) / 25.0, 0.0, 1.0))  # the face narrows towards the forehead
    face = lower & ((x / (58.0 * taper)) ** 2 + ((y - 65.0) / (55.0 * taper)) ** 2 < 1.0)
    neck = lower & ((x / 60.0) ** 2 + ((y + 5.0) / 58.0) ** 2 < 1.0)
    outline = face | neck | (tissue > 0) | (brain_mask > 0)
    outline = ndimage.binary_closing(outline, iterations=2) | outline
    free = outline & (tissue == 0) & (brain_mask == 0)
    out = tissue.copy()
    out[free] = TISSUE_CODES["soft_tissue"]
    depth = ndimage.distance_transform_edt(outline) * voxel_mm
    out[free & (depth <= skin_mm)] = TISSUE_CODES["scalp"]
    deep = free & (depth > skin_mm)
    r_face = np.sqrt((x / 50.0) ** 2 + ((y - 60.0) / 48.0) ** 2)
    out[deep & lower & (r_face > 0.8) & (r_face < 0.95) & (y > 20.0)] = TISSUE_CODES["bone"]
    out[deep & lower & (x**2 + (y + 30.0) ** 2 < 11.0**2)] = TISSUE_CODES["bone"]  # cervical spine
    out[deep & lower & (x**2 + (y - 20.0) ** 2 < 8.0**2)] = TISSUE_CODES["air"]  # pharynx
    nasal = (x / 14.0) ** 2 + ((y - 80.0) / 22.0) ** 2 + ((z - top + 20.0) / 22.0) ** 2 < 1.0
    out[free & (depth > skin_mm) & nasal] = TISSUE_CODES["air"]
    for side in (-1.0, 1.0):
        eye = (x - side * 32.0) ** 2 + (y - 95.0) ** 2 + (z - top + 2.0) ** 2 < 12.0**2
        out[eye & (free | (out == TISSUE_CODES["scalp"]))] = TISSUE_CODES["eye"]
    return out, {"head_scale": size, "skin_mm": skin_mm}


def mu_from_tissue(tissue: np.ndarray) -> np.ndarray:
    """511 keV linear attenuation (1/mm) of the head tissue codes: bone 0.0151, soft tissue 0.0096, air 0."""
    lut = np.zeros(max(TISSUE_CODES.values()) + 1, dtype=np.float32)
    lut[[1, 4]] = MU_BONE
    lut[[2, 3, 6]] = MU_TISSUE
    return lut[tissue]


def extend_mu(mu: np.ndarray, shells: np.ndarray, tissue: np.ndarray) -> np.ndarray:
    """The shell mu-map of :func:`pet_simulator.activity.attenuation_map` plus the face and neck of ``tissue``."""
    return np.where((shells == 0) & (tissue > 0), mu_from_tissue(tissue), mu).astype(np.float32)


def whole_head_t1(t1_brain: np.ndarray, brain_mask: np.ndarray, tissue: np.ndarray, rng: np.random.Generator):
    """Fill the head around a skull-stripped T1 (WM = 1) with tissue intensities, a diploe layer and smooth texture.

    Args:
        t1_brain: (X, Y, Z) T1 inside the brain mask.
        brain_mask: (X, Y, Z) brain mask.
        tissue: (X, Y, Z) head tissue codes on the same grid.
        rng: numpy generator (texture).

    Returns:
        float32 whole-head T1 (WM = 1 inside the brain, before bias field and noise).
    """
    lut = np.zeros(max(T1_LEVELS) + 1, dtype=np.float32)
    for code, level in T1_LEVELS.items():
        lut[code] = level
    head = lut[tissue]
    skull = tissue == TISSUE_CODES["skull"]
    inner = ndimage.binary_erosion(skull, iterations=1) & skull
    head[inner] = 0.6  # fatty marrow of the diploe between the cortical tables
    texture = ndimage.gaussian_filter(rng.standard_normal(tissue.shape).astype(np.float32), 2.0)
    head *= 1.0 + 0.1 * texture / max(float(texture.std()), 1e-6)
    head = ndimage.gaussian_filter(head, 0.5)  # partial volume at tissue borders
    inside = brain_mask > 0
    return np.where(inside, t1_brain, head * ~inside).astype(np.float32)
