"""PET-only spheres for contrast recovery (the NEMA NU 2 image-quality idea, in a brain).

Each sphere multiplies the activity of the brain tissue it covers by its contrast (hot > 1, cold < 1) and leaves the
T1 and tissue maps untouched, so only the PET shows it. Spheres are placed by tissue at their centre (cortex, deep grey
matter, cerebral white matter) and kept apart so that no sphere lies in another's 4-8 mm background shell.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .activity import REGION_LABELS

__all__ = ["LOCATIONS", "SHELL_MM", "recovery_sphere_specs", "draw_spheres"]

LOCATIONS = ("cortex", "deep_grey", "white_matter")
#: the background shell around a sphere, in mm from its surface (where scoring measures the local background)
SHELL_MM = (4.0, 8.0)
_CEREBRAL_WM = (44, 45)
_DEEP_GREY = REGION_LABELS["basal_ganglia"] + REGION_LABELS["thalamus"]
_NOT_CORTEX = sum((REGION_LABELS[g] for g in ("cerebellum_gm", "cerebellum_wm", "brain_stem", "ventral_dc")), ())


def recovery_sphere_specs(
    rng: np.random.Generator,
    diameters_mm: Sequence[float] = (8.0, 10.0, 13.0, 17.0, 22.0),
    hot_contrast: tuple[float, float] = (1.5, 3.0),
    cold_contrast: tuple[float, float] = (0.3, 0.7),
    hot_location_weights: Sequence[float] = (0.5, 0.2, 0.3),
    cold_location_weights: Sequence[float] = (0.7, 0.3, 0.0),
) -> list[dict]:
    """One hot and one cold sphere of every diameter, contrasts and locations drawn uniformly / by weight.

    Location weights are over :data:`LOCATIONS`; cold spheres (focal hypometabolism) default to grey matter, where
    uptake is high enough for a deficit to show.

    Returns:
        list of ``{"diameter_mm", "contrast", "kind", "location"}``, largest first (the placement order).
    """
    specs = []
    for diameter in sorted(diameters_mm, reverse=True):
        for kind, bounds, weights in (
            ("hot", hot_contrast, hot_location_weights),
            ("cold", cold_contrast, cold_location_weights),
        ):
            weights = np.asarray(weights, dtype=float) / float(np.sum(weights))
            specs.append(
                {
                    "diameter_mm": float(diameter),
                    "contrast": round(float(rng.uniform(*bounds)), 4),
                    "kind": kind,
                    "location": str(LOCATIONS[int(rng.choice(len(LOCATIONS), p=weights))]),
                }
            )
    return specs


def _candidates(gm: np.ndarray, wm: np.ndarray, labels: np.ndarray, location: str) -> np.ndarray:
    """Flat indices of the voxels where a sphere of ``location`` may be centred."""
    if location == "cortex":
        inside = (gm > 0.5) & (labels > 0) & ~np.isin(labels, _DEEP_GREY + _NOT_CORTEX + _CEREBRAL_WM)
    elif location == "deep_grey":
        inside = np.isin(labels, _DEEP_GREY)
    elif location == "white_matter":
        inside = (wm > 0.9) & np.isin(labels, _CEREBRAL_WM)
    else:
        raise ValueError(f"sphere location must be one of {LOCATIONS}, got {location!r}")
    return np.flatnonzero(inside.ravel())


def draw_spheres(
    gm: np.ndarray,
    wm: np.ndarray,
    labels: np.ndarray,
    affine: np.ndarray,
    specs: Sequence[dict],
    rng: np.random.Generator,
    max_tries: int = 400,
) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Place spheres of the given specs (see :func:`recovery_sphere_specs`), each outside the others' shells.

    A sphere's edge is soft over one voxel (partial-volume cover); it changes brain tissue only (GM + WM > 0.01).
    A spec that finds no free centre in ``max_tries`` draws is left out (the returned list says which were placed).

    Args:
        gm, wm: (X, Y, Z) tissue probabilities on the simulation grid.
        labels: (X, Y, Z) Neuromorphometrics labels on the same grid.
        affine: voxel -> world (RAS mm), isotropic voxels.
        specs: sphere specifications, placed in order.
        rng: numpy generator.
        max_tries: centre draws per sphere.

    Returns:
        float32 multiplicative activity factor, uint8 mask (sphere k = k + 1 where it covers > 50 % of the voxel) and
        one dict per placed sphere (``index``, ``kind``, ``contrast``, ``diameter_mm``, ``location``, ``centre_mm``).
    """
    voxel_mm = float(abs(affine[0, 0]))
    factor = np.ones(gm.shape, dtype=np.float32)
    mask = np.zeros(gm.shape, dtype=np.uint8)
    tissue = (gm + wm) > 0.01
    placed: list[tuple[np.ndarray, float]] = []  # centre (voxels), radius (mm)
    spheres = []
    for spec in specs:
        radius = 0.5 * float(spec["diameter_mm"])
        candidates = _candidates(gm, wm, labels, spec["location"])
        centre = None
        for _ in range(max_tries if candidates.size else 0):
            trial = np.array(np.unravel_index(int(rng.choice(candidates)), gm.shape))
            apart = all(np.linalg.norm(trial - c) * voxel_mm >= radius + r + SHELL_MM[1] + voxel_mm for c, r in placed)
            if apart:
                centre = trial
                break
        if centre is None:
            continue
        placed.append((centre, radius))
        half = int(np.ceil(radius / voxel_mm)) + 2
        lo, hi = np.maximum(centre - half, 0), np.minimum(centre + half + 1, gm.shape)
        grids = np.meshgrid(*[np.arange(a, b) - c for a, b, c in zip(lo, hi, centre)], indexing="ij")
        dist = np.sqrt(sum(g.astype(np.float32) ** 2 for g in grids)) * voxel_mm
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        cover = np.clip((radius - dist) / voxel_mm + 0.5, 0.0, 1.0) * tissue[box]
        factor[box] *= 1.0 + (float(spec["contrast"]) - 1.0) * cover
        index = len(spheres) + 1
        mask[box][cover > 0.5] = index
        world = (affine @ np.append(centre, 1.0))[:3]
        spheres.append(
            {
                "index": index,
                "kind": spec["kind"],
                "contrast": float(spec["contrast"]),
                "diameter_mm": float(spec["diameter_mm"]),
                "location": spec["location"],
                "centre_mm": [round(float(v), 2) for v in world],
            }
        )
    return factor, mask, spheres
