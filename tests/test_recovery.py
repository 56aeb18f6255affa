"""Contrast recovery, background variability and heterogeneity scores (scripts.recovery) on synthetic volumes."""

import numpy as np
import pytest
from scipy import ndimage

from scripts.recovery import (
    background_rois,
    background_variability,
    contrast_recovery,
    heterogeneity_retention,
    lesion_rois,
    pooled_recovery,
)

SPACING = (2.0, 2.0, 2.0)


def _ball(shape, centre, radius_voxels) -> np.ndarray:
    grid = np.indices(shape).transpose(1, 2, 3, 0)
    return np.linalg.norm(grid - np.asarray(centre), axis=-1) <= radius_voxels


@pytest.fixture(scope="module")
def phantom():
    """A 'brain' ball with smooth anatomy, a heterogeneity field, a hot and a cold sphere."""
    shape = (48, 48, 40)
    brain = _ball(shape, (24, 24, 20), 19)
    rng = np.random.default_rng(0)
    anatomy = np.where(brain, 1.0 + 0.5 * (np.indices(shape)[0] > 24), 0.0)
    field = ndimage.gaussian_filter(rng.standard_normal(shape), 3)
    field /= field[brain].std()
    lesion_free = anatomy * (1 + 0.1 * field)
    lesions = np.zeros(shape, dtype=np.uint8)
    lesions[_ball(shape, (16, 24, 20), 3)] = 1
    lesions[_ball(shape, (32, 24, 20), 3)] = 2
    reference = lesion_free * np.where(lesions == 1, 2.0, 1.0) * np.where(lesions == 2, 0.5, 1.0)
    return {
        "brain": brain,
        "anatomy": anatomy,
        "field": field,
        "free": lesion_free,
        "ref": reference,
        "lesions": lesions,
    }


def test_recovery_is_one_for_the_reference_zero_for_the_lesion_free_image_and_linear_between(phantom):
    rois = lesion_rois(phantom["lesions"], phantom["brain"], SPACING)
    assert sorted(rois) == [1, 2]
    for roi, shell in rois.values():
        assert not (shell & (phantom["lesions"] > 0)).any() and shell.any()
        ref, free = phantom["ref"], phantom["free"]
        assert contrast_recovery(ref, ref, free, roi, shell)["recovery"] == pytest.approx(1.0)
        assert contrast_recovery(free, ref, free, roi, shell)["recovery"] == pytest.approx(0.0, abs=1e-9)
        half = free + 0.5 * (ref - free)
        assert contrast_recovery(half, ref, free, roi, shell)["recovery"] == pytest.approx(0.5)
        painted = free - 0.3 * (ref - free)
        assert contrast_recovery(painted, ref, free, roi, shell)["recovery"] == pytest.approx(-0.3)


def test_pooled_recovery_weights_lesions_by_their_reference_contrast():
    strong = {"contrast": 1.0, "contrast_reference": 1.0, "contrast_lesion_free": 0.0}
    faint = {"contrast": 0.1, "contrast_reference": 0.01, "contrast_lesion_free": 0.0}  # a ratio of 10
    assert pooled_recovery([strong, faint]) == pytest.approx(1.1 / 1.01)
    assert np.isnan(pooled_recovery([]))


def test_background_variability_is_zero_for_the_reference_and_grows_with_noise(phantom):
    rois = background_rois(phantom["lesions"], phantom["brain"], SPACING)
    assert len(rois) >= 5
    near = ndimage.distance_transform_edt(phantom["lesions"] == 0, sampling=SPACING) <= 8.0
    assert not any((roi & near).any() for roi in rois) and all((roi <= phantom["brain"]).all() for roi in rois)
    ref = phantom["ref"]
    assert background_variability(ref, ref, rois) == pytest.approx(0.0, abs=1e-9)
    rng = np.random.default_rng(1)
    noisy = [ref * (1 + ndimage.gaussian_filter(rng.standard_normal(ref.shape), 1) * s) for s in (0.1, 0.4)]
    low, high = (background_variability(x, ref, rois) for x in noisy)
    assert 0 < low < high


def test_heterogeneity_retention_measures_the_kept_fraction_against_the_anatomy(phantom):
    args = (phantom["anatomy"], phantom["brain"], phantom["lesions"], SPACING)
    ref = phantom["free"]
    full = heterogeneity_retention(ref, ref, *args)
    assert full["amplitude"] == pytest.approx(1.0) and full["correlation"] == pytest.approx(1.0)
    half = heterogeneity_retention(phantom["anatomy"] * (1 + 0.05 * phantom["field"]), ref, *args)
    assert half["amplitude"] == pytest.approx(0.5, abs=0.02) and half["correlation"] > 0.99
    drawn = heterogeneity_retention(phantom["anatomy"], ref, *args)  # drawn from the anatomy alone
    assert abs(drawn["amplitude"]) < 1e-6
