"""The bundle's use of the simulator (a package of its own, simulator/): simulate.json, and the bundle's SUVR regions
on the simulated anatomy."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pet_simulator.activity import relative_uptake
from pet_simulator.anatomy import load_template_anatomy
from scripts.regions import meta_roi_mask, pons_mask, suvr

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    return load_template_anatomy(2, tmp_path_factory.mktemp("cache"))


def test_template_regions(template):
    assert meta_roi_mask(template["labels"]).sum() > 10000
    assert 500 < pons_mask(template["labels"], template["affine"]).sum() < 5000


def test_ad_severity_lowers_suvr(template):
    values = []
    for severity in (0.0, 0.5, 1.0):
        act, _ = relative_uptake(template, np.random.default_rng(3), ad_severity=severity)
        values.append(suvr(act, template["labels"], template["affine"]))
    assert values[0] > values[1] > values[2]
    drop = 1 - values[2] / values[0]
    assert 0.12 < drop < 0.25, f"severity-1 meta-ROI/pons SUVR drop {drop:.3f}"


def test_simulate_config_knobs(bundle_root):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(os.path.join(bundle_root, "configs", "simulate.json"))
    assert parser["num_subjects"] == 60 and parser["dose_reduction_factors"] == [4, 20, 50, 100]
    assert parser["split_fractions"] == [0.7, 0.1, 0.2] and parser["ad_fraction"] == 0.3
    assert parser["whole_head_fraction"] == 0.5 and parser["lesion_fraction"] == 0.3
    assert parser["psf_fwhm_range_mm"] == [3.5, 7.0] and parser["random_drf_range"] == [4.0, 100.0]
    assert parser["generate"]["_target_"] == "pet_simulator.cohort.generate_cohort"
    cfg = parser.get_parsed_content("scanner_config")
    assert (cfg.n_angles, cfg.n_subsets, cfg.n_iterations) == (168, 21, 4)


def test_simulate_config_without_the_simulator_says_how_to_install_it(tmp_path):
    argv = ["monai.bundle", "run", "--bundle_root", "bundle", "--config_file", "bundle/configs/simulate.json"]
    argv += ["--output_dir", str(tmp_path)]
    hide = "import runpy, sys; sys.modules['pet_simulator'] = None"  # as if it were not installed
    code = f"{hide}; sys.argv = {argv!r}; runpy.run_module('monai.bundle', run_name='__main__')"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("ERROR: simulate.json runs the simulator")
    assert "pip install ./simulator" in result.stderr and "Traceback" not in result.stderr
    assert not os.listdir(tmp_path)  # stopped before any work


def test_the_bundle_never_imports_the_simulator(bundle_root):
    imports = re.compile(r"^\s*(from|import)\s+pet_simulator\b", re.MULTILINE)
    sources = sorted(Path(bundle_root).rglob("*.py"))
    assert [str(p) for p in sources if imports.search(p.read_text())] == []
