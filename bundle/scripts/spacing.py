"""The voxel size the network runs at: the training spacing recorded with the weights, and each study's two grids.

Preprocessing resamples the PET to the training spacing (MONAI's ``Spacingd``; ``Invertd`` brings the output back to
the input's grid). :class:`RecordGridsd`, placed after it, records the input grid and the grid the network runs on
for ``summary.json`` and warns when the input's voxel size lies outside the range the model was checked on.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import MetaTensor
from monai.data.utils import affine_to_spacing
from monai.transforms import MapTransform

logger = logging.getLogger(__name__)


def recorded_spacing(bundle_root: str | os.PathLike) -> dict:
    """The weights' ``training_spacing_mm`` and ``validated_voxel_size_mm`` from ``configs/metadata.json``.

    Raises:
        ValueError: when the metadata do not record them.
    """
    path = Path(bundle_root) / "configs" / "metadata.json"
    meta = json.loads(path.read_text())
    try:
        return {key: [float(v) for v in meta[key]] for key in ("training_spacing_mm", "validated_voxel_size_mm")}
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(
            f"{path}: expected 'training_spacing_mm' (3 numbers) and 'validated_voxel_size_mm' ([min, max]): {exc}"
        ) from exc


def grid(affine: Any, shape: Sequence[int]) -> dict:
    """``{"shape": [X, Y, Z], "spacing_mm": [sx, sy, sz]}`` of a 3D grid (spacing per array axis)."""
    spacing = affine_to_spacing(np.asarray(affine, dtype=np.float64), r=3)
    return {"shape": [int(n) for n in shape], "spacing_mm": [round(float(s), 4) for s in spacing]}


def _mm(spacing: Sequence[float]) -> str:
    return " x ".join(f"{s:g}" for s in spacing) + " mm"


class RecordGridsd(MapTransform):
    """Record a study's input grid and the grid the network runs on; warn when its voxel size is out of range.

    Sets ``input_grid`` (the file's own grid: ``spatial_shape`` and ``original_affine`` from loading) and
    ``network_grid`` (the PET's grid after the resampling, channel first), each :func:`grid`.

    Args:
        key: the PET, after ``Spacingd``.
        validated_voxel_size_mm: ``[min, max]`` voxel size per axis the model was checked on.
    """

    def __init__(self, key: str = "pet", validated_voxel_size_mm: Sequence[float] = (1.0, 3.5)) -> None:
        super().__init__(key)
        self.key = key
        self.low, self.high = (float(v) for v in validated_voxel_size_mm)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        pet = d[self.key]
        if not isinstance(pet, MetaTensor):
            raise TypeError(f"expected the PET as a MetaTensor (its grid), got {type(pet).__name__}")
        d["input_grid"] = grid(pet.meta["original_affine"], pet.meta["spatial_shape"])
        d["network_grid"] = grid(pet.affine, pet.shape[1:])
        study = f"study '{d.get('id')}'"
        spacing = d["input_grid"]["spacing_mm"]
        if not all(self.low <= s <= self.high for s in spacing):
            logger.warning(
                f"{study}: voxel size {_mm(spacing)} lies outside the validated range {self.low:g}-{self.high:g} mm "
                "per axis; the network runs on a resampled copy, check the output"
            )
        if not np.allclose(sorted(spacing), sorted(d["network_grid"]["spacing_mm"]), atol=1e-3):
            logger.info(
                f"{study}: resampled from {_mm(spacing)} ({d['input_grid']['shape']}) to the network's "
                f"{_mm(d['network_grid']['spacing_mm'])} ({d['network_grid']['shape']}); the output goes back to "
                "the input's grid"
            )
        return d
