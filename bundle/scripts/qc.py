"""Quality-control PNG of one study: MRI, low-dose PET and enhanced PET, axial and coronal.

The drawing is :mod:`scripts.plotting`'s (shared with the evaluation panels).
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import Transform

from scripts.enhance import bundle_version
from scripts.io.dicom import RESEARCH_USE
from scripts.io.options import flag
from scripts.io.studies import study_outputs
from scripts.normalise import restore_units
from scripts.plotting import qc_figure, save_figure

logger = logging.getLogger(__name__)


def _volume(image: torch.Tensor | np.ndarray | None) -> np.ndarray | None:
    if image is None:
        return None
    array = np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image, dtype=np.float32)
    return array[0] if array.ndim == 4 else array


class SaveQCPaneld(Transform):
    """Write ``<output_dir>/<id>/<id>_qc.png`` from ``mri``, ``pet`` and ``pred`` (RAS, same grid).

    Run before the outputs are reoriented back (``Invertd``). Adds the path to ``data["outputs"]["qc_png"]``. The
    title says "MRI-free" when the study was enhanced without an MRI; the footer gives the model version, the
    research-use text and the display convention.

    Args:
        output_dir: results folder.
        enabled: ``False`` makes this a no-op (the config's ``save_qc_png`` knob).
        model_version: written on the panel (``None``: the version in this bundle's ``configs/metadata.json``).
    """

    def __init__(self, output_dir: str, enabled: bool = True, model_version: str | None = None) -> None:
        self.output_dir = output_dir
        self.enabled = flag(enabled, "save_qc_png")
        self.model_version = model_version or bundle_version(Path(__file__).resolve().parents[1])

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        if not self.enabled:
            return d
        path = study_outputs(self.output_dir, d["id"])["qc_png"]
        title = f"{d['id']}" + (f"  (dose reduction factor {d['drf']})" if d.get("drf") else "")
        mri_free = d.get("mri") is None or "MRI-free" in str(d.get("method", ""))
        title += "  MRI-free (no MRI used)" if mri_free else ""
        footer = [f"M2Diff v{self.model_version}", RESEARCH_USE]
        affine = np.asarray(getattr(d["pet"], "affine", np.eye(4)), dtype=np.float64)
        units = (d.get("units") or {}).get("input_units")  # the outputs are converted after this panel
        try:
            pets = [_volume(restore_units(d[k], d["pet"])) for k in ("pet", "pred")]  # still normalised here
            figure = qc_figure(*pets, _volume(d.get("mri")), title=title, affine=affine, units=units, footer=footer)
            save_figure(figure, path)
        except Exception as exc:  # the QC picture is a convenience: its failure does not fail the study
            note = f"QC panel not written: {type(exc).__name__}: {exc}"
            logger.warning(f"study '{d['id']}': {note}")
            d["notes"] = [*(d.get("notes") or []), note]
            return d
        d["outputs"] = {**(d.get("outputs") or {}), "qc_png": path}
        return d
