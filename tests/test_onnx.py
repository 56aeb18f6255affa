"""ONNX export and ONNX Runtime inference: same outputs as PyTorch within 1e-4 relative, through the same sampler."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from inference_testing import TINY_NETWORK, nifti_study, save_tiny_weights, write_datalist
from network_testing import tiny_network
from workflow_testing import run_workflow

from scripts.onnx_network import OnnxNetwork, export_onnx, mri_free_path
from scripts.sampler import DDIMVolumeSampler


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).abs().max() / expected.abs().max())


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    network = tiny_network(std=0.1)
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_onnx(network, path, dynamo=False)
    return network, OnnxNetwork(path, num_threads=1)


def test_both_graphs_match_pytorch_for_any_batch_and_slice_size(exported):
    network, onnx_network = exported
    assert onnx_network.supports_mri_free and onnx_network.downsample_factor == network.downsample_factor
    for batch, height, width in ((1, 8, 8), (3, 16, 24), (5, 32, 16)):
        x, t = torch.randn(batch, 3, height, width), torch.randint(0, 1000, (batch,))
        with torch.no_grad():
            assert relative_error(onnx_network(x, t), network(x, t)) < 1e-4
            assert relative_error(onnx_network(x, t, mri_free=True), network(x, t, mri_free=True)) < 1e-4
    assert not torch.allclose(onnx_network(x, t), onnx_network(x, t, mri_free=True))  # two different graphs


def test_sampler_runs_the_onnx_network_unchanged(exported):
    network, onnx_network = exported
    pet, mri = torch.rand(1, 1, 20, 12, 6) + 0.5, torch.rand(1, 1, 20, 12, 6)  # padded to the down-sampling factor
    sampler = DDIMVolumeSampler(num_inference_steps=3, slice_batch_size=4, seed=1, progress=False)
    for inputs in (torch.cat([pet, mri], dim=1), pet):  # MRI-guided, then MRI-free
        expected = sampler(inputs, network)[:, :1]
        actual = sampler(inputs, onnx_network)[:, :1]
        assert relative_error(actual, expected) < 1e-4


def bundle_workflow(configs: list[str], **overrides):
    return run_workflow(["inference", *configs], "inference", **{**TINY_NETWORK, **overrides})


def test_configs_export_then_enhance_like_pytorch(tmp_path):
    weights = save_tiny_weights(tmp_path / "model.pt")
    onnx_path = tmp_path / "model.onnx"
    bundle_workflow(
        ["export_onnx"], run_id="export_onnx", ckpt_path=str(weights), onnx_path=str(onnx_path), onnx_dynamo=False
    )
    assert onnx_path.is_file() and (tmp_path / "model_mri_free.onnx").is_file()
    assert mri_free_path(onnx_path) == str(tmp_path / "model_mri_free.onnx")
    records = [nifti_study(tmp_path / "data", "guided"), nifti_study(tmp_path / "data", "free", with_mri=False)]
    datalist = write_datalist(records, tmp_path / "studies.json")
    bundle_workflow([], datalist=str(datalist), output_dir=str(tmp_path / "torch"), ckpt_path=str(weights))
    bundle_workflow(
        ["inference_onnx"], datalist=str(datalist), output_dir=str(tmp_path / "onnx"), onnx_path=str(onnx_path)
    )
    for study in ("guided", "free"):
        expected = nib.load(tmp_path / "torch" / study / f"{study}_enhanced.nii.gz")
        actual = nib.load(tmp_path / "onnx" / study / f"{study}_enhanced.nii.gz")
        np.testing.assert_array_equal(actual.affine, expected.affine)
        assert relative_error(torch.as_tensor(actual.get_fdata()), torch.as_tensor(expected.get_fdata())) < 1e-4
