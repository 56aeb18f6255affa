"""Recognise an input image by its content (not its name): NIfTI-1/2 (plain or gzip) or DICOM.

A file that is neither is refused before any reader sees it, so that a JPEG renamed ``.nii.gz`` is reported as what
it is, naming the file and its role (PET or MRI).
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

from .errors import StudyError

#: ``sizeof_hdr``, the first 4 bytes of a NIfTI-1 and a NIfTI-2 header (either byte order)
NIFTI_HEADER_SIZES = (348, 540)
GZIP_MAGIC = b"\x1f\x8b"
#: DICOM Part 10 files hold "DICM" after a 128-byte preamble
DICOM_MAGIC_OFFSET, DICOM_MAGIC = 128, b"DICM"
#: other formats, named in the message when recognised
OTHER_FORMATS = {
    b"\xff\xd8\xff": "a JPEG image",
    b"\x89PNG": "a PNG image",
    b"GIF8": "a GIF image",
    b"II*\x00": "a TIFF image",
    b"MM\x00*": "a TIFF image",
    b"%PDF": "a PDF document",
    b"PK\x03\x04": "a ZIP archive",
}
#: files of a folder looked at for a DICOM marker
MAX_FOLDER_FILES = 64


def _head(path: Path, size: int = DICOM_MAGIC_OFFSET + 4) -> tuple[bytes, bool]:
    """The first bytes of a file, decompressed when it is gzip; and whether it was gzip."""
    with open(path, "rb") as f:
        head = f.read(size)
    if not head.startswith(GZIP_MAGIC):
        return head, False
    try:
        with gzip.open(path, "rb") as f:
            return f.read(size), True
    except (OSError, EOFError):
        return b"", True


def _is_nifti(head: bytes) -> bool:
    if len(head) < 4:
        return False
    return any(struct.unpack(order + "i", head[:4])[0] in NIFTI_HEADER_SIZES for order in "<>")


def _is_dicom(head: bytes) -> bool:
    return head[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == DICOM_MAGIC


def image_format(path: str | os.PathLike) -> str | None:
    """``"nifti"``, ``"dicom"`` (one DICOM file), ``"dicom_folder"`` or ``None`` (anything else) by content."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        return "dicom_folder" if any(_is_dicom(_head(p)[0]) for p in files[:MAX_FOLDER_FILES]) else None
    head, _ = _head(path)
    if _is_nifti(head):
        return "nifti"
    return "dicom" if _is_dicom(head) else None


def _describe(path: Path) -> str:
    head, was_gzip = _head(path)
    if was_gzip and not head:
        return "a gzip file that cannot be decompressed (corrupt or truncated?)"
    kind = next((name for magic, name in OTHER_FORMATS.items() if head.startswith(magic)), None)
    kind = kind or ("an empty file" if not head else "an unknown format")
    return f"gzip-compressed data ({kind})" if was_gzip else kind


def check_image_format(path: str | os.PathLike, role: str) -> str:
    """Refuse a ``role`` ("PET" or "MRI") input that is neither NIfTI nor DICOM, by content.

    Returns:
        the format (see :func:`image_format`).

    Raises:
        StudyError: naming the file, its role and what it seems to be.
    """
    path = Path(path)
    if not path.exists():
        raise StudyError(f"no such file or folder (the {role})", path)
    found = image_format(path)
    if found in ("nifti", "dicom_folder"):
        return found
    expected = f"expected the {role} as a NIfTI file (.nii, .nii.gz) or a folder of DICOM files"
    if found == "dicom":
        raise StudyError(f"{role} is a single DICOM file; {expected} (give the folder of the series)", path)
    if path.is_dir():
        raise StudyError(f"{role} folder holds no DICOM files (no 'DICM' marker); {expected}", path)
    raise StudyError(f"{role} is not NIfTI or DICOM: the content is {_describe(path)}; {expected}", path)
