"""Read one PET or MRI volume (NIfTI file or DICOM series folder) as a MetaTensor and check that it can be enhanced."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImage

from .dicom import DicomSeries, read_dicom_series
from .errors import StudyError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: PET whose negative voxels sum to more than this fraction of the positive ones is refused
MAX_NEGATIVE_FRACTION = 0.05


@functools.cache
def _nifti_loader() -> LoadImage:
    """One shared ``LoadImage`` (building one registers every reader and logs codec warnings each time)."""
    return LoadImage(reader="NibabelReader", image_only=True, dtype=np.float32)


#: meta key of the :class:`~scripts.io.dicom.DicomSeries` (files, header) an image was read from (DICOM input only)
DICOM_SERIES_KEY = "dicom_series"


def source_path(image: MetaTensor) -> str:
    """The file or DICOM folder an image was read from."""
    return str(image.meta["filename_or_obj"])


def dicom_series(image: MetaTensor) -> DicomSeries | None:
    """The DICOM series an image was read from, ``None`` for NIfTI input."""
    return image.meta.get(DICOM_SERIES_KEY)


def _as_image(array: np.ndarray, affine: np.ndarray, path: str, series: DicomSeries | None = None) -> MetaTensor:
    """The study's one representation: a MetaTensor (no channel) with its RAS affine, source and original grid."""
    affine = np.asarray(affine, dtype=np.float64)
    meta = {"filename_or_obj": path, "original_affine": affine.copy(), "space": "RAS"}
    meta["spatial_shape"] = np.asarray(array.shape)
    if series is not None:
        meta[DICOM_SERIES_KEY] = series
    return MetaTensor(torch.as_tensor(array), affine=torch.as_tensor(affine), meta=meta)


def read_volume(path: str | os.PathLike) -> MetaTensor:
    """Read a NIfTI file (MONAI ``LoadImage`` with ``NibabelReader``) or a DICOM series folder.

    Returns:
        the image as stored (no channel), float32, with ``affine`` (voxel to RAS) and meta ``filename_or_obj``,
        ``original_affine``, ``spatial_shape`` and, for DICOM, the series (:func:`dicom_series`).

    Raises:
        StudyError: missing path, unsupported file type, unreadable file, or a DICOM series with bad geometry.
    """
    path = Path(path)
    if not path.exists():
        raise StudyError("no such file or folder", path)
    if path.is_dir():
        series = read_dicom_series(path)
        return _as_image(series.array, series.affine, str(path), series)
    if not path.name.lower().endswith(NIFTI_SUFFIXES):
        raise StudyError("expected a NIfTI file (.nii, .nii.gz) or a DICOM series folder", path)
    try:
        image = _nifti_loader()(str(path))
    except Exception as exc:
        raise StudyError(
            f"cannot read the NIfTI file (corrupt or truncated?): {_nibabel_error(path, exc)}", path
        ) from exc
    return _as_image(np.asarray(image), np.asarray(image.affine), str(path))


def _nibabel_error(path: Path, exc: BaseException) -> str:
    """nibabel's own complaint about a file MONAI could not read (more telling than 'no suitable reader')."""
    try:
        nib.load(str(path)).get_fdata()
    except Exception as nib_exc:
        return f"{type(nib_exc).__name__}: {_first_line(nib_exc)}"
    return _first_line(exc)


def _first_line(exc: BaseException) -> str:
    cause = exc
    while cause.__cause__ is not None:
        cause = cause.__cause__
    text = str(cause).strip().splitlines()
    return text[0] if text else type(cause).__name__


def check_volume(volume: MetaTensor, modality: str) -> MetaTensor:
    """Check shape and values; squeeze trailing singleton dimensions (``(X, Y, Z, 1)`` -> ``(X, Y, Z)``).

    Args:
        volume: the image read by :func:`read_volume`.
        modality: ``"PET"`` or ``"MRI"`` (PET must be a non-negative activity image).

    Raises:
        StudyError: not 3D, NaN/Inf voxels, all zero, or (PET) negative.
    """
    array, path = np.asarray(volume), source_path(volume)
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3 or min(array.shape) < 2:
        hint = " (a dynamic/multi-frame image? give one 3D frame)" if array.ndim > 3 else ""
        raise StudyError(
            f"expected a 3D {modality} image with 2 or more voxels along each axis, "
            f"got shape {tuple(array.shape)}{hint}",
            path,
        )
    bad = ~np.isfinite(array)
    if bad.any():
        raise StudyError(
            f"{modality} has {int(bad.sum())} NaN/Inf voxels ({100 * bad.mean():.2f} %); expected finite values", path
        )
    if not np.any(array):
        raise StudyError(f"{modality} is all zero", path)
    if modality == "PET":
        positive = float(array[array > 0].sum())
        negative = float(-array[array < 0].sum())
        if positive <= 0:
            raise StudyError(f"PET has no positive voxels (min {array.min():.4g}); expected an activity image", path)
        if negative > MAX_NEGATIVE_FRACTION * positive:
            raise StudyError(
                f"PET is largely negative (negative voxels sum to {100 * negative / positive:.1f} % of the positive); "
                "expected an activity image (Bq/ml or SUV) >= 0",
                path,
            )
    meta = {key: value for key, value in volume.meta.items() if key != "affine"}  # the affine travels as affine=
    meta["spatial_shape"] = np.asarray(array.shape)
    return MetaTensor(torch.as_tensor(np.ascontiguousarray(array, dtype=np.float32)), affine=volume.affine, meta=meta)


def overlap_fraction(pet: MetaTensor, mri: MetaTensor) -> float:
    """Fraction of the PET field of view (its voxel box) that the MRI's voxel box covers, from the 8 MRI corners."""
    corners = np.array(
        [
            [i, j, k, 1.0]
            for i in (-0.5, mri.shape[0] - 0.5)
            for j in (-0.5, mri.shape[1] - 0.5)
            for k in (-0.5, mri.shape[2] - 0.5)
        ]
    )
    in_pet = (np.linalg.inv(pet.affine.numpy()) @ mri.affine.numpy() @ corners.T)[:3].T
    low = np.maximum(in_pet.min(axis=0), -0.5)
    high = np.minimum(in_pet.max(axis=0), np.asarray(pet.shape) - 0.5)
    extent = np.clip(high - low, 0.0, None)
    return float(np.prod(extent) / np.prod(pet.shape))
