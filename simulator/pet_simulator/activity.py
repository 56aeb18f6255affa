"""FDG uptake model: regional relative uptake, Alzheimer's hypometabolism, absolute Bq/ml scale and the mu-map.

Relative uptake and AD fractions follow bundle/docs/simulator.md (neocortical GM = 1). Labels are Neuromorphometrics
indices (``pet_simulator/data/labels_neuromorphometrics.csv``).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .constants import F18_HALF_LIFE_S, fwhm_to_sigma

__all__ = [
    "F18_HALF_LIFE_S",
    "REGION_LABELS",
    "GM_UPTAKE",
    "AD_FRACTIONS",
    "relative_uptake",
    "ad_hypometabolism_map",
    "absolute_scale",
    "attenuation_map",
]


def _pair(*right: int) -> tuple[int, ...]:
    """Right-hemisphere label indices plus their left partners (left = right + 1 in Neuromorphometrics)."""
    return tuple(x for r in right for x in (r, r + 1))


# Neuromorphometrics label groups (right, left pairs)
REGION_LABELS: dict[str, tuple[int, ...]] = {
    "posterior_cingulate": _pair(166),
    "precuneus": _pair(168),
    "angular": _pair(106),
    "supramarginal": _pair(194),
    "inferior_temporal": _pair(132),
    "middle_temporal": _pair(154),
    "hippocampus": (47, 48),
    "amygdala": (31, 32),
    "entorhinal": _pair(116),
    "parahippocampal": _pair(170),
    "frontal": _pair(104, 120, 136, 140, 142, 146, 152, 162, 164, 178, 190, 204, 124, 186),
    "basal_ganglia": (23, 30, 36, 37, 55, 56, 57, 58),
    "thalamus": (59, 60),
    "cerebellum_gm": (38, 39, 71, 72, 73),
    "cerebellum_wm": (40, 41),
    "brain_stem": (35,),
    "ventral_dc": (61, 62),
    "ventricles": (4, 11, 46, 49, 50, 51, 52),
}

# relative GM uptake per region group (neocortex default 1.0)
GM_UPTAKE: dict[str, float] = {
    "basal_ganglia": 1.0,
    "thalamus": 0.95,
    "cerebellum_gm": 0.80,
    "hippocampus": 0.75,
    "amygdala": 0.75,
    "brain_stem": 0.55,
    "ventral_dc": 0.60,
}
WM_UPTAKE = 0.25
CSF_UPTAKE = 0.05
SCALP_UPTAKE = 0.10
SOFT_TISSUE_UPTAKE = 0.12  # muscle of the face and neck
# groups whose uptake is assigned to the whole (non-CSF) label volume: deep GM is poorly captured by the GM map
DEEP_GROUPS = ("basal_ganglia", "thalamus", "hippocampus", "amygdala", "brain_stem", "ventral_dc")

# fraction of GM uptake removed at AD severity 1
AD_FRACTIONS: dict[str, float] = {
    "posterior_cingulate": 0.25,
    "precuneus": 0.22,
    "angular": 0.22,
    "supramarginal": 0.22,
    "inferior_temporal": 0.18,
    "middle_temporal": 0.18,
    "hippocampus": 0.15,
    "entorhinal": 0.15,
    "parahippocampal": 0.15,
    "frontal": 0.08,
}


def ad_hypometabolism_map(labels: np.ndarray, voxel_mm: float, smooth_fwhm_mm: float = 8.0) -> np.ndarray:
    """Fraction of GM uptake removed at severity 1, per voxel, smoothed with a Gaussian over the cortex.

    The smoothing is a normalised convolution over labelled grey-matter voxels (cortical and deep labels), so
    region borders are smooth (8 mm) while the plateau inside a large region keeps its published fraction.

    Args:
        labels: (X, Y, Z) Neuromorphometrics labels.
        voxel_mm: isotropic voxel size.
        smooth_fwhm_mm: FWHM of the smoothing.

    Returns:
        float32 (X, Y, Z) map in [0, 0.25].
    """
    n_lab = max(int(labels.max()) + 1, 256)
    lut = np.zeros(n_lab, dtype=np.float32)
    for group, frac in AD_FRACTIONS.items():
        for lab in REGION_LABELS[group]:
            lut[lab] = frac
    support_lut = np.ones(n_lab, dtype=np.float32)
    support_lut[0] = 0.0
    for group in ("cerebellum_wm", "ventricles"):
        support_lut[list(REGION_LABELS[group])] = 0.0
    support_lut[[44, 45]] = 0.0  # cerebral white matter
    lab = np.clip(labels, 0, None)
    support = support_lut[lab]
    sigma = fwhm_to_sigma(smooth_fwhm_mm) / voxel_mm
    num = ndimage.gaussian_filter(lut[lab] * support, sigma)
    den = ndimage.gaussian_filter(support, sigma)
    frac = np.where(den > 1e-3, num / np.maximum(den, 1e-3), 0.0)
    # outside the labelled GM (WM, CSF) fall off smoothly
    frac = np.where(support > 0, frac, ndimage.gaussian_filter(lut[lab], sigma))
    return np.clip(frac, 0.0, max(AD_FRACTIONS.values())).astype(np.float32)


def relative_uptake(
    anatomy: dict[str, np.ndarray],
    rng: np.random.Generator,
    ad_severity: float = 0.0,
    region_cv: float = 0.05,
    skull_scalp: np.ndarray | None = None,
) -> tuple[np.ndarray, dict]:
    """Relative FDG uptake (neocortical GM = 1) with inter-subject variation and optional AD hypometabolism.

    Args:
        anatomy: dict with ``gm``, ``wm``, ``csf``, ``labels``, ``affine`` (warped subject anatomy).
        rng: numpy generator (regional variation, AD asymmetry).
        ad_severity: 0 for cognitively normal; 1 gives the full published AD contrast (fractions in AD_FRACTIONS).
        region_cv: relative SD of the per-label uptake variation.
        skull_scalp: optional (X, Y, Z) uint8 map (1 skull, 2 scalp, 3 soft tissue) from
            :func:`attenuation_map` or :func:`pet_simulator.head.add_face_and_neck`; scalp and soft tissue get uptake.

    Returns:
        float32 (X, Y, Z) relative uptake and a dict of the drawn parameters.
    """
    labels = anatomy["labels"].astype(np.int64)
    gm, wm, csf = anatomy["gm"], anatomy["wm"], anatomy["csf"]
    voxel_mm = float(abs(anatomy["affine"][0, 0]))
    n_lab = int(labels.max()) + 1
    gm_lut = np.ones(n_lab, dtype=np.float32)
    deep_lut = np.zeros(n_lab, dtype=bool)
    for group, val in GM_UPTAKE.items():
        for lab in REGION_LABELS[group]:
            if lab < n_lab:
                gm_lut[lab] = val
                deep_lut[lab] = group in DEEP_GROUPS
    variation = (1.0 + region_cv * rng.standard_normal(n_lab)).astype(np.float32)
    global_wm = float(1.0 + region_cv * rng.standard_normal())
    gm_level = (gm_lut * variation)[labels]
    params = {"wm_uptake": WM_UPTAKE * global_wm, "region_cv": region_cv}
    # mild hemispheric asymmetry of AD (drawn for every subject so CN/AD twins share all other draws)
    asym = float(rng.uniform(-0.15, 0.15))
    if ad_severity > 0:
        frac = ad_hypometabolism_map(labels, voxel_mm)
        # x < 0 is left in RAS
        x_world = anatomy["affine"][0, 0] * np.arange(labels.shape[0]) + anatomy["affine"][0, 3]
        side = np.where(x_world < 0, 1.0 + asym, 1.0 - asym).astype(np.float32)[:, None, None]
        gm_level = gm_level * np.clip(1.0 - ad_severity * frac * side, 0.2, 1.0)
        params["ad_asymmetry"] = asym
    deep = deep_lut[labels]
    act = gm * gm_level + wm * WM_UPTAKE * global_wm + csf * CSF_UPTAKE
    act = np.where(deep, gm_level * (1.0 - csf) + csf * CSF_UPTAKE, act)
    if skull_scalp is not None:
        act = act + (skull_scalp == 2) * SCALP_UPTAKE * float(1.0 + region_cv * rng.standard_normal())
        if np.any(skull_scalp == 3):  # face and neck soft tissue (pet_simulator.head)
            act = act + (skull_scalp == 3) * SOFT_TISSUE_UPTAKE
    return act.astype(np.float32), params


def absolute_scale(rng: np.random.Generator) -> dict:
    """Draw injected dose, weight, uptake time and the GM SUV; return the Bq/ml of relative uptake 1.

    Activity concentrations are decay-corrected to the scan start (DICOM DecayCorrection START), so
    SUV = activity * weight_g / (injected_dose_bq * 2 ** (-uptake_s / half_life)).

    Returns:
        dict with ``injected_dose_bq``, ``patient_weight_kg``, ``uptake_time_s``, ``half_life_s``, ``gm_suv`` and
        ``bq_ml_per_unit`` (activity of relative uptake 1 in Bq/ml).
    """
    weight = float(np.clip(rng.normal(75, 12), 50, 110))
    dose = float(rng.uniform(150e6, 300e6) * weight / 75)  # weight-adjusted, about 3 MBq/kg
    uptake = float(rng.uniform(40 * 60, 70 * 60))
    gm_suv = float(np.clip(rng.normal(8.5, 1.2), 5.5, 12.0))
    decay = 2.0 ** (-uptake / F18_HALF_LIFE_S)
    per_unit = gm_suv * dose * decay / (weight * 1000.0)
    return {
        "injected_dose_bq": dose,
        "patient_weight_kg": weight,
        "uptake_time_s": uptake,
        "half_life_s": F18_HALF_LIFE_S,
        "gm_suv": gm_suv,
        "bq_ml_per_unit": per_unit,
    }


def attenuation_map(
    brain_mask: np.ndarray,
    voxel_mm: float,
    rng: np.random.Generator,
    skull_mm: tuple[float, float] = (5.0, 8.0),
    scalp_mm: tuple[float, float] = (4.0, 7.0),
    mu_tissue: float = 0.0096,
    mu_bone: float = 0.0151,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Head mu-map at 511 keV: brain/soft tissue, a skull shell and a scalp shell around the brain mask.

    Args:
        brain_mask: (X, Y, Z) brain (intracranial) mask.
        voxel_mm: voxel size in mm.
        rng: numpy generator (shell thicknesses).
        skull_mm: range of the skull thickness.
        scalp_mm: range of the scalp thickness.
        mu_tissue: linear attenuation of soft tissue (1/mm).
        mu_bone: linear attenuation of bone (1/mm).

    Returns:
        float32 mu-map (1/mm), uint8 tissue map (1 skull, 2 scalp) and the thicknesses used.
    """
    skull = float(rng.uniform(*skull_mm))
    scalp = float(rng.uniform(*scalp_mm))
    brain = ndimage.binary_closing(brain_mask > 0, iterations=2)
    dist = ndimage.distance_transform_edt(~brain) * voxel_mm
    tissue = np.zeros(brain.shape, dtype=np.uint8)
    tissue[(dist > 0) & (dist <= skull)] = 1
    tissue[(dist > skull) & (dist <= skull + scalp)] = 2
    mu = np.where(brain, mu_tissue, 0.0) + (tissue == 1) * mu_bone + (tissue == 2) * mu_tissue
    return mu.astype(np.float32), tissue, {"skull_mm": skull, "scalp_mm": scalp}
