"""Per-study intensity normalisation of PET and MRI, an invertible MONAI transform used by every path to the network.

The PET images of a study are divided by one number, the low-dose image's mean bright-tissue activity
(:func:`pet_scale`), the MRI by its own (:func:`mri_scale`); ``inverse`` (or ``Invertd``) multiplies the units back
with :func:`restore_units`, which paths that keep the network's grid call alone.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import InvertibleTransform, MapTransform
from monai.utils import TraceKeys

PET_SCALE_KEY = "pet_scale"


def _robust_mean(volume: torch.Tensor | np.ndarray, what: str) -> float:
    """Mean of the voxels above 25 % of the 99th percentile: a robust 'bright tissue' level that scales linearly."""
    values = np.asarray(volume.detach().cpu() if isinstance(volume, torch.Tensor) else volume, dtype=np.float64)
    values = values[np.isfinite(values)]
    high = np.percentile(values, 99) if values.size else 0.0
    if not high > 0:
        raise ValueError(f"cannot normalise the {what}: its 99th percentile is {high}, expected a positive image")
    return float(values[values > 0.25 * high].mean())


def pet_scale(pet_low_dose: torch.Tensor | np.ndarray) -> float:
    """Per-volume scale of a PET study: mean bright-tissue activity of the low-dose image (linear in its units)."""
    return _robust_mean(pet_low_dose, "PET")


def mri_scale(mri_t1: torch.Tensor | np.ndarray) -> float:
    """Per-volume intensity scale of a T1 MRI (mean of its bright tissue)."""
    return _robust_mean(mri_t1, "MRI")


class NormaliseStudyd(MapTransform, InvertibleTransform):
    """Divide a study's PET images by the low-dose PET's scale and its MRI by the MRI's own scale.

    The PET scale is also stored under ``"pet_scale"``. On ``MetaTensor`` images the scale is recorded in the
    transform trace, so ``inverse`` (or ``Invertd`` with ``orig_keys`` set to a normalised PET key) restores the units.

    Args:
        pet_keys: PET images divided by the scale of ``pet_low_dose_key`` (the low-dose image included).
        pet_low_dose_key: key of the low-dose PET.
        mri_key: key of the T1 MRI (``None``: no MRI; a missing MRI is allowed: the MRI-free path).
    """

    def __init__(self, pet_keys: Sequence[str], pet_low_dose_key: str = "pet", mri_key: str | None = "mri") -> None:
        super().__init__(list(pet_keys) + ([mri_key] if mri_key else []), allow_missing_keys=True)
        self.pet_low_dose_key = pet_low_dose_key
        self.mri_key = mri_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        d[PET_SCALE_KEY] = pet_scale(d[self.pet_low_dose_key])
        for key in self.key_iterator(d):
            scale = mri_scale(d[key]) if key == self.mri_key else d[PET_SCALE_KEY]
            d[key] = d[key] / scale
            if isinstance(d[key], MetaTensor):
                d[key].applied_operations = list(d[key].applied_operations)  # not shared with the input
                self.push_transform(d[key], extra_info={"scale": scale})
        return d

    def inverse(self, data: Mapping[Hashable, Any]) -> dict:
        """Multiply each present key's recorded scale back (the keys must carry this transform's trace)."""
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = restore_units(d[key], d[key])
            self.pop_transform(d[key])  # from the product's copy of the trace
        return d


def restore_units(image: torch.Tensor, normalised: MetaTensor) -> torch.Tensor:
    """``image`` multiplied back by the scale :class:`NormaliseStudyd` recorded last on ``normalised``'s trace (the
    normalised PET's, for the network's output); the grid is left as it is."""
    recorded = normalised.applied_operations[-1] if normalised.applied_operations else {}
    if recorded.get(TraceKeys.CLASS_NAME) != NormaliseStudyd.__name__:
        raise ValueError(f"the image's last transform is {recorded.get(TraceKeys.CLASS_NAME)}, not NormaliseStudyd")
    return image * recorded[TraceKeys.EXTRA_INFO]["scale"]
