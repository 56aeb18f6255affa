"""multi_gpu_train.json: two CPU processes on gloo (torch.distributed.run) train in sync; rank 0 alone saves."""

from __future__ import annotations

import os
import subprocess
import sys

import torch
from tiny_cohort import make_tiny_cohort
from workflow_testing import BUNDLE_ROOT, TINY_TRAINING


def test_ddp_two_cpu_processes(tmp_path):
    cohort = str(tmp_path / "cohort")
    make_tiny_cohort(cohort, splits={"training": 2, "validation": 1, "test": 1})  # fewer validation studies than ranks
    settings = {**TINY_TRAINING, "epoch_length": 1, "max_epochs": 2, "val_interval": 2}
    args = [f"--{k}={v}".replace(" ", "") for k, v in settings.items()]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        "['configs/inference.json','configs/train.json','configs/multi_gpu_train.json']",
        "--bundle_root",
        BUNDLE_ROOT,
        "--dataset_dir",
        cohort,
        "--runs_dir",
        str(tmp_path / "runs"),
        *args,
        "--finalize",  # every rank saves its network: DistributedDataParallel must keep the ranks' weights identical
        '[\'$torch.save(@network.module.state_dict(), @ckpt_dir + "/rank" + str(dist.get_rank()) + ".pt")\', '
        "'$dist.destroy_process_group()']",
    ]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    result = subprocess.run(command, cwd=BUNDLE_ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    checkpoints = tmp_path / "runs" / "m2diff" / "checkpoints"
    saved = torch.load(checkpoints / "checkpoint_final.pt", weights_only=True)
    assert saved["trainer"]["iteration"] == 2  # per rank: 2 iterations, each on its own share of the slices
    ranks = [torch.load(checkpoints / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])  # gradients were averaged across ranks
    network = torch.load(checkpoints / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in network)  # saved unwrapped from DistributedDataParallel
    log = result.stdout + result.stderr
    # checkpoint_final.pt and model_final.pt, by rank 0 only
    assert log.count("Train completed, saved final checkpoint") == 2, log[-3000:]
