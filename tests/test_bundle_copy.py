"""A copy of bundle/ alone runs inference, training and evaluation: nothing outside the bundle folder is needed.

The commands run with no PYTHONPATH and with the simulator (installed in the test environment) made unimportable;
each run reports where the bundle's ``scripts`` package came from, which must be the copy. Inference runs from
another folder; training and evaluation from the copy's root (Model Zoo's convention), because their configs use
``$scripts.…`` expressions whose ``scripts`` import MONAI evaluates before initialize puts the bundle on sys.path.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from inference_testing import BUNDLE, TINY_4_LEVELS, TINY_NETWORK, save_tiny_weights
from tiny_cohort import make_tiny_cohort
from workflow_testing import TINY_TRAINING

#: the tiny network with its only attention at 1/8 resolution (the sample study is a whole head)
NETWORK = {**TINY_NETWORK, **TINY_4_LEVELS}
#: ``python -m monai.bundle`` with the simulator blocked and the origin of ``scripts`` printed at exit
RUN_BUNDLE = """
import atexit, os, runpy, sys
sys.modules["pet_simulator"] = None
atexit.register(lambda: print("SCRIPTS_FROM", os.path.abspath(getattr(sys.modules.get("scripts"), "__file__", ""))))
runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)
"""


def _cli_value(value) -> str:
    return json.dumps(value).replace("false", "False").replace("true", "True")


def _run(copy: Path, cwd: Path, configs: list[str], **settings) -> str:
    files = [str(copy / "configs" / f"{name}.json") for name in configs]
    args = [sys.executable, "-c", RUN_BUNDLE, "run", "--bundle_root", str(copy)]
    args += ["--config_file", str(files) if len(files) > 1 else files[0]]
    args += ["--meta_file", str(copy / "configs" / "metadata.json")]
    args += ["--logging_file", str(copy / "configs" / "logging.conf")]
    for key, value in {**NETWORK, **settings}.items():
        args += [f"--{key}", _cli_value(value)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert f"SCRIPTS_FROM {copy / 'scripts' / '__init__.py'}" in done.stdout, done.stdout[-2000:]
    return done.stdout


@pytest.fixture(scope="module")
def copy(tmp_path_factory) -> Path:
    """bundle/ alone, copied to a temporary folder (its shipped weights left out: the runs use tiny ones)."""
    target = tmp_path_factory.mktemp("elsewhere") / "bundle"
    shutil.copytree(BUNDLE, target, ignore=shutil.ignore_patterns("__pycache__", "model.pt"))
    return target


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    architecture = {key.split("#")[1]: value for key, value in TINY_4_LEVELS.items()}
    return save_tiny_weights(tmp_path_factory.mktemp("weights") / "model.pt", **architecture)


def test_a_copy_of_the_bundle_enhances_its_sample(copy, weights, tmp_path):
    output = tmp_path / "enhanced"
    settings = {"datalist": str(copy / "sample" / "studies.json"), "output_dir": str(output), "ckpt_path": str(weights)}
    _run(copy, tmp_path, ["inference"], **settings)
    status = json.loads((output / "summary.json").read_text())["studies"]
    assert [s["id"] for s in status] == ["sample"] and status[0]["status"] == "ok", status
    enhanced = nib.load(str(output / "sample" / "sample_enhanced.nii.gz"))
    low_dose = nib.load(str(copy / "sample" / "sample_pet_drf20.nii.gz"))
    assert enhanced.shape == low_dose.shape and np.allclose(enhanced.affine, low_dose.affine)
    assert np.isfinite(enhanced.get_fdata()).all() and enhanced.get_fdata().max() > 0


def test_a_copy_of_the_bundle_trains_and_evaluates(copy, tmp_path):
    cohort = tmp_path / "cohort"
    make_tiny_cohort(str(cohort), splits={"training": 1, "validation": 1, "test": 1})
    runs = tmp_path / "runs"
    common = {"dataset_dir": str(cohort), "runs_dir": str(runs), "num_threads": 1}
    _run(copy, copy, ["inference", "train"], **{**TINY_TRAINING, **common}, val_num_studies=1)
    assert {"model.pt", "model_final.pt"} <= set(os.listdir(runs / "m2diff" / "checkpoints"))

    evaluation = {"eval_dose_reduction_factors": [100], "save_panels": False}
    _run(copy, copy, ["inference", "train", "evaluate"], **common, **evaluation)
    with open(runs / "eval" / "test" / "m2diff" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and {row["id"] for row in rows} == {"sub-0003"}
    assert all(np.isfinite(float(row["psnr"])) for row in rows)
