"""The inference datalist (``studies.json``): reading, checking each record, and the planned output paths.

``studies.json`` is a JSON list of records::

    [{"id": "sub-01", "pet": "sub-01/pet_ld.nii.gz", "mri": "sub-01/t1.nii.gz", "drf": 20},
     {"pet": "sub-02_pet_dicom/"}]

``pet`` (required) and ``mri`` (optional) are NIfTI files or DICOM series folders, relative to the JSON file's
folder unless absolute. ``id`` defaults to the PET file or folder name without extensions. ``drf`` (dose reduction
factor) is informational. ``patient_weight_kg`` and ``injected_dose_bq`` give SUV for NIfTI input.

A datalist that cannot be used at all (missing, not JSON, not a list) raises :class:`DatalistError`. A record that
cannot be used (no ``pet``, bad id, duplicate id, outputs that would overwrite an input) keeps an ``error`` entry and
is reported as a failed study while the others run.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from .errors import StudyError

logger = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".dcm", ".gz")
ERROR_KEY = "error"


class DatalistError(ValueError):
    """The datalist as a whole cannot be used (the message is also logged, above MONAI's traceback)."""

    def __init__(self, message: str) -> None:
        logger.error(message)
        super().__init__(message)


def default_study_id(path: str | os.PathLike) -> str:
    """Study id from a PET path: the file or folder name without extension(s): ``a_pet.nii.gz`` -> ``a_pet``."""
    name = Path(str(path).rstrip("/\\")).name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def _resolve(value: Any, root: Path) -> str:
    path = Path(os.path.expanduser(str(value)))
    return str(path if path.is_absolute() else (root / path))


def _check_record(index: int, record: Any, root: Path) -> dict:
    if not isinstance(record, dict):
        return {
            "id": f"record-{index}",
            ERROR_KEY: f"record {index} must be a JSON object, got {type(record).__name__}",
        }
    study = dict(record)
    pet = study.get("pet")
    if "id" in study and study["id"] is not None:
        study["id"] = str(study["id"])
    elif isinstance(pet, str) and pet.strip():
        study["id"] = default_study_id(pet)
    else:
        study["id"] = f"record-{index}"
    if not isinstance(pet, str) or not pet.strip():
        study[ERROR_KEY] = f'record {index} has no "pet" path (a NIfTI file or DICOM folder); got keys {sorted(record)}'
        return study
    study["pet"] = _resolve(pet, root)
    mri = study.get("mri")
    if mri in (None, ""):
        study.pop("mri", None)
    elif not isinstance(mri, str):
        study[ERROR_KEY] = f'"mri" must be a path string or absent, got {mri!r}'
        return study
    else:
        study["mri"] = _resolve(mri, root)
    sid = study["id"]
    if not sid or sid.startswith(".") or any(c in sid for c in '/\\:*?"<>|') or sid != sid.strip():
        study[ERROR_KEY] = f'"id" {sid!r} cannot name an output folder: use letters, digits, "-", "_" and "."'
    drf = study.get("drf")
    if drf is not None and (isinstance(drf, bool) or not isinstance(drf, (int, float)) or drf <= 0):
        study[ERROR_KEY] = f'"drf" (dose reduction factor) must be a positive number, got {drf!r}'
    return study


def load_datalist(path: str | os.PathLike) -> list[dict]:
    """Read and check ``studies.json``; resolve relative paths against its folder.

    Raises:
        DatalistError: the file is missing, not valid JSON, or not a list of records.
    """
    path = Path(path)
    if not path.is_file():
        raise DatalistError(
            f"datalist {path} does not exist; expected a JSON list of studies like "
            '[{"pet": "pet.nii.gz", "mri": "t1.nii.gz"}]'
        )
    try:
        records = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatalistError(f"datalist {path} is not valid JSON: {exc}") from exc
    if isinstance(records, dict) and isinstance(records.get("studies"), list):
        records = records["studies"]
    if not isinstance(records, list):
        raise DatalistError(
            f'datalist {path} must hold a JSON list of studies (each {{"pet": ..., "mri": ...}}), '
            f"got {type(records).__name__}"
        )
    if not records:
        raise DatalistError(f"datalist {path} lists no studies")
    studies, seen = [], {}
    for index, record in enumerate(records):
        study = _check_record(index, record, path.parent.resolve())
        if study["id"] in seen and ERROR_KEY not in study:
            study[ERROR_KEY] = (
                f"duplicate id '{study['id']}' (also record {seen[study['id']]}): give each study its own \"id\""
            )
        seen.setdefault(study["id"], index)
        studies.append(study)
    return studies


def study_outputs(output_dir: str | os.PathLike, study_id: str) -> dict[str, str]:
    """Where a study's outputs go: ``<output_dir>/<id>/<id>_enhanced.nii.gz`` and siblings."""
    folder = Path(output_dir) / study_id
    return {
        "folder": str(folder),
        "enhanced": str(folder / f"{study_id}_enhanced.nii.gz"),
        "dicom": str(folder / f"{study_id}_enhanced_dicom"),
        "qc_png": str(folder / f"{study_id}_qc.png"),
    }


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_outputs_spare_inputs(study: dict, output_dir: str | os.PathLike) -> None:
    """Refuse outputs that would overwrite one of the study's inputs or write into an input DICOM folder.

    Raises:
        StudyError: naming the output and the input it would overwrite.
    """
    inputs = [Path(os.path.realpath(study[k])) for k in ("pet", "mri") if study.get(k)]
    for name, target in study_outputs(output_dir, study["id"]).items():
        out = Path(os.path.realpath(target))
        for source in inputs:
            overwrites = out == source
            writes_into_input = source.is_dir() and _inside(out, source)
            replaces_input = name == "dicom" and _inside(source, out)  # the DICOM output folder is replaced whole
            if overwrites or writes_into_input or replaces_input:
                raise StudyError(
                    f"refusing to write the {name} output {target}: it would overwrite or write into this input; "
                    "choose another --output_dir",
                    source,
                )


def prepare_output_dir(output_dir: str | os.PathLike) -> str:
    """Create ``output_dir`` and check that files can be written in it.

    Raises:
        PermissionError: naming the folder when it is not writable (or is a file).
    """
    folder = Path(output_dir)
    problem = f"output_dir {folder} is a file; expected a folder for the results" if folder.is_file() else None
    if problem is None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
                pass
        except OSError as exc:
            problem = f"output_dir {folder} is not writable: {exc.strerror or exc}; choose another --output_dir"
    if problem is not None:
        logger.error(problem)
        raise PermissionError(problem)
    return str(folder)
