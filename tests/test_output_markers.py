"""Outputs say what they are: the NIfTI header and the QC panel carry the model version, units and research use; the
panel says how it displays the patient's sides and when no MRI was used; the log names every file written and the
epoch a resumed training run starts after."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
from inference_testing import BUNDLE, blob_volume, grid_affine

import scripts.qc
from scripts.enhance import StudySummaryHandler, bundle_version
from scripts.io.dicom import RESEARCH_USE
from scripts.io.writers import nifti_description, write_nifti
from scripts.normalise import NormaliseStudyd
from scripts.plotting import qc_figure


def test_nifti_header_says_version_units_and_research_use(tmp_path):
    for units, label in (("BQML", "Bq/ml"), ("SUVbw", "SUV")):
        description = nifti_description("0.8.3", units)
        assert len(description.encode()) <= 80 and "M2Diff v0.8.3" in description and label in description
        assert RESEARCH_USE in description
    source = nib.Nifti1Image(blob_volume(), grid_affine())
    source.header["descrip"] = b"scanner reconstruction OSEM 3i21s"
    nib.save(source, str(tmp_path / "input.nii.gz"))
    path = write_nifti(blob_volume(), grid_affine(), tmp_path / "out.nii.gz", tmp_path / "input.nii.gz", description)
    assert nib.load(str(path)).header["descrip"].item().decode() == description  # not the input's
    with pytest.raises(ValueError, match="80 bytes"):
        write_nifti(blob_volume(), grid_affine(), tmp_path / "long.nii.gz", description="x" * 81)


def _footer(figure) -> str:
    return " ".join(text.get_text() for text in figure.texts)


def test_qc_panel_footer_names_the_display_convention():
    pet = blob_volume((20, 24, 10))
    neurological = qc_figure(pet, pet, affine=grid_affine(), footer=["M2Diff v9", RESEARCH_USE])
    assert "M2Diff v9" in _footer(neurological) and RESEARCH_USE in _footer(neurological)
    assert "neurological display (patient left on image left)" in _footer(neurological)
    flipped = np.diag([-2.0, 2.0, 2.5, 1.0])
    assert "radiological display (patient right on image left)" in _footer(qc_figure(pet, pet, affine=flipped))


def test_qc_panel_of_a_study_says_version_research_use_and_mri_free(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt
    import torch
    from monai.data import MetaTensor

    drawn = []
    monkeypatch.setattr(scripts.qc, "qc_figure", lambda *volumes, **kwargs: drawn.append(kwargs) or plt.figure())
    pet = NormaliseStudyd(["pet"], mri_key=None)({"pet": MetaTensor(torch.full((1, 6, 6, 4), 0.5))})["pet"]
    panel = scripts.qc.SaveQCPaneld(str(tmp_path))
    panel({"id": "no_mri", "pet": pet, "pred": pet})
    panel({"id": "with_mri", "pet": pet, "pred": pet, "mri": pet, "method": "1 DDIM step, 1 sample, MRI-guided"})
    without, with_mri = drawn
    assert "MRI-free" in without["title"] and "MRI-free" not in with_mri["title"]
    assert without["footer"] == [f"M2Diff v{bundle_version(BUNDLE)}", RESEARCH_USE]


def test_log_names_every_file_written(tmp_path, caplog):
    summary = StudySummaryHandler(str(tmp_path / "out"))
    outputs = {"enhanced": "out/s1/s1_enhanced.nii.gz", "qc_png": "out/s1/s1_qc.png", "dicom": "out/s1/dicom"}
    record = {"id": "s1", "status": "ok", "seconds": 1.0, "outputs": outputs}
    engine = SimpleNamespace(state=SimpleNamespace(output=record))
    with caplog.at_level(logging.INFO, logger="scripts.enhance"):
        summary.started(engine)
        summary.iteration_completed(engine)
        summary.completed(engine)
    assert all(path in caplog.text for path in outputs.values())
    assert str(tmp_path / "out" / "summary.json") in caplog.text and str(summary.log_file) in caplog.text
    assert summary.failure is None


def test_resumed_training_logs_the_epoch_it_resumes_after(tmp_path, caplog):
    import torch

    from scripts.training import RESUME_KEYS, check_resume_checkpoint

    checkpoint = {key: {} for key in RESUME_KEYS}
    checkpoint["trainer"] = {"iteration": 300, "epoch_length": 100, "max_epochs": 30}
    torch.save(checkpoint, tmp_path / "checkpoint.pt")
    with caplog.at_level(logging.INFO, logger="scripts.training"):
        check_resume_checkpoint(str(tmp_path / "checkpoint.pt"))
    assert "training resumes after epoch 3 (iteration 300)" in caplog.text
