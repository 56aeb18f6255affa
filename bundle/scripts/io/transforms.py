"""Dictionary transforms that load a study (with checks and units) before the network and save it after.

Preprocessing starts with :class:`LoadStudyd`; postprocessing ends with :class:`ConvertUnitsd` and
:class:`SaveStudyd`. Between them the config uses MONAI's own transforms (``EnsureChannelFirstd``, ``Orientationd``,
``ResampleToMatchd``, ``Invertd``).
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform

from .dicom import suv_calibration, write_derived_series
from .errors import StudyError
from .formats import check_image_format
from .options import flag
from .options import output_units as parse_output_units
from .studies import study_outputs
from .volumes import check_volume, dicom_series, overlap_fraction, read_volume, source_path
from .writers import nifti_description, remove_stale_temporaries, write_nifti

logger = logging.getLogger(__name__)

#: below this fraction of the PET field of view covered by the MRI, a warning is logged
MIN_MRI_COVERAGE = 0.5


def units_for_study(study: Mapping, pet: MetaTensor, output_units: str) -> dict:
    """How to convert the PET's stored values to the requested output units.

    Returns:
        ``{"input_units", "output_units", "factor", "how"}``; ``factor`` multiplies values in the input's units.

    Raises:
        StudyError: when the conversion needs header values (weight, dose ...) that the study does not have.
    """
    output_units = parse_output_units(output_units)
    series, path = dicom_series(pet), source_path(pet)
    if series is not None:
        cal = suv_calibration(series, path)
        input_units = cal.units
        suv_factor, bqml_factor, how = cal.factor, cal.bqml_factor, cal.description
        if output_units == "bqml" and bqml_factor is None and cal.units not in ("BQML", "GML"):
            bqml_factor, how = 1.0, f"DICOM Units '{cal.units}' kept as they are"
    else:
        input_units, bqml_factor = "BQML (assumed for NIfTI)", 1.0
        weight, dose = study.get("patient_weight_kg"), study.get("injected_dose_bq")
        if weight and dose and float(weight) > 0 and float(dose) > 0:
            suv_factor = float(weight) * 1000.0 / float(dose)
            how = f"weight {weight} kg and dose {float(dose):.4g} Bq from the datalist record"
        else:
            suv_factor = None
            how = (
                'NIfTI has no DICOM header: add "patient_weight_kg" and "injected_dose_bq" (decay-corrected to '
                "the image's reference time) to the study's record"
            )
    factor = suv_factor if output_units == "suv" else bqml_factor
    if factor is None:
        raise StudyError(f"cannot report {output_units.upper()}: {how}", path)
    return {
        "input_units": input_units,
        "output_units": "SUVbw" if output_units == "suv" else "BQML",
        "factor": float(factor),
        "how": how,
    }


def _check_modality(volume: MetaTensor, expected: str, role: str) -> None:
    """A DICOM series given as ``role`` must have the expected Modality (catches swapped PET and MRI folders)."""
    series = dicom_series(volume)
    if series is not None:
        modality = str(series.header.get("Modality", "")).upper()
        if modality and modality != expected:
            raise StudyError(
                f"expected a {role} series (Modality {expected}), got Modality {modality}", source_path(volume)
            )


class LoadStudyd(Transform):
    """Read and check a study's PET (and MRI), and work out its output units.

    Sets ``pet`` and ``mri`` (absent for PET-only studies) to the study's one representation, ``MetaTensor`` volumes
    (no channel) whose meta keep the source, the input grid and any DICOM series (:func:`read_volume`) through to
    :class:`SaveStudyd`, and ``units`` (see :func:`units_for_study`).

    Args:
        output_units: ``"bqml"`` (the input's activity units) or ``"suv"``.

    Raises:
        StudyError: any problem with the inputs, naming the file.
    """

    def __init__(self, output_units: str = "bqml") -> None:
        self.output_units = parse_output_units(output_units)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        check_image_format(d["pet"], "PET")
        pet = check_volume(read_volume(d["pet"]), "PET")
        _check_modality(pet, "PT", "PET")
        d["units"] = units_for_study(d, pet, self.output_units)
        if d.get("mri"):
            check_image_format(d["mri"], "MRI")
            mri = check_volume(read_volume(d["mri"]), "MRI")
            _check_modality(mri, "MR", "MRI")
            coverage = overlap_fraction(pet, mri)
            if coverage <= 0.0:
                raise StudyError(
                    f"PET and MRI do not overlap in space (MRI {source_path(mri)} lies outside the PET field of view); "
                    "check that both come from the same patient and scanner coordinate system",
                    source_path(mri),
                )
            if coverage < MIN_MRI_COVERAGE:
                logger.warning(
                    f"study '{d.get('id')}': the MRI covers only {100 * coverage:.0f} % of the PET field of view"
                )
            d["mri"] = mri
        d["pet"] = pet
        return d


class ConvertUnitsd(MapTransform):
    """Multiply the outputs by ``data["units"]["factor"]`` (Bq/ml -> SUV, or identity)."""

    def __init__(self, keys, allow_missing_keys: bool = True) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        factor = float(d["units"]["factor"])
        for key in self.key_iterator(d):
            d[key] = d[key] * factor
        return d


class SaveStudyd(Transform):
    """Write a study's outputs atomically on the input PET's grid.

    ``<output_dir>/<id>/<id>_enhanced.nii.gz`` (float32, the input's shape and affine; a NIfTI input's header is kept)
    and with ``save_dicom`` a derived DICOM series ``<id>_enhanced_dicom/`` for DICOM input. NIfTI input has no DICOM
    header to derive a series from: DICOM output is skipped for it with a note in the summary. Written paths go to
    ``data["outputs"]``, notes to ``data["notes"]``.

    Args:
        output_dir: results folder.
        save_dicom: also write the derived DICOM series.
        model_version: bundle version, written into the DICOM SeriesDescription.
        key: the enhanced image's key.
    """

    def __init__(self, output_dir: str, save_dicom: bool = False, model_version: str = "unknown", key="pred") -> None:
        self.output_dir = output_dir
        self.save_dicom = flag(save_dicom, "save_dicom")
        self.model_version = model_version
        self.enhanced_key = key

    @staticmethod
    def _array(image: torch.Tensor, pet: MetaTensor) -> np.ndarray:
        """The output as a float32 ``(X, Y, Z)`` array, checked to lie on the input PET's grid."""
        array = np.asarray(image.detach().cpu(), dtype=np.float32)
        if array.ndim == 4:
            array = array[0]
        shape, input_affine = tuple(int(n) for n in pet.meta["spatial_shape"]), pet.meta["original_affine"]
        affine = np.asarray(getattr(image, "affine", input_affine), dtype=np.float64)
        if array.shape != shape or not np.allclose(affine, input_affine, atol=1e-4):
            raise RuntimeError(
                f"the output grid {array.shape} / {affine.tolist()} does not match the input grid "
                f"{shape} / {np.asarray(input_affine).tolist()}"
            )
        return array

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        paths = study_outputs(self.output_dir, d["id"])
        try:
            self._save(d, paths)
        except StudyError:
            raise
        except Exception as exc:
            raise StudyError(f"could not write the outputs: {type(exc).__name__}: {exc}", paths["folder"]) from exc
        return d

    def _save(self, d: dict, paths: dict) -> None:
        pet, series = d["pet"], dicom_series(d["pet"])
        remove_stale_temporaries(paths["folder"])
        template = None if series is not None else source_path(pet)
        affine = np.asarray(pet.meta["original_affine"], dtype=np.float64)
        outputs = dict(d.get("outputs") or {})
        notes = list(d.get("notes") or [])
        enhanced = self._array(d[self.enhanced_key], pet)
        units = "GML" if d["units"]["output_units"] == "SUVbw" else "BQML"
        description = nifti_description(self.model_version, units)
        outputs["enhanced"] = str(
            write_nifti(enhanced, affine, paths["enhanced"], template=template, description=description)
        )
        if self.save_dicom and series is not None:
            files = write_derived_series(
                enhanced,
                series.files,
                paths["dicom"],
                series_description=f"M2Diff enhanced v{self.model_version}",
                units=units,
                derivation=f"Low-dose PET enhanced by the M2Diff MONAI bundle v{self.model_version} "
                f"(MRI-guided diffusion); {d.get('method', '')}".strip(),
            )
            outputs["dicom"] = str(Path(files[0]).parent)
        elif self.save_dicom:
            notes.append("DICOM output skipped: NIfTI input has no DICOM header to derive a series from")
            logger.warning(f"study '{d['id']}': {notes[-1]}")
        d["outputs"], d["notes"] = outputs, notes
