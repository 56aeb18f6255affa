"""Atomic writers: a file or folder appears complete under its final name, or not at all.

Each writer works on a hidden temporary path in the destination folder (same file system) and moves it into place
with :func:`os.replace`, so a run that is killed or fails mid-write leaves no partial output under the final name.
Left-over temporaries of killed runs are hidden (``.<name>.tmp-*``) and removed by :func:`remove_stale_temporaries`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

TEMP_MARK = ".tmp-"
#: bytes of the NIfTI-1 header's ``descrip`` field
NIFTI_DESCRIPTION_BYTES = 80


def _temporary_sibling(path: Path) -> Path:
    """Hidden temporary path next to ``path`` keeping its suffixes (nibabel picks gzip from ``.nii.gz``)."""
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    return path.with_name(f".{path.name}{TEMP_MARK}{uuid.uuid4().hex[:8]}{suffix}")


def fsync_directory(folder: str | os.PathLike) -> None:
    """Make a rename or a new file in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary file path to write; on success move it to ``path``, on failure delete it.

    With ``durable`` the file's data and the rename are fsync'ed before returning (what a DICOM node must do before
    acknowledging an instance).

    Example::

        with atomic_path("out/a.nii.gz") as tmp:
            nib.save(image, tmp)
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_sibling(final)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"the writer did not create its temporary file {tmp}")
        if durable:
            with open(tmp, "rb+") as written:
                os.fsync(written.fileno())
        os.replace(tmp, final)
        if durable:
            fsync_directory(final.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder to fill; on success it replaces the folder ``path``, on failure it is deleted."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}{TEMP_MARK}{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
        old = None
        if final.exists():
            old = final.with_name(f".{final.name}{TEMP_MARK}old-{uuid.uuid4().hex[:8]}")
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete hidden temporaries that killed runs left in ``folder``; returns what was removed."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        if entry.name.startswith(".") and TEMP_MARK in entry.name:
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def write_json(data: Any, path: str | os.PathLike) -> Path:
    """Write ``data`` as indented JSON atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return Path(path)


def nifti_description(model_version: str, units: str | None) -> str:
    """What an enhanced NIfTI is, for its header's ``descrip``: model version, activity units and research use.

    ``"M2Diff v0.8.3 enhanced PET, Bq/ml; RESEARCH USE ONLY - not for diagnosis"`` (the short research-use form
    when the long one does not fit the field's 80 bytes).
    """
    from scripts.io.dicom import RESEARCH_USE, RESEARCH_USE_SHORT
    from scripts.plotting import unit_label

    for research_use in (RESEARCH_USE, RESEARCH_USE_SHORT):
        text = f"M2Diff v{model_version} enhanced PET, {unit_label(units)}; {research_use}"
        if len(text.encode()) <= NIFTI_DESCRIPTION_BYTES:
            return text
    return f"{RESEARCH_USE_SHORT}: M2Diff v{model_version}".encode()[:NIFTI_DESCRIPTION_BYTES].decode(errors="ignore")


def write_nifti(
    array: np.ndarray,
    affine: np.ndarray,
    path: str | os.PathLike,
    template: str | os.PathLike | None = None,
    description: str | None = None,
) -> Path:
    """Write a float32 NIfTI atomically.

    Args:
        array: 3D image in the array orientation of ``affine``.
        affine: 4x4 voxel-to-world (RAS) matrix.
        path: destination (``.nii`` or ``.nii.gz``).
        template: NIfTI file whose header (sform/qform codes, units, description) the output keeps; its affine
            must describe the same grid. ``None`` builds a fresh header from ``affine``.
        description: the header's ``descrip`` (at most 80 bytes, e.g. :func:`nifti_description`); ``None`` keeps
            the template's.

    Raises:
        ValueError: the grid differs from the template's, or ``description`` is longer than 80 bytes.
    """
    if description is not None and len(description.encode()) > NIFTI_DESCRIPTION_BYTES:
        raise ValueError(f"a NIfTI description holds {NIFTI_DESCRIPTION_BYTES} bytes, got {description!r}")
    array = np.asarray(array, dtype=np.float32)
    affine = np.asarray(affine, dtype=np.float64)
    if template is not None:
        source = nib.load(str(template))
        if source.shape[:3] != array.shape or not np.allclose(source.affine, affine, atol=1e-4):
            raise ValueError(
                f"output grid {array.shape} / affine {affine.tolist()} does not match the template {template} "
                f"grid {source.shape} / affine {source.affine.tolist()}"
            )
        header = source.header.copy()
        header.set_data_shape(array.shape)
        image = type(source)(array, source.affine, header=header)
        image.set_data_dtype(np.float32)
        image.header.set_slope_inter(1.0, 0.0)
        image.set_qform(source.get_qform(), code=int(source.header["qform_code"]))
        image.set_sform(source.get_sform(), code=int(source.header["sform_code"]))
    else:
        image = nib.Nifti1Image(array, affine)
        image.set_data_dtype(np.float32)
        image.set_qform(affine, code=1)
        image.set_sform(affine, code=1)
    if description is not None:
        image.header["descrip"] = description.encode()
    with atomic_path(path) as tmp:
        nib.save(image, str(tmp))
    return Path(path)
