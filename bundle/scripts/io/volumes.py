"""Read one PET or MRI volume (NIfTI file or DICOM series folder) and check that it can be enhanced."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
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


@dataclass
class Volume:
    """A 3D image as read from disk.

    Attributes:
        array: ``(X, Y, Z)`` float32 in the file's array orientation.
        affine: 4x4 voxel-to-RAS matrix.
        path: the file or DICOM folder.
        dicom: the DICOM series (files, header) for DICOM input, else ``None``.
    """

    array: np.ndarray
    affine: np.ndarray
    path: str
    dicom: DicomSeries | None = None

    @property
    def is_dicom(self) -> bool:
        return self.dicom is not None


def read_volume(path: str | os.PathLike) -> Volume:
    """Read a NIfTI file (MONAI ``LoadImage`` with ``NibabelReader``) or a DICOM series folder.

    Raises:
        StudyError: missing path, unsupported file type, unreadable file, or a DICOM series with bad geometry.
    """
    path = Path(path)
    if not path.exists():
        raise StudyError("no such file or folder", path)
    if path.is_dir():
        series = read_dicom_series(path)
        return Volume(series.array, series.affine, str(path), series)
    if not path.name.lower().endswith(NIFTI_SUFFIXES):
        raise StudyError("expected a NIfTI file (.nii, .nii.gz) or a DICOM series folder", path)
    try:
        image = _nifti_loader()(str(path))
    except Exception as exc:
        raise StudyError(
            f"cannot read the NIfTI file (corrupt or truncated?): {_nibabel_error(path, exc)}", path
        ) from exc
    return Volume(np.asarray(image), np.asarray(image.affine, dtype=np.float64), str(path))


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


def check_volume(volume: Volume, modality: str) -> Volume:
    """Check shape and values; squeeze trailing singleton dimensions (``(X, Y, Z, 1)`` -> ``(X, Y, Z)``).

    Args:
        volume: the image read by :func:`read_volume`.
        modality: ``"PET"`` or ``"MRI"`` (PET must be a non-negative activity image).

    Raises:
        StudyError: not 3D, NaN/Inf voxels, all zero, or (PET) negative.
    """
    array = volume.array
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3 or min(array.shape) < 2:
        hint = " (a dynamic/multi-frame image? give one 3D frame)" if array.ndim > 3 else ""
        raise StudyError(
            f"expected a 3D {modality} image with 2 or more voxels along each axis, "
            f"got shape {tuple(array.shape)}{hint}",
            volume.path,
        )
    bad = ~np.isfinite(array)
    if bad.any():
        raise StudyError(
            f"{modality} has {int(bad.sum())} NaN/Inf voxels ({100 * bad.mean():.2f} %); expected finite values",
            volume.path,
        )
    if not np.any(array):
        raise StudyError(f"{modality} is all zero", volume.path)
    if modality == "PET":
        positive = float(array[array > 0].sum())
        negative = float(-array[array < 0].sum())
        if positive <= 0:
            raise StudyError(
                f"PET has no positive voxels (min {array.min():.4g}); expected an activity image", volume.path
            )
        if negative > MAX_NEGATIVE_FRACTION * positive:
            raise StudyError(
                f"PET is largely negative (negative voxels sum to {100 * negative / positive:.1f} % of the positive); "
                "expected an activity image (Bq/ml or SUV) >= 0",
                volume.path,
            )
    volume.array = np.ascontiguousarray(array, dtype=np.float32)
    return volume


def overlap_fraction(pet: Volume, mri: Volume) -> float:
    """Fraction of the PET field of view (its voxel box) that the MRI's voxel box covers, from the 8 MRI corners."""
    corners = np.array(
        [
            [i, j, k, 1.0]
            for i in (-0.5, mri.array.shape[0] - 0.5)
            for j in (-0.5, mri.array.shape[1] - 0.5)
            for k in (-0.5, mri.array.shape[2] - 0.5)
        ]
    )
    in_pet = (np.linalg.inv(pet.affine) @ mri.affine @ corners.T)[:3].T
    low = np.maximum(in_pet.min(axis=0), -0.5)
    high = np.minimum(in_pet.max(axis=0), np.asarray(pet.array.shape) - 0.5)
    extent = np.clip(high - low, 0.0, None)
    return float(np.prod(extent) / np.prod(pet.array.shape))
