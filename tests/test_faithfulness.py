"""Faithfulness metrics on images with known answers."""

import numpy as np
import pytest
from scipy import ndimage

from scripts.faithfulness import lesion_contrast, pattern_retention, uncertainty_calibration


def _blob(shape=(40, 40, 30), centre=(20, 20, 15), radius=4):
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2


def test_lesion_contrast_of_a_known_hot_and_cold_lesion():
    lesion = _blob()
    for factor in (2.0, 0.6):
        pet = np.ones(lesion.shape)
        pet[lesion] = factor
        assert lesion_contrast(pet, lesion) == pytest.approx(factor)
    with pytest.raises(ValueError, match="empty"):
        lesion_contrast(np.ones((4, 4, 4)), np.zeros((4, 4, 4)))


def test_pattern_retention_sees_a_flattened_pattern():
    rng = np.random.default_rng(0)
    labels = np.zeros((40, 40, 30), int)
    labels[5:20, 5:35, 5:25], labels[20:35, 5:35, 5:25] = 1, 2
    field = ndimage.gaussian_filter(rng.normal(size=labels.shape), 3)
    field *= 0.1 / field[labels > 0].std()
    reference = np.where(labels == 1, 1.0, 0.5) * (1 + field) * (labels > 0)
    halved = np.where(labels == 1, 1.0, 0.5) * (1 + 0.5 * field) * (labels > 0)
    kept = pattern_retention(reference, reference, labels)
    assert kept["amplitude"] == pytest.approx(1.0) and kept["correlation"] == pytest.approx(1.0)
    flat = pattern_retention(halved, reference, labels)
    assert 0.4 < flat["amplitude"] < 0.6 and flat["correlation"] > 0.95
    unrelated = pattern_retention(np.where(labels == 1, 1.0, 0.5) * (1 - field), reference, labels)
    assert unrelated["correlation"] < -0.9


def test_uncertainty_calibration_of_honest_and_useless_maps():
    rng = np.random.default_rng(1)
    sd = rng.uniform(0.1, 2.0, size=(30, 30, 30))
    reference = np.zeros_like(sd)
    pred = rng.normal(0, sd)  # errors drawn with exactly that SD
    mask = np.ones_like(sd, bool)
    honest = uncertainty_calibration(pred, sd, reference, mask)
    assert honest["spearman"] > 0.4 and 0.93 < honest["coverage_2sd"] < 0.97
    useless = uncertainty_calibration(pred, rng.permutation(sd.ravel()).reshape(sd.shape), reference, mask)
    assert abs(useless["spearman"]) < 0.05
