"""Low-frequency data consistency: regional means come from the measurement, detail from the network; the cut-off
follows the study's measured noise."""

import numpy as np
import pytest
import torch
from monai.transforms import GaussianSmooth

from scripts.consistency import (
    ADAPTIVE_CUTOFF_BOUNDS_MM,
    adaptive_cutoff_mm,
    consistent_with_measurement,
    low_frequency_consistency,
    measured_noise,
    physical_activity,
    residual_noise,
    restore_significant_residual,
)
from scripts.constants import FWHM_PER_SIGMA


def _phantom(shape=(48, 48, 32), seed=0):
    """A smooth 'brain' with a hot block, its noisy low-dose image, and a biased, over-smoothed 'enhanced' image."""
    rng = np.random.default_rng(seed)
    truth = np.zeros(shape, np.float32)
    truth[8:40, 8:40, 6:26] = 1.0
    truth[20:28, 20:28, 12:20] = 2.0
    low_dose = truth + rng.normal(0, 0.3, shape).astype(np.float32)
    enhanced = 0.85 * truth  # shrunk toward a lower 'cohort average'
    return [torch.from_numpy(a)[None] for a in (truth, low_dose, enhanced)]


def test_regional_means_follow_the_low_dose_image():
    truth, low_dose, enhanced = _phantom()
    corrected = low_frequency_consistency(enhanced, low_dose, [6.0, 6.0, 6.0])
    region = (slice(None), slice(10, 38), slice(10, 38), slice(8, 24))
    bias_before = float(enhanced[region].mean() / truth[region].mean() - 1)
    bias_after = float(corrected[region].mean() / truth[region].mean() - 1)
    assert bias_before < -0.14
    assert abs(bias_after) < 0.02
    assert abs(float(corrected.sum() / low_dose.sum()) - 1) < 1e-3  # total activity is the measured one


def test_detail_above_the_cut_off_stays_the_networks():
    truth, low_dose, _ = _phantom()
    corrected = low_frequency_consistency(truth.clone(), low_dose, [6.0, 6.0, 6.0])
    noise_before = float((low_dose - truth).std())
    noise_after = float((corrected - truth).std())
    assert noise_after < 0.25 * noise_before  # the low-dose noise is not brought back


def test_no_cut_off_is_the_identity_and_scaling_commutes():
    _, low_dose, enhanced = _phantom()
    assert torch.equal(low_frequency_consistency(enhanced, low_dose, None), enhanced)
    a = low_frequency_consistency(enhanced, low_dose, [4.0, 4.0, 4.0])
    b = low_frequency_consistency(3.0 * enhanced, 3.0 * low_dose, [4.0, 4.0, 4.0])
    assert torch.allclose(3.0 * a, b, rtol=1e-5, atol=1e-5)


def test_activity_is_never_negative():
    image = torch.tensor([[-2.0, 0.0, 1.5]])
    assert physical_activity(image).min() >= 0
    assert physical_activity(image)[0, 2] == 1.5


def _brain(noise, shape=(40, 40, 32), seed=0, lesion=False):
    """A 'brain' with uptake 1 in a block and 0.2 around it, and its low-dose image with relative noise ``noise``."""
    rng = np.random.default_rng(seed)
    truth = np.full(shape, 0.2, np.float32)
    truth[8:32, 8:32, 6:26] = 1.0
    low_dose = truth + rng.normal(0, noise, shape).astype(np.float32) * np.sqrt(truth)
    if lesion:  # a hot focus the 'network' missed: in the low-dose image only
        low_dose[18:22, 18:22, 14:18] += 1.0
    return torch.from_numpy(truth)[None], torch.from_numpy(low_dose)[None]


@pytest.mark.parametrize("noise", [0.05, 0.2, 0.5])
def test_measured_noise_is_the_low_dose_noise_relative_to_the_uptake(noise):
    enhanced, low_dose = _brain(noise)
    assert measured_noise(enhanced, low_dose, [2.0, 2.0, 2.0]) == pytest.approx(noise, rel=0.1)
    # a focus the network missed is not counted as noise
    enhanced, low_dose = _brain(noise, lesion=True)
    assert measured_noise(enhanced, low_dose, [2.0, 2.0, 2.0]) == pytest.approx(noise, rel=0.1)


def test_measured_noise_of_an_empty_image_is_zero():
    empty = torch.zeros(1, 8, 8, 8)
    assert measured_noise(empty, empty + 1, [2.0, 2.0, 2.0]) == 0.0


def test_adaptive_cutoff_smooths_white_noise_down_to_the_tolerance():
    """The white-noise model: at the chosen cut-off, smoothed noise of relative SD ``noise`` has SD ``noise_pct`` %."""
    noise, noise_pct, voxel = 0.3, 0.6, [2.0, 2.0, 2.0]
    fwhm_mm = adaptive_cutoff_mm(noise, voxel, noise_pct)
    low, high = ADAPTIVE_CUTOFF_BOUNDS_MM
    assert low < fwhm_mm < high
    field = torch.from_numpy(np.random.default_rng(1).normal(0, noise, (1, 96, 96, 96)).astype(np.float32))
    smoothed = GaussianSmooth(sigma=fwhm_mm / voxel[0] / FWHM_PER_SIGMA)(field)[0, 20:-20, 20:-20, 20:-20]
    assert 100 * float(smoothed.std()) == pytest.approx(noise_pct, rel=0.15)


def test_adaptive_cutoff_widens_with_noise_and_voxel_size_within_bounds():
    f = adaptive_cutoff_mm(0.2, [2.0, 2.0, 2.0], 0.6)
    assert adaptive_cutoff_mm(0.4, [2.0, 2.0, 2.0], 0.6) == pytest.approx(f * 2 ** (2 / 3))
    assert adaptive_cutoff_mm(0.2, [4.0, 4.0, 4.0], 0.6) == pytest.approx(2 * f)
    assert adaptive_cutoff_mm(0.0, [2.0, 2.0, 2.0], 0.6) == ADAPTIVE_CUTOFF_BOUNDS_MM[0]
    assert adaptive_cutoff_mm(50.0, [2.0, 2.0, 2.0], 0.6) == ADAPTIVE_CUTOFF_BOUNDS_MM[1]
    with pytest.raises(ValueError, match="noise_pct"):
        adaptive_cutoff_mm(0.2, [2.0, 2.0, 2.0], 0)


def _lesion_study(contrast: float, seed: int = 0, shape=(56, 56, 40)):
    """A uniform 'brain' ball, a 14 mm sphere of ``contrast`` in its low-dose image (voxel noise 15 %, 2 mm voxels,
    correlated like a reconstruction's), and an 'enhanced' image that erased the sphere."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).transpose(1, 2, 3, 0) - np.array(shape) / 2
    brain = (np.linalg.norm(grid, axis=-1) < 24).astype(np.float32)
    sphere = np.linalg.norm(grid - np.array([10, 0, 0]), axis=-1) <= 3.5
    noise = GaussianSmooth(sigma=0.8)(torch.from_numpy(rng.standard_normal(shape).astype(np.float32))[None])[0]
    noise = noise.numpy() / float(noise.std())
    low_dose = brain * (1 + (contrast - 1) * sphere) + 0.15 * brain * noise
    return [torch.from_numpy(a.astype(np.float32))[None] for a in (brain, low_dose)] + [sphere]


@pytest.mark.parametrize("contrast", [2.0, 0.4])
def test_a_lesion_the_network_erased_comes_back_and_the_departure_map_marks_it(contrast):
    enhanced, low_dose, sphere = _lesion_study(contrast)
    restored, departure = restore_significant_residual(enhanced, low_dose, [2.0] * 3, threshold=3.5)
    inside = enhanced[0].numpy() > 0.5
    lesion_change = float(restored[0].numpy()[sphere].mean() - 1)
    assert 0.4 < lesion_change / (contrast - 1) < 1.1  # erased before: 0; given back at 5.7 mm, so a 14 mm sphere
    # keeps about half to three quarters of its contrast
    assert departure[0].numpy()[sphere].max() > 6
    far = inside & (np.linalg.norm(np.indices(sphere.shape).transpose(1, 2, 3, 0) - [38, 28, 20], axis=-1) > 10)
    assert np.mean(departure[0].numpy()[far] > 3.5) < 0.01  # noise is rarely flagged
    assert float(np.abs(restored[0].numpy() - enhanced[0].numpy())[far].mean()) < 0.02  # and rarely given back


def test_noise_alone_gives_back_almost_nothing_and_the_threshold_must_be_positive():
    enhanced, low_dose, _ = _lesion_study(1.0, seed=1)
    restored, departure = restore_significant_residual(enhanced, low_dose, [2.0] * 3, threshold=3.5)
    assert float((restored - enhanced).abs().mean()) < 0.01 * float(enhanced.mean())
    assert 0.5 < float(departure[0][enhanced[0] > 0.5].median()) < 2.0  # |z| of noise: about 0.67 SD at the median
    with pytest.raises(ValueError, match="> 0 noise SDs"):
        restore_significant_residual(enhanced, low_dose, [2.0] * 3, threshold=0)


def test_residual_noise_follows_the_local_activity():
    rng = np.random.default_rng(2)
    activity = torch.from_numpy(np.repeat(np.linspace(1, 4, 40), 40 * 20).reshape(40, 40, 20).astype(np.float32))
    band = activity * torch.from_numpy(rng.standard_normal((40, 40, 20)).astype(np.float32))  # SD = activity
    sd = residual_noise(band[None], activity[None])[0]
    assert float(sd[5].mean()) == pytest.approx(float(activity[5].mean()), rel=0.15)
    assert float(sd[35].mean()) == pytest.approx(float(activity[35].mean()), rel=0.15)


def test_an_implausible_noise_estimate_is_warned_about(caplog):
    truth, low_dose, _ = _phantom()
    consistent_with_measurement(truth, low_dose, [2.0] * 3, "auto", 0.6)
    assert "implausible" not in caplog.text
    consistent_with_measurement(0.05 * truth, low_dose, [2.0] * 3, "auto", 0.6)  # an output far from the input
    assert "is implausible for a PET study" in caplog.text


def test_a_cut_off_in_mm_acts_in_mm_on_anisotropic_voxels():
    """A point's low-pass response has the cut-off's FWHM in mm along every axis, whatever each axis' voxel size."""
    spacing, cutoff_mm = (2.0, 3.0, 4.0), 12.0
    shape = (41, 41, 41)
    low_dose = torch.zeros((1, *shape))
    low_dose[0, 20, 20, 20] = 1.0
    response, used = consistent_with_measurement(torch.zeros_like(low_dose), low_dose, spacing, cutoff_mm, 0.6)
    assert used == cutoff_mm
    for axis, size in enumerate(spacing):
        index = [20, 20, 20]
        index[axis] = slice(None)
        profile = response[0][tuple(index)].numpy()
        above_half = np.flatnonzero(profile >= profile.max() / 2)
        width_mm = (above_half[-1] - above_half[0] + 1) * size  # half-maximum width, to a voxel
        assert abs(width_mm - cutoff_mm) <= size, (axis, width_mm)
