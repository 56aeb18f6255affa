"""Quality-control PNG of one study: MRI, low-dose PET, enhanced PET and uncertainty, axial and coronal."""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from monai.transforms import Transform  # noqa: E402

from scripts.io.options import flag  # noqa: E402
from scripts.io.studies import study_outputs  # noqa: E402
from scripts.io.writers import atomic_path  # noqa: E402

logger = logging.getLogger(__name__)


def _volume(image: torch.Tensor | np.ndarray | None) -> np.ndarray | None:
    if image is None:
        return None
    array = np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image, dtype=np.float32)
    return array[0] if array.ndim == 4 else array


def save_qc_panel(
    path: str,
    pet_low_dose: np.ndarray,
    enhanced: np.ndarray,
    mri_t1: np.ndarray | None = None,
    uncertainty: np.ndarray | None = None,
    title: str = "",
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> str:
    """Save a 2-row (axial, coronal) panel through the PET's centre of activity.

    Args:
        path: PNG file, written atomically.
        pet_low_dose: ``(X, Y, Z)`` RAS volume (axial = last axis), as are the others.
        enhanced: enhanced PET, same grid and units as ``pet_low_dose``.
        mri_t1: MRI on the PET grid, or ``None`` (panel says "no MRI").
        uncertainty: per-voxel SD, or ``None``.
        title: figure title.
        spacing: voxel size (mm) along the three axes, for the aspect ratio.

    Returns:
        ``path``.
    """
    weights = np.clip(pet_low_dose, 0, None)
    grid = np.indices(weights.shape).reshape(3, -1)
    centre = (grid @ weights.ravel() / max(weights.sum(), 1e-12)).round().astype(int) if weights.sum() > 0 else None
    cx, cy, cz = centre if centre is not None else (np.asarray(weights.shape) // 2)
    vmax = float(np.percentile(pet_low_dose, 99.5)) or 1.0
    panels = [
        ("MRI T1", mri_t1, "gray", None),
        ("low-dose PET", pet_low_dose, "gray_r", vmax),
        ("enhanced PET", enhanced, "gray_r", vmax),
        ("uncertainty (SD)", uncertainty, "magma", None),
    ]
    figure, axes = plt.subplots(2, 4, figsize=(12, 6.4))
    for column, (name, volume, cmap, top) in enumerate(panels):
        cuts = ((lambda v: v[:, :, cz], spacing[1] / spacing[0]), (lambda v: v[:, cy, :], spacing[2] / spacing[0]))
        for row, (cut, aspect) in enumerate(cuts):
            axis = axes[row, column]
            axis.axis("off")
            if volume is None:
                axis.text(0.5, 0.5, f"no {name.split()[0]}", ha="center", va="center", transform=axis.transAxes)
            else:
                plane = cut(volume)
                top_value = top or float(np.percentile(plane, 99.5)) or 1.0
                axis.imshow(np.rot90(plane), cmap=cmap, vmin=0, vmax=top_value, aspect=aspect)
            if row == 0:
                axis.set_title(name)
    figure.suptitle(title)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=80, format="png")
    plt.close(figure)
    return path


class SaveQCPaneld(Transform):
    """Write ``<output_dir>/<id>/<id>_qc.png`` from ``mri``, ``pet``, ``pred`` and ``uncertainty`` (RAS, same grid).

    Run before the outputs are reoriented back (``Invertd``). Adds the path to ``data["outputs"]["qc_png"]``.

    Args:
        output_dir: results folder.
        enabled: ``False`` makes this a no-op (the config's ``save_qc_png`` knob).
    """

    def __init__(self, output_dir: str, enabled: bool = True) -> None:
        self.output_dir = output_dir
        self.enabled = flag(enabled, "save_qc_png")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        if not self.enabled:
            return d
        path = study_outputs(self.output_dir, d["id"])["qc_png"]
        title = f"{d['id']}" + (f"  (dose reduction factor {d['drf']})" if d.get("drf") else "")
        affine = np.asarray(getattr(d["pet"], "affine", np.eye(4)), dtype=np.float64)
        spacing = tuple(np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))
        volumes = [_volume(d.get(k)) for k in ("pet", "pred", "mri", "uncertainty")]
        try:
            save_qc_panel(path, *volumes, title=title, spacing=spacing)
        except Exception as exc:  # the QC picture is a convenience: its failure does not fail the study
            note = f"QC panel not written: {type(exc).__name__}: {exc}"
            logger.warning(f"study '{d['id']}': {note}")
            d["notes"] = [*(d.get("notes") or []), note]
            return d
        d["outputs"] = {**(d.get("outputs") or {}), "qc_png": path}
        return d
