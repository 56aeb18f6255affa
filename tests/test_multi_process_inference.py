"""multi_gpu_inference.json: two CPU processes (gloo, torchrun) on four studies (and a broken one) give the outputs
and summary of one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
from inference_testing import (
    BUNDLE,
    REPO,
    TINY_NETWORK,
    nifti_study,
    run_failing,
    save_tiny_weights,
    summary,
    write_datalist,
)


def run_two_processes(datalist, output_dir, weights):
    configs = "['bundle/configs/inference.json','bundle/configs/multi_gpu_inference.json']"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "monai.bundle", "run"]
    command += ["--bundle_root", str(BUNDLE), "--config_file", configs, "--datalist", str(datalist)]
    command += ["--output_dir", str(output_dir), "--ckpt_path", str(weights)]
    for key, value in TINY_NETWORK.items():
        command += [f"--{key}", json.dumps(value).replace("false", "False").replace("true", "True")]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_two_processes_match_one(tmp_path):
    weights = save_tiny_weights(tmp_path / "model.pt")
    records = [nifti_study(tmp_path / "data", f"s{i}", with_mri=i != 2, scale=1 + i) for i in range(4)]
    records.append({"id": "broken", "pet": str(tmp_path / "data" / "missing.nii.gz")})
    datalist = write_datalist(records, tmp_path / "studies.json")
    run_failing(datalist, tmp_path / "one", weights)
    result = run_two_processes(datalist, tmp_path / "two", weights)
    assert result.returncode != 0  # rank 0 fails the run after merging, as one process does

    one, two = summary(tmp_path / "one"), summary(tmp_path / "two")
    statuses = [(s["id"], s["status"]) for s in two["studies"]]
    assert statuses == [(s["id"], s["status"]) for s in one["studies"]]
    assert statuses == [("s0", "ok"), ("s1", "ok"), ("s2", "ok"), ("s3", "ok"), ("broken", "failed")]
    assert "missing.nii.gz" in two["studies"][-1]["message"]
    assert two["complete"] and two["ok"] == 4 and two["settings"]["processes"] == 2
    ranks = [[s["id"] for s in summary(tmp_path / "two" / "ranks" / str(r))["studies"]] for r in (0, 1)]
    assert ranks == [["s0", "s2", "broken"], ["s1", "s3"]]  # sharded without duplicates
    for study in ("s0", "s1", "s2", "s3"):
        expected = nib.load(tmp_path / "one" / study / f"{study}_enhanced.nii.gz")
        actual = nib.load(tmp_path / "two" / study / f"{study}_enhanced.nii.gz")
        np.testing.assert_array_equal(actual.affine, expected.affine)
        np.testing.assert_allclose(actual.get_fdata(), expected.get_fdata(), rtol=1e-5, atol=1e-4)
