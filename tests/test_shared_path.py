"""One study, one path: evaluate.json scores exactly what inference.json writes for the same study."""

from __future__ import annotations

import csv
import os
import shutil

import nibabel as nib
import numpy as np
from inference_testing import TINY_NETWORK, run_workflow, write_datalist
from tiny_cohort import make_tiny_cohort
from workflow_testing import run_workflow as run_configs

from scripts import metrics
from scripts.evaluation import study_records
from scripts.training import load_cohort


def _image(path: str) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj, dtype=np.float64)


def test_evaluation_scores_the_prediction_inference_writes(tmp_path, weights):
    datalist = make_tiny_cohort(str(tmp_path / "cohort"), splits={"test": 1})
    (record,) = load_cohort(datalist, "test", [100], per_dose=True)
    (study,) = study_records([record])
    inference_dir = tmp_path / "inference"
    run_workflow(write_datalist([study], tmp_path / "studies.json"), inference_dir, weights, seed=3)

    runs = tmp_path / "runs"
    os.makedirs(runs / "m2diff" / "checkpoints")
    shutil.copy(weights, runs / "m2diff" / "checkpoints" / "model.pt")
    settings = {**TINY_NETWORK, "seed": 3, "num_threads": 1, "save_panels": False, "eval_dose_reduction_factors": [100]}
    names = ["inference", "train", "evaluate"]
    run_configs(names, "infer", dataset_dir=str(tmp_path / "cohort"), runs_dir=str(runs), **settings)

    name = f"{study['id']}/{study['id']}_enhanced.nii.gz"
    product = _image(str(inference_dir / name))
    evaluated = _image(str(runs / "eval" / "test" / "m2diff" / "enhanced" / name))
    np.testing.assert_array_equal(evaluated, product)
    assert not np.allclose(product, _image(record["pet_low_dose"]), rtol=0.01)  # the network did change the image
    with open(runs / "eval" / "test" / "m2diff" / "metrics.csv") as f:
        rows = {row["reference"]: row for row in csv.DictReader(f)}
    brain = _image(record["brain_mask"]) > 0
    assert float(rows["sd"]["psnr"]) == metrics.masked_psnr(product, _image(record["pet_sd"]), brain)
