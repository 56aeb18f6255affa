"""Bring the T1 onto the PET before use: a rigid registration by mutual information (SimpleITK), then two checks.

A T1 is usually acquired on another day and registered to the PET by someone else; the network trusts it voxel for
voxel (2 mm of misalignment cost more than the MRI is worth). :class:`RegisterMRId` replaces a plain resampling of
the MRI onto the PET grid:

1. the MRI, resampled onto the PET's grid as its header places it, is registered to the PET (:func:`register_rigid`:
   6 parameters, Mattes mutual information, coarse to fine; ITK's registration through SimpleITK, whose import costs
   0.1 s where ITK's lazy-loaded Python modules cost 10-15 s);
2. the transform goes into the MRI's affine, so the one resampling onto the PET grid also aligns it;
3. two checks on the result (:func:`alignment_gain`, :func:`white_grey_ratio`), thresholds chosen on validation
   subjects (``benchmarks/bench_alignment.py``): moving the registered MRI 2 mm in any direction must not improve its
   match with the PET by more than a T1 1 mm off would gain, and it must look like a T1 (white matter brighter than
   grey matter; T2 and FLAIR images are not). A failed check drops the MRI with a warning line: the study takes the
   MRI-free path, and ``summary.json`` says why.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from monai.data import MetaTensor
from monai.data.utils import affine_to_spacing
from monai.transforms import MapTransform, ResampleToMatch
from scipy import ndimage

from scripts.constants import fwhm_to_sigma
from scripts.io.options import flag

logger = logging.getLogger(__name__)

#: per-study record of what was done to the MRI (summary.json)
REGISTRATION_KEY = "mri_registration"
#: fewer voxels than this along an axis of the PET's grid: too small a field of view to register and check the MRI
MIN_AXIS_VOXELS = 32
#: the checks see the PET smoothed to this FWHM (mm): tissue classes and mutual information steadier than its noise
CHECK_FWHM_MM = 8.0


def _sitk_image(volume: np.ndarray, spacing: np.ndarray) -> sitk.Image:
    """A float SimpleITK image of an (X, Y, Z) array in the grid's millimetre frame (origin 0, the array's axes)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(volume, (2, 1, 0)), dtype=np.float32))
    image.SetSpacing([float(s) for s in spacing])
    return image


def register_rigid(fixed: np.ndarray, moving: np.ndarray, spacing: np.ndarray, threads: int = 1) -> dict:
    """Rigid (6-parameter) registration of ``moving`` to ``fixed``, two arrays on one grid of voxel size ``spacing``.

    Mattes mutual information (32 bins, 20 % of the voxels on a regular grid: deterministic), regular-step gradient
    descent over three levels (shrunk 4, 2, 1 times, smoothed 2, 1, 0 voxels), parameters scaled by their
    physical shift, rotation about the grid's centre, started from the header's alignment.

    Returns:
        ``{"matrix": 4x4 array, "mattes_mi": final metric (more negative: better), "iterations": int}``; the matrix
        maps a point of the grid's millimetre frame (``voxel * spacing``) in ``fixed`` to the matching point in
        ``moving``.
    """
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(max(1, int(threads)))
    fixed_image, moving_image = _sitk_image(fixed, spacing), _sitk_image(moving, spacing)
    transform = sitk.Euler3DTransform()
    transform.SetCenter([float(c) for c in (np.asarray(fixed.shape) - 1) / 2.0 * np.asarray(spacing)])
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.REGULAR)
    method.SetMetricSamplingPercentage(0.2, seed=1)  # 0 would seed from the clock
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0, minStep=0.01, numberOfIterations=100, relaxationFactor=0.5
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([4, 2, 1])
    method.SetSmoothingSigmasPerLevel([2, 1, 0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    method.SetInitialTransform(transform, inPlace=True)
    method.Execute(fixed_image, moving_image)
    matrix = np.eye(4)
    matrix[:3, :3] = np.asarray(transform.GetMatrix(), dtype=np.float64).reshape(3, 3)
    matrix[:3, 3] = np.asarray(transform.TransformPoint((0.0, 0.0, 0.0)), dtype=np.float64)
    return {
        "matrix": matrix,
        "mattes_mi": float(method.GetMetricValue()),
        "iterations": int(method.GetOptimizerIteration()),
    }


def normalised_mutual_information(pet: np.ndarray, mri: np.ndarray, head: np.ndarray, bins: int = 32) -> float:
    """Studholme's ``(H(PET) + H(MRI)) / H(PET, MRI)`` over ``head``: 1 for unrelated images, higher when related."""
    a, b = pet[head], mri[head]
    a = np.clip(a, 0, np.percentile(a, 99.5))
    b = np.clip(b, 0, np.percentile(b, 99.5))
    joint, _, _ = np.histogram2d(a, b, bins=bins)
    joint = joint / max(joint.sum(), 1.0)

    def entropy(p: np.ndarray) -> float:
        p = p[p > 0]
        return float(-(p * np.log(p)).sum())

    return (entropy(joint.sum(1)) + entropy(joint.sum(0))) / max(entropy(joint), 1e-12)


def _moved(volume: np.ndarray, axis: int, voxels: int) -> np.ndarray:
    """``volume`` moved by a whole number of voxels along ``axis`` (zeros come in)."""
    out = np.zeros_like(volume)
    src = [slice(None)] * 3
    dst = [slice(None)] * 3
    src[axis] = slice(0, -voxels) if voxels > 0 else slice(-voxels, None)
    dst[axis] = slice(voxels, None) if voxels > 0 else slice(0, voxels)
    out[tuple(dst)] = volume[tuple(src)]
    return out


def alignment_gain(pet: np.ndarray, mri: np.ndarray, spacing: np.ndarray, move_mm: float = 2.0) -> dict:
    """How much moving the MRI improves its match with the PET: negative when it is where it belongs.

    ``gain``: the best normalised mutual information (NMI) of the MRI moved ``move_mm`` along any of the six axis
    directions, minus the NMI where it is, over the NMI's excess above 1 (a relative figure: NMI itself varies with
    noise and field of view). ``prominence``: the NMI lost by moving it 4 times as far, on average, in the same unit;
    near 0 when the MRI matches nowhere near (a flipped or unrelated image).
    """
    head = pet > 0.1 * np.percentile(pet, 99.5)
    if head.sum() < 1000:
        return {"nmi": float("nan"), "gain": float("nan"), "prominence": float("nan")}
    nmi = normalised_mutual_information(pet, mri, head)
    excess = max(nmi - 1.0, 1e-9)
    near, far = [], []
    for axis in range(3):
        step = max(1, int(round(move_mm / float(spacing[axis]))))
        for sign in (1, -1):
            near.append(normalised_mutual_information(pet, _moved(mri, axis, sign * step), head))
            far.append(normalised_mutual_information(pet, _moved(mri, axis, sign * 4 * step), head))
    return {"nmi": nmi, "gain": (max(near) - nmi) / excess, "prominence": (nmi - float(np.mean(far))) / excess}


def white_grey_ratio(pet: np.ndarray, mri: np.ndarray, spacing: np.ndarray) -> float:
    """The MRI's median where the PET shows white matter over its median where the PET shows grey matter.

    Brain: the PET above 30 % of its 99.5th percentile, holes filled, 8 mm in from its edge. Grey matter: the brain's
    hottest 15 %; white matter: brain below half the grey matter's median uptake. Above 1 on a T1 (white brighter
    than grey); below 1 on T2 and FLAIR images.
    """
    brain = ndimage.binary_fill_holes(pet > 0.3 * np.percentile(pet, 99.5))
    brain = ndimage.binary_erosion(brain, iterations=max(1, int(round(8.0 / float(np.min(spacing))))))
    if brain.sum() < 1000:
        return float("nan")
    grey = brain & (pet >= np.percentile(pet[brain], 85))
    white = brain & (pet < 0.5 * np.median(pet[grey]))
    if white.sum() < 100:
        return float("nan")
    return float(np.median(mri[white]) / max(float(np.median(mri[grey])), 1e-12))


class RegisterMRId(MapTransform):
    """Register the MRI to the PET, resample it onto the PET's grid, and keep it only if it passes both checks.

    Records ``mri_registration`` in the study: ``registered`` (bool), the transform (``rotation_deg``: Euler angles
    about the grid's axes, ``translation_mm``: how far the grid's centre moved), ``mattes_mi``, ``iterations``,
    ``seconds``, the checks' ``nmi``/``gain``/``prominence``/``white_grey_ratio``, and ``used`` (False: the MRI was
    dropped, ``reason`` says why). Without an MRI it does nothing; a PET grid too small to register on
    (:data:`MIN_AXIS_VOXELS`) keeps the MRI where its header places it, with a warning line and a ``note``.

    Args:
        pet_key, mri_key: the PET (on the network's grid) and the MRI (any grid, its own affine).
        register: register the MRI (True, or a flag word) or trust its header's alignment; the checks run either way.
        max_gain: the alignment check's threshold on :func:`alignment_gain`'s ``gain``: on validation subjects a
            T1 1 mm off gained at most 0.028 from a 2 mm move, one 2 mm off at least 0.034 (``bench_alignment.py``).
        min_prominence: the alignment check's threshold on ``prominence``: on validation subjects at least 0.49 for
            aligned T1s, at most 0.23 for T1s 8 mm or more off or reversed.
        min_white_grey_ratio: the T1 check's threshold on :func:`white_grey_ratio`: on validation subjects 1.16-1.39
            for T1s, 0.55-0.75 for T2-like and 0.79-0.85 for FLAIR-like images.
    """

    def __init__(
        self,
        pet_key: str = "pet",
        mri_key: str = "mri",
        register: bool = True,
        max_gain: float = 0.031,
        min_prominence: float = 0.35,
        min_white_grey_ratio: float = 1.0,
    ) -> None:
        super().__init__([pet_key, mri_key], allow_missing_keys=True)
        self.pet_key, self.mri_key = pet_key, mri_key
        self.register = flag(register, "register_mri")
        self.max_gain, self.min_prominence = float(max_gain), float(min_prominence)
        self.min_white_grey_ratio = float(min_white_grey_ratio)
        self.resample = ResampleToMatch(mode="bilinear", padding_mode="zeros")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        mri = d.get(self.mri_key)
        if mri is None:
            return d
        pet = d[self.pet_key]
        start = time.perf_counter()
        if min(pet.shape[1:]) < MIN_AXIS_VOXELS:
            note = (
                f"the PET's grid {list(pet.shape[1:])} is too small to register and check the MRI (fewer than "
                f"{MIN_AXIS_VOXELS} voxels along an axis): the MRI's header alignment is trusted"
            )
            logger.warning(f"study '{d.get('id')}': {note}")
            d[self.mri_key] = self.resample(mri, img_dst=pet)
            d[REGISTRATION_KEY] = {"registered": False, "used": True, "note": note}
            return d
        spacing = np.asarray(affine_to_spacing(pet.affine, r=3), dtype=np.float64)
        record: dict[str, Any] = {"registered": self.register}
        if self.register:
            mri = self._registered(pet, mri, spacing, record)
        on_grid = self.resample(mri, img_dst=pet)
        record.update(self._checks(pet, on_grid, spacing))
        record["seconds"] = round(time.perf_counter() - start, 3)
        d[REGISTRATION_KEY] = record
        if record["used"]:
            d[self.mri_key] = on_grid
        else:
            logger.warning(f"study '{d.get('id')}': {record['reason']}; using the MRI-free path")
            d.pop(self.mri_key)
        return d

    def _registered(self, pet: MetaTensor, mri: MetaTensor, spacing: np.ndarray, record: dict) -> MetaTensor:
        """The MRI with its affine corrected by the rigid transform that best matches it to the PET."""
        header_aligned = self.resample(mri, img_dst=pet)
        result = register_rigid(_array(pet), _array(header_aligned), spacing, threads=max(1, torch.get_num_threads()))
        pet_affine = np.asarray(pet.affine, dtype=np.float64)
        to_frame = np.diag([*spacing, 1.0]) @ np.linalg.inv(pet_affine)  # world (RAS mm) -> the grid's mm frame
        in_world = np.linalg.inv(to_frame) @ result["matrix"] @ to_frame  # PET world point -> MRI world point
        registered = mri.clone()
        registered.affine = torch.as_tensor(np.linalg.inv(in_world) @ np.asarray(mri.affine, dtype=np.float64))
        centre = (pet_affine @ [*((np.asarray(pet.shape[1:]) - 1) / 2.0), 1.0])[:3]  # the grid's centre, world mm
        rotation = sitk.Euler3DTransform()
        rotation.SetMatrix(result["matrix"][:3, :3].ravel().tolist())
        record.update(
            rotation_deg=[round(float(np.degrees(a)), 3) for a in rotation.GetParameters()[:3]],
            translation_mm=[round(float(t), 3) for t in in_world[:3, :3] @ centre + in_world[:3, 3] - centre],
            mattes_mi=round(result["mattes_mi"], 5),
            iterations=result["iterations"],
        )
        return registered

    def _checks(self, pet: MetaTensor, mri_on_grid: MetaTensor, spacing: np.ndarray) -> dict:
        """The alignment and T1-contrast checks; ``used`` and, when it fails, ``reason``."""
        smooth = ndimage.gaussian_filter(_array(pet), fwhm_to_sigma(CHECK_FWHM_MM) / spacing)
        mri = _array(mri_on_grid)
        checks = alignment_gain(smooth, mri, spacing)
        checks["white_grey_ratio"] = white_grey_ratio(smooth, mri, spacing)
        out = {key: round(float(value), 4) for key, value in checks.items()}
        if not (checks["gain"] <= self.max_gain and checks["prominence"] >= self.min_prominence):
            out["reason"] = (
                f"the MRI does not line up with the PET{' after registration' if self.register else ''} "
                f"(moving it 2 mm improves the match by {checks['gain']:.3f}, limit {self.max_gain:g}; "
                f"prominence {checks['prominence']:.2f}, at least {self.min_prominence:g})"
            )
        elif not checks["white_grey_ratio"] >= self.min_white_grey_ratio:
            out["reason"] = (
                f"the MRI does not look like a T1 (white/grey matter intensity ratio {checks['white_grey_ratio']:.2f}, "
                f"a T1's is at least {self.min_white_grey_ratio:g}: a T2, FLAIR or other contrast?)"
            )
        out["used"] = "reason" not in out
        return out


def _array(image: Any) -> np.ndarray:
    """The (X, Y, Z) float array of a channel-first image."""
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    return np.asarray(array[0] if array.ndim == 4 else array, dtype=np.float32)
