"""Low-frequency data consistency: regional means come from the measurement, detail from the network."""

import numpy as np
import torch

from scripts.consistency import low_frequency_consistency, physical_activity


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
