"""Template anatomy (MNI152 ICBM 2009a + Neuromorphometrics labels), per-subject warps and MRI appearance.

All arrays are (X, Y, Z) on the nilearn MNI152 RAS grid (2 mm: 99x117x95, 1 mm: 197x233x189), axial = last axis.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from scipy import ndimage

from .files import atomic_path

__all__ = [
    "atlas_path",
    "load_template_anatomy",
    "WarpParams",
    "warp_anatomy",
    "warp_anatomy_fine",
    "mri_appearance",
    "ANATOMY_KEYS",
]

ANATOMY_KEYS = ("t1", "gm", "wm", "brain_mask", "labels")


def atlas_path(name: str = "atlas_neuromorphometrics.nii.gz") -> Path:
    """Path of a data file shipped in ``pet_simulator/data`` (the Neuromorphometrics atlas and its label names).

    Args:
        name: file name inside the package data folder.

    Returns:
        the absolute path of the file (licence and attribution: ``bundle/docs/data_license.txt``).
    """
    path = Path(str(resources.files("pet_simulator").joinpath("data", name)))
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: missing data file of the pet_simulator package (reinstall or check out again)"
        )
    return path


def _resample_to_grid(data: np.ndarray, src_affine: np.ndarray, dst_affine: np.ndarray, shape, order: int):
    """Resample ``data`` (voxel->world ``src_affine``) onto a grid (``dst_affine``, ``shape``)."""
    m = np.linalg.inv(src_affine) @ dst_affine
    return ndimage.affine_transform(data, m[:3, :3], offset=m[:3, 3], output_shape=tuple(shape), order=order, cval=0)


def load_template_anatomy(voxel_mm: int = 2, cache_dir: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """Load the MNI152 template anatomy and Neuromorphometrics labels on the nilearn grid.

    Args:
        voxel_mm: 2 (99x117x95) or 1 (197x233x189).
        cache_dir: folder for a cached ``.npz`` (recommended; the labels resampling is done once).

    Returns:
        dict with float32 ``t1`` (normalised to the WM intensity 1), ``gm``, ``wm``, ``csf`` probabilities,
        uint8 ``brain_mask``, int16 ``labels`` and float64 ``affine`` (4, 4).
    """
    if voxel_mm not in (1, 2):
        raise ValueError(f"voxel_mm must be 1 or 2, got {voxel_mm}")
    cache = None
    if cache_dir is not None:
        cache = Path(cache_dir) / f"mni152_anatomy_{voxel_mm}mm.npz"
        if cache.exists():
            with np.load(cache) as z:
                return {k: z[k] for k in z.files}
    import nibabel as nib
    from nilearn import datasets

    t1_img = datasets.load_mni152_template(resolution=voxel_mm)
    affine = np.asarray(t1_img.affine, dtype=np.float64)
    shape = t1_img.shape
    t1 = np.asarray(t1_img.get_fdata(), dtype=np.float32)
    gm = np.asarray(datasets.load_mni152_gm_template(resolution=voxel_mm).get_fdata(), dtype=np.float32)
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=voxel_mm).get_fdata(), dtype=np.float32)
    brain = np.asarray(datasets.load_mni152_brain_mask(resolution=voxel_mm).get_fdata()) > 0.5
    brain = ndimage.binary_fill_holes(brain | (gm + wm > 0.5))
    atlas = nib.load(atlas_path())
    labels = _resample_to_grid(np.asarray(atlas.dataobj), atlas.affine, affine, shape, order=0).astype(np.int16)
    gm = np.clip(gm, 0, 1) * brain
    wm = np.clip(wm, 0, 1) * brain
    csf = np.clip(brain - gm - wm, 0, 1).astype(np.float32)
    wm_level = float(np.median(t1[wm > 0.9])) if np.any(wm > 0.9) else float(np.percentile(t1[brain], 95))
    out = {
        "t1": (t1 * brain / wm_level).astype(np.float32),
        "gm": gm.astype(np.float32),
        "wm": wm.astype(np.float32),
        "csf": csf,
        "brain_mask": brain.astype(np.uint8),
        "labels": labels,
        "affine": affine,
    }
    if cache is not None:
        with atomic_path(cache) as tmp:
            np.savez_compressed(tmp, **out)
    return out


@dataclass(frozen=True)
class WarpParams:
    """Ranges of the random per-subject warp (MONAI RandAffined + Rand3DElasticd).

    Args:
        rotate_deg: maximum rotation about each axis in degrees.
        scale: maximum relative scaling per axis.
        translate_mm: maximum translation per axis in mm.
        elastic_sigma_mm: range of the elastic field smoothing sigma in mm.
        elastic_magnitude_mm: range of the elastic magnitude parameter in mm (MONAI scales smoothed uniform noise).
    """

    rotate_deg: float = 6.0
    scale: float = 0.07
    translate_mm: float = 4.0
    elastic_sigma_mm: tuple[float, float] = (10.0, 14.0)
    elastic_magnitude_mm: tuple[float, float] = (150.0, 300.0)


def _warp_chain(
    params: WarpParams, vox: float, seed: int, keys: list[str], modes: list[str], padding_mode: str = "zeros"
):
    """The seeded MONAI affine + elastic chain of ``params`` on a grid of ``vox`` mm voxels."""
    from monai.transforms import Compose, Rand3DElasticd, RandAffined

    rad = np.deg2rad(params.rotate_deg)
    sigma, magnitude = params.elastic_sigma_mm, params.elastic_magnitude_mm
    chain = Compose(
        [
            RandAffined(
                keys=keys,
                prob=1.0,
                rotate_range=(rad, rad, rad),
                scale_range=(params.scale,) * 3,
                translate_range=(params.translate_mm / vox,) * 3,
                mode=modes,
                padding_mode=padding_mode,
            ),
            Rand3DElasticd(
                keys=keys,
                sigma_range=(sigma[0] / vox, sigma[1] / vox),
                magnitude_range=(magnitude[0] / vox, magnitude[1] / vox),
                prob=1.0,
                mode=modes,
                padding_mode=padding_mode,
            ),
        ]
    )
    chain.set_random_state(seed=int(seed) % (2**32))
    return chain


def _finish_warp(res: dict[str, np.ndarray], affine: np.ndarray) -> dict[str, np.ndarray]:
    brain = res["brain_mask"] > 0.5
    gm = np.clip(res["gm"], 0, 1) * brain
    wm = np.clip(res["wm"], 0, 1) * brain
    tot = gm + wm
    over = tot > 1
    gm[over] /= tot[over]
    wm[over] /= tot[over]
    return {
        "t1": np.clip(res["t1"], 0, None).astype(np.float32),
        "gm": gm.astype(np.float32),
        "wm": wm.astype(np.float32),
        "csf": np.clip(brain - gm - wm, 0, 1).astype(np.float32),
        "brain_mask": brain.astype(np.uint8),
        "labels": np.rint(res["labels"]).astype(np.int16),
        "affine": affine.copy(),
    }


def warp_anatomy(anatomy: dict[str, np.ndarray], seed: int, params: WarpParams | None = None) -> dict[str, np.ndarray]:
    """Warp T1, tissue maps, brain mask and labels jointly (MONAI RandAffined + Rand3DElasticd, seeded).

    Args:
        anatomy: output of :func:`load_template_anatomy`.
        seed: random state of the transform chain.
        params: the warp ranges (default :class:`WarpParams`).

    Returns:
        a new dict with the same keys (warped, same dtypes; tissue probabilities renormalised, CSF recomputed).
    """
    vox = float(abs(anatomy["affine"][0, 0]))
    keys = ["t1", "gm", "wm", "brain_mask", "labels"]
    modes = ["bilinear", "bilinear", "bilinear", "bilinear", "nearest"]
    chain = _warp_chain(params or WarpParams(), vox, seed, keys, modes)
    data = {k: anatomy[k][None].astype(np.float32) for k in keys}
    out = chain(data)
    return _finish_warp({k: np.asarray(out[k])[0] for k in keys}, anatomy["affine"])


def warp_anatomy_fine(
    anatomy_fine: dict[str, np.ndarray], coarse_shape: tuple[int, int, int], seed: int, params: WarpParams | None = None
) -> dict[str, np.ndarray]:
    """Warp the 1 mm anatomy with the deformation that :func:`warp_anatomy` draws on the 2 mm grid for ``seed``.

    The MONAI chain is run on a 2 mm coordinate image (memory: a full 1 mm elastic field needs > 16 GB), the
    smooth coordinate field is upsampled trilinearly to 1 mm (2 mm voxel j is 1 mm voxel 2j) and each 1 mm map is
    resampled with scipy (linear; labels nearest).

    Args:
        anatomy_fine: 1 mm output of :func:`load_template_anatomy`.
        coarse_shape: the 2 mm grid shape (99, 117, 95).
        seed: random state of the transform chain (same deformation as the 2 mm warp with this seed).
        params: the warp ranges (default :class:`WarpParams`), as in :func:`warp_anatomy`.

    Returns:
        the warped 1 mm anatomy (same keys as :func:`warp_anatomy`).
    """
    import torch

    coarse_shape = tuple(int(n) for n in coarse_shape)
    fine_shape = anatomy_fine["t1"].shape
    if tuple(2 * n - 1 for n in coarse_shape) != tuple(fine_shape):
        raise ValueError(f"expected a 1 mm grid of shape {[2 * n - 1 for n in coarse_shape]}, got {fine_shape}")
    keys = ["ci", "cj", "ck"]
    chain = _warp_chain(params or WarpParams(), 2.0, seed, keys, ["bilinear"] * 3, "border")
    grids = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in coarse_shape], indexing="ij")
    out = chain({k: g[None] for k, g in zip(keys, grids)})
    field = torch.stack([torch.as_tensor(np.asarray(out[k])[0]) for k in keys])[None]  # (1, 3, X2, Y2, Z2)
    fine = torch.nn.functional.interpolate(field, size=fine_shape, mode="trilinear", align_corners=True)[0]
    coords = (2.0 * fine).numpy()  # source index in 1 mm voxels
    del field, fine
    res = {}
    for key in ("t1", "gm", "wm", "brain_mask", "labels"):
        order = 0 if key == "labels" else 1
        src = anatomy_fine[key] if key == "labels" else anatomy_fine[key].astype(np.float32)
        res[key] = ndimage.map_coordinates(src, coords, order=order, mode="constant", cval=0).astype(np.float32)
    return _finish_warp(res, anatomy_fine["affine"])


def mri_appearance(
    t1: np.ndarray,
    brain_mask: np.ndarray,
    rng: np.random.Generator,
    bias_strength: float = 0.15,
    gamma_range: tuple[float, float] = (0.8, 1.25),
    noise_fraction: tuple[float, float] = (0.01, 0.04),
    scale_range: tuple[float, float] = (300.0, 1500.0),
) -> tuple[np.ndarray, dict]:
    """Give a warped template T1 scanner-like appearance: smooth bias field, gamma, Rician noise, arbitrary units.

    Args:
        t1: (X, Y, Z) T1 normalised to WM ~ 1.
        brain_mask: (X, Y, Z) brain mask (not used by the current model; accepted for callers that pass it).
        rng: numpy generator.
        bias_strength: maximum amplitude of the multiplicative bias field.
        gamma_range: range of the intensity gamma.
        noise_fraction: range of the Rician noise sigma relative to WM intensity.
        scale_range: range of the arbitrary MR unit scale.

    Returns:
        the T1 image (float32) and the parameters used.
    """
    shape = t1.shape
    grids = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape], indexing="ij")
    coef = rng.uniform(-1, 1, size=(3, 3)) * bias_strength / 3
    log_bias = sum(coef[a, 0] * g + coef[a, 1] * g**2 + coef[a, 2] * np.sin(np.pi * g) for a, g in enumerate(grids))
    gamma = float(rng.uniform(*gamma_range))
    img = np.clip(t1, 0, None) ** gamma * np.exp(log_bias)
    sigma = float(rng.uniform(*noise_fraction))
    n1 = rng.normal(0, sigma, size=shape).astype(np.float32)
    n2 = rng.normal(0, sigma, size=shape).astype(np.float32)
    img = np.sqrt((img + n1) ** 2 + n2**2)
    unit = float(rng.uniform(*scale_range))
    params = {"mri_gamma": gamma, "mri_noise_sigma": sigma, "mri_bias_coef": coef.round(6).tolist(), "mri_scale": unit}
    return (img * unit).astype(np.float32), params
