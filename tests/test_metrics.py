"""Metric functions on inputs with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tiny_cohort import AFFINE, SHAPE, _phantom

from scripts import metrics, regions


@pytest.fixture
def volume() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    brain, labels, truth, _ = _phantom(np.random.default_rng(0))
    return truth, brain, labels


def test_identical_images(volume):
    truth, brain, _ = volume
    assert metrics.masked_ssim(truth, truth, brain) == pytest.approx(1.0, abs=1e-6)
    assert metrics.masked_nmse(truth, truth, brain) == 0.0
    assert metrics.masked_psnr(truth, truth, brain) == math.inf
    assert metrics.mean_bias(truth, truth, brain) == 0.0
    slices = metrics.per_slice_protocol(truth, truth)
    assert slices["slice_ssim"] == pytest.approx(1.0, abs=1e-5)


def test_known_noise_psnr_and_nmse(volume):
    truth, brain, _ = volume
    sigma = 100.0
    noise = np.random.default_rng(1).normal(0, sigma, truth.shape)
    noisy = truth + noise
    peak = truth[brain].max()
    measured_mse = (noise[brain] ** 2).mean()
    assert metrics.masked_psnr(noisy, truth, brain) == pytest.approx(10 * np.log10(peak**2 / measured_mse), rel=1e-9)
    assert metrics.masked_psnr(noisy, truth, brain) == pytest.approx(20 * np.log10(peak / sigma), abs=0.1)
    assert metrics.masked_nmse(noisy, truth, brain) == pytest.approx(measured_mse / (truth[brain] ** 2).mean())
    assert metrics.masked_psnr(noisy, truth, brain, data_range=1000.0) == pytest.approx(
        10 * np.log10(1000.0**2 / measured_mse)
    )
    # voxels outside the mask do not count
    outside = noisy.copy()
    outside[~brain] += 1e6
    assert metrics.masked_psnr(outside, truth, brain) == pytest.approx(metrics.masked_psnr(noisy, truth, brain))
    assert 0 < metrics.masked_ssim(noisy, truth, brain) < 1


def test_mean_bias_and_suvr_bias(volume):
    truth, brain, labels = volume
    assert metrics.mean_bias(1.1 * truth, truth, brain) == pytest.approx(10.0)
    # scaling the meta-ROI by 1.05 (pons untouched) gives an SUVR bias of +5 %
    scaled = truth.copy()
    scaled[np.isin(labels, [166])] *= 1.05
    assert metrics.suvr_bias(scaled, truth, labels, AFFINE) == pytest.approx(5.0, rel=1e-6)
    # a global scale leaves the SUVR unchanged
    assert metrics.suvr_bias(2 * truth, truth, labels, AFFINE) == pytest.approx(0.0, abs=1e-9)


def test_region_bias_says_which_region_moved(volume):
    truth, _, labels = volume
    scaled = truth.copy()
    scaled[np.isin(labels, [166])] *= 1.05  # a meta-ROI label: the pons is untouched
    moved = metrics.region_bias(scaled, truth, labels, AFFINE)
    assert 0 < moved["meta_roi_bias_pct"] < 5.0 + 1e-9
    assert moved["pons_bias_pct"] == pytest.approx(0.0, abs=1e-9)
    noisy = truth * np.random.default_rng(3).uniform(0.8, 1.2, truth.shape)
    bias = metrics.region_bias(noisy, truth, labels, AFFINE)
    independent = 100 * (regions.suvr(noisy, labels, AFFINE) / regions.suvr(truth, labels, AFFINE) - 1)
    assert bias["suvr_bias_pct"] == pytest.approx(independent) and abs(bias["suvr_bias_pct"]) > 1e-3
    with pytest.raises(ValueError, match="pons"):
        metrics.region_bias(truth, truth, np.where(labels == 35, 0, labels), AFFINE)


def test_per_slice_protocol_ignores_global_scale(volume):
    truth, _, _ = volume
    noisy = truth + np.random.default_rng(2).normal(0, 200, truth.shape)
    first = metrics.per_slice_protocol(noisy, truth)
    second = metrics.per_slice_protocol(3 * noisy, truth)  # min-max per slice: units are lost
    assert first["slice_psnr"] == pytest.approx(second["slice_psnr"], rel=1e-5)
    assert 0 < first["slice_ssim"] < 1


def test_engine_metrics_match_functions(volume):
    truth, brain, _ = volume
    noisy = truth + np.random.default_rng(3).normal(0, 300, truth.shape)
    y_pred = torch.as_tensor(np.stack([noisy, np.zeros_like(noisy)]), dtype=torch.float32)[None]  # (1, 2, H, W, D)
    y = torch.as_tensor(np.stack([truth, brain]), dtype=torch.float32)[None]
    psnr = metrics.MaskedPSNRMetric()
    psnr(y_pred, y)
    assert float(psnr.aggregate()) == pytest.approx(metrics.masked_psnr(noisy, truth, brain), abs=1e-3)
    ssim = metrics.MaskedSSIMMetric()
    ssim([y_pred[0]], [y[0]])  # decollated lists, as engines give them
    assert float(ssim.aggregate()) == pytest.approx(metrics.masked_ssim(noisy, truth, brain), abs=1e-4)


def test_shape_and_mask_errors():
    with pytest.raises(ValueError, match="share one shape"):
        metrics.masked_psnr(np.ones(SHAPE), np.ones((4, 4, 4)), np.ones(SHAPE))
    with pytest.raises(ValueError, match="empty"):
        metrics.masked_nmse(np.ones(SHAPE), np.ones(SHAPE), np.zeros(SHAPE))
