"""The shared plotting style: QC and evaluation panels a clinician can read (units, positions, sides, masking)."""

from __future__ import annotations

import numpy as np
from inference_testing import blob_volume, grid_affine

from scripts.plotting import evaluation_figure, lr_labels, qc_figure


def _texts(figure) -> list[str]:
    return [t.get_text() for ax in figure.axes for t in ax.texts]


def _image_axes(figure) -> list:
    return [ax for ax in figure.axes if ax.get_images() and ax.get_title()]


def _colour_bar_labels(figure) -> list[str]:
    return [ax.get_ylabel() for ax in figure.axes if not ax.get_title() and ax.get_ylabel()]


def test_qc_panel_columns_units_positions_and_sides():
    pet = blob_volume((20, 24, 10))
    affine = grid_affine()
    figure = qc_figure(pet, pet, mri_t1=pet, title="s1", affine=affine, units="BQML (assumed for NIfTI)")
    titles = [ax.get_title() for ax in _image_axes(figure)]
    assert len(titles) == 6
    assert titles[0].startswith("MRI T1") and "low-dose PET (input)" in titles[1] and "enhanced PET" in titles[2]
    assert all("mm" in t for t in titles) and "axial, z = " in titles[1] and "coronal, y = " in titles[4]
    assert _colour_bar_labels(figure) == ["Bq/ml"] * 4  # both PET columns, both rows; the MRI has none
    assert _texts(figure).count("L") == 6 and _texts(figure).count("R") == 6
    assert _image_axes(figure)[1].get_images()[0].get_cmap().name == "hot"


def test_sides_follow_the_affine_and_evaluation_panel_shares_the_style():
    flipped = np.diag([-2.0, 2.0, 2.0, 1.0])
    assert lr_labels(np.eye(4)) == ("L", "R") and lr_labels(flipped) == ("R", "L")
    assert lr_labels(np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])) is None
    plane = blob_volume((20, 24, 10))[..., 5]
    names = ["MRI", "low dose", "enhanced", "standard dose", "|error|"]
    figure = evaluation_figure({n: plane for n in names}, "m2diff: sub-1", affine=np.eye(4), position="z = 5.0 mm")
    assert len(_image_axes(figure)) == 5 and _colour_bar_labels(figure).count("Bq/ml") == 4
    assert _image_axes(figure)[4].get_images()[0].get_cmap().name == "viridis"
    assert "z = 5.0 mm" in figure._suptitle.get_text() and _texts(figure).count("L") == 5


def test_qc_panel_shows_activity_units_not_normalised_values(tmp_path, monkeypatch):
    """The panel is drawn before Invertd: the PET images must be multiplied back by the study's scale."""
    import matplotlib.pyplot as plt
    import torch
    from monai.data import MetaTensor

    import scripts.qc
    from scripts.normalise import NormaliseStudyd

    drawn = {}

    def capture(pet, pred, mri, **kwargs):
        drawn.update(pet=pet, pred=pred, mri=mri)
        return plt.figure()

    monkeypatch.setattr(scripts.qc, "qc_figure", capture)
    data = NormaliseStudyd(["pet"])(
        {"pet": MetaTensor(torch.full((1, 6, 6, 4), 4000.0)), "mri": torch.ones(1, 6, 6, 4)}
    )
    scripts.qc.SaveQCPaneld(str(tmp_path))({"id": "s", **data, "pred": data["pet"].as_tensor() * 2})
    assert drawn["pet"].max() == 4000.0 and drawn["pred"].max() == 8000.0 and drawn["mri"].max() == 1.0
