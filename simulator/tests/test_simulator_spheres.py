"""PET-only spheres for contrast recovery and the anatomy-only references (pet_simulator.spheres, simulate_subject)."""

import numpy as np
import pytest
import torch

from pet_simulator.acquisition import ScannerConfig
from pet_simulator.anatomy import load_template_anatomy
from pet_simulator.cohort import simulate_subject
from pet_simulator.spheres import SHELL_MM, draw_spheres, recovery_sphere_specs

torch.set_num_threads(1)
TINY = ScannerConfig(n_angles=12, n_subsets=3, n_iterations=1)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def test_spheres_are_placed_by_tissue_and_outside_each_others_shells(cache):
    anatomy = load_template_anatomy(2, cache)
    specs = recovery_sphere_specs(np.random.default_rng(3))
    assert [s["kind"] for s in specs[:2]] == ["hot", "cold"] and specs[0]["diameter_mm"] == 22.0
    assert all(s["location"] != "white_matter" for s in specs if s["kind"] == "cold")
    factor, mask, spheres = draw_spheres(
        anatomy["gm"], anatomy["wm"], anatomy["labels"], anatomy["affine"], specs, np.random.default_rng(4)
    )
    assert len(spheres) == len(specs) and sorted(np.unique(mask[mask > 0])) == list(range(1, len(specs) + 1))
    centres = np.array([s["centre_mm"] for s in spheres])
    radii = np.array([s["diameter_mm"] / 2 for s in spheres])
    for i in range(len(spheres)):
        for j in range(i):
            assert np.linalg.norm(centres[i] - centres[j]) >= radii[i] + radii[j] + SHELL_MM[1]
    inverse = np.linalg.inv(anatomy["affine"])
    for sphere in spheres:
        ijk = tuple(np.round(inverse @ np.append(sphere["centre_mm"], 1.0))[:3].astype(int))
        if sphere["location"] == "white_matter":
            assert anatomy["wm"][ijk] > 0.9
        else:
            assert anatomy["labels"][ijk] > 0
        inside = factor[mask == sphere["index"]]
        assert (inside > 1).all() if sphere["kind"] == "hot" else (inside < 1).all()
    assert (factor[(anatomy["gm"] + anatomy["wm"]) <= 0.01] == 1).all()  # brain tissue only


def test_spheres_change_the_pet_only_and_references_drop_lesions_then_heterogeneity(cache):
    settings = dict(dose_reduction_factors=[20], scanner_config=TINY, cache_dir=cache, warp=False, counts=1e8)
    specs = recovery_sphere_specs(np.random.default_rng(5), diameters_mm=(13.0, 17.0))
    plain, _ = simulate_subject([9, 2], **settings)
    images, params = simulate_subject([9, 2], spheres=specs, anatomy_references=True, **settings)
    np.testing.assert_array_equal(images["t1"], plain["t1"])
    assert len(params["lesions"]) == 4 and images["lesion_mask"].max() == 4
    np.testing.assert_allclose(images["pet_lesionfree_noisefree"], plain["pet_sd_noisefree"], rtol=1e-4, atol=1e-2)
    lesion = images["lesion_mask"] > 0
    difference = np.abs(images["pet_sd_noisefree"] - images["pet_lesionfree_noisefree"])
    assert difference[lesion].mean() > 20 * difference[~lesion].mean()
    brain = images["brain_mask"] > 0
    pattern = images["pet_lesionfree_noisefree"][brain] / np.maximum(images["pet_anatomy_noisefree"][brain], 1e-6)
    assert np.std(pattern[images["pet_anatomy_noisefree"][brain] > 1000]) > 0.02  # the heterogeneity is gone
