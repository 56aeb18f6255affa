"""What users get: the shipped weights, inference.json's network and sampler, and their values on the sample study."""

from __future__ import annotations

import logging

import nibabel as nib
import numpy as np
import pytest
import torch
from inference_testing import BUNDLE, CONFIG
from monai.bundle import ConfigParser

from scripts.enhance import StudyPrepareBatch, file_sha256, require_weights
from scripts.io import load_datalist
from scripts.metrics import masked_psnr
from scripts.normalise import PET_SCALE_KEY

WEIGHTS = BUNDLE / "models" / "model.pt"
#: the weights shipped with bundle 0.1.0 (commit 34b967e): the refactored pipeline must reproduce their outputs
WEIGHTS_0_1_0 = BUNDLE.parent / "tests" / "data" / "m2diff_0.1.0_state_dict.pt"

#: brain-masked PSNR (dB) of the shipped model on the sample study's central slab against its standard-dose image,
#: with inference.json's defaults. Measured 28.30 dB with the weights of 0.8.0 and the automatic data-consistency
#: cut-off (0.7.0: 28.19 dB; 0.6.0: 28.13 dB; 0.3.0: 27.66 dB; the fixed 16 mm cut-off of 0.4.0: 27.87 dB; 0.2.0:
#: 26.94; 0.1.0 weights without it: 26.24 dB; the low-dose image itself: 20.28 dB). Update this floor (keep it ~0.7 dB
#: under the measured value) when the shipped weights are retrained.
SHIPPED_SLAB_PSNR_FLOOR_DB = 27.6
#: mean enhanced activity (Bq/ml) of that slab, measured with the sampler of commit 34b967e (same weights, seed 0)
#: with its output clipped at zero activity (the one intended change since; unclipped it was 5254.4881774545875):
#: the refactored pipeline must reproduce it (target: within 1e-5 relative)
SHIPPED_SLAB_MEAN_AT_34B967E = 5282.613755445572
SLAB_SLICES = 8


def _parser() -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(CONFIG))
    parser["bundle_root"] = str(BUNDLE)
    parser["progress"] = False
    return parser


def test_shipped_weights_match_their_recorded_sha256():
    recorded = (BUNDLE / "models" / "model.pt.sha256").read_text().split()[0]
    assert file_sha256(WEIGHTS) == recorded


def test_inference_logs_the_hash_of_the_weights_it_loads(caplog):
    with caplog.at_level(logging.INFO, logger="scripts.enhance"):
        require_weights(WEIGHTS)
    assert file_sha256(WEIGHTS) in caplog.text and "differs" not in caplog.text


def test_shipped_weights_load_strictly_into_the_inference_network():
    network = _parser().get_parsed_content("network_def")
    network.load_state_dict(torch.load(WEIGHTS, map_location="cpu", weights_only=True), strict=True)


def _slab(weights, **overrides) -> dict:
    """inference.json's preprocessing, network and sampler on a central slab of the sample study."""
    parser = _parser()
    for key, value in overrides.items():
        parser[key] = value
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    record = load_datalist(BUNDLE / "sample" / "studies.json")[0]
    study = parser.get_parsed_content("preprocessing")(record)
    inputs, _, args, kwargs = StudyPrepareBatch()(study)
    first = inputs.shape[-1] // 2 - SLAB_SLICES // 2
    slab = slice(first, first + SLAB_SLICES)
    with torch.no_grad():
        pred = parser.get_parsed_content("inferer")(inputs[..., slab], network.eval(), *args, **kwargs)

    def load(name: str) -> np.ndarray:
        return np.asarray(nib.load(str(BUNDLE / "sample" / name)).dataobj, dtype=np.float32)[..., slab]

    return {
        "enhanced": pred[0, 0].numpy() * study[PET_SCALE_KEY],
        "low_dose": load("sample_pet_drf20.nii.gz"),
        "standard_dose": load("sample_pet_sd.nii.gz"),
        "brain": load("sample_labels.nii.gz") > 0,
    }


@pytest.fixture(scope="module")
def shipped_slab() -> dict:
    return _slab(WEIGHTS)


def test_shipped_model_enhances_the_sample_study(shipped_slab):
    s = shipped_slab
    psnr = masked_psnr(s["enhanced"], s["standard_dose"], s["brain"])
    assert psnr > SHIPPED_SLAB_PSNR_FLOOR_DB
    assert psnr > masked_psnr(s["low_dose"], s["standard_dose"], s["brain"]) + 3.0


def test_outputs_of_the_0_1_0_weights_are_those_of_34b967e():
    """Same weights (a 2D network), same seed, data consistency off: the refactored sampler gives 34b967e's values."""
    slab = _slab(WEIGHTS_0_1_0, consistency_fwhm_mm=None, **{"network_def#context_slices": 0})
    mean = float(slab["enhanced"].astype(np.float64).mean())
    assert mean == pytest.approx(SHIPPED_SLAB_MEAN_AT_34B967E, rel=1e-5)
