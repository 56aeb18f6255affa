"""What users get: the shipped weights, inference.json's network and sampler, and their values on the sample study."""

from __future__ import annotations

import hashlib
import logging

import nibabel as nib
import numpy as np
import pytest
import torch
from inference_testing import BUNDLE, CONFIG, TINY_NETWORK
from monai.bundle import ConfigParser

from scripts.enhance import StudyPrepareBatch, file_sha256, require_weights
from scripts.io import load_datalist
from scripts.metrics import masked_psnr
from scripts.normalise import PET_SCALE_KEY

WEIGHTS = BUNDLE / "models" / "model.pt"

#: brain-masked PSNR (dB) of the shipped model on the sample study's central slab against its standard-dose image,
#: with inference.json's defaults (the MRI registered to the PET). Measured 28.248 dB with the weights of 0.8.0
#: (28.290 dB with register_mri false; 0.7.0: 28.19 dB; 0.6.0: 28.13 dB; 0.3.0: 27.66 dB; the fixed 16 mm cut-off of
#: 0.4.0: 27.87 dB; 0.2.0: 26.94; 0.1.0 weights without it: 26.24 dB; the low-dose image itself: 20.28 dB). The floor
#: sits 0.1 dB under the measured value: re-measure and move it when the shipped weights or the pipeline change.
SHIPPED_SLAB_PSNR_FLOOR_DB = 28.15
#: sha256 of the tensors (names and bytes, in order) of the tiny network that the `weights` fixture makes from seed 0
TINY_STATE_SHA256 = "0a0440e2518faaa6aec1b83b7a1b093c0e66cc7df30e1edaa1cd464092d58a45"
#: mean and standard deviation (Bq/ml) of that network's enhanced slab (inference.json's sampler and automatic data
#: consistency, TINY_NETWORK's settings, register_mri false), recorded at the commit that replaced the 0.1.0 weights
#: (whose outputs this pipeline reproduced within 1e-5 of commit 34b967e's): a refactoring must reproduce them
TINY_SLAB_MEAN, TINY_SLAB_STD = 4741.60035068118, 5166.9670212523415
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


def _state_sha256(path) -> str:
    digest = hashlib.sha256()
    for name, tensor in torch.load(path, map_location="cpu", weights_only=True).items():
        digest.update(name.encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def test_outputs_of_the_seeded_tiny_network_are_the_recorded_ones(weights):
    """Same seeded weights (hash-checked), same sampler seed: the pipeline gives the recorded values."""
    assert _state_sha256(weights) == TINY_STATE_SHA256, "torch no longer makes the same state from seed 0"
    enhanced = _slab(weights, register_mri=False, **TINY_NETWORK)["enhanced"].astype(np.float64)
    assert enhanced.mean() == pytest.approx(TINY_SLAB_MEAN, rel=1e-5)
    assert enhanced.std() == pytest.approx(TINY_SLAB_STD, rel=1e-5)
