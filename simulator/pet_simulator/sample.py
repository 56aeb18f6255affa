"""The shipped sample study: one simulated AD subject (not part of any cohort) at DRF 20 with its T1."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .cohort import save_nifti_atomic, simulate_subject, write_json_atomic

__all__ = ["write_sample_study", "SAMPLE_SEED"]

SAMPLE_SEED = (20260, 7)  # never used by generate_cohort, whose subject seeds are [cohort_seed, index]


def write_sample_study(
    out_dir: str | os.PathLike,
    drf: int = 20,
    ad_severity: float = 0.8,
    seed=SAMPLE_SEED,
    truth_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    num_threads: int = 1,
) -> Path:
    """Simulate the sample study and write ``sample_pet_drf{drf}.nii.gz``, ``sample_t1.nii.gz`` and ``studies.json``.

    Also written to ``out_dir``: ``sample_pet_sd.nii.gz`` (standard dose, for the README panel),
    ``sample_labels.nii.gz`` (for SUVR) and ``sample_params.json`` (dose, weight, timing: SUV).

    PET is rounded to 0.1 Bq/ml and the T1 to 0.01 MR units so the files compress well (far below noise level).

    Args:
        out_dir: folder of the sample study (e.g. ``bundle/sample``).
        drf: dose reduction factor of the shipped low-dose PET.
        ad_severity: AD severity of the sample subject (0.8: moderate).
        seed: subject seed.
        truth_dir: where to write the true activity (not written when None; keep it out of git).
        cache_dir: template cache folder.
        num_threads: torch threads (bit-identical output needs the same thread count; the shipped files used 1).

    Returns:
        the path of ``studies.json``.
    """
    import torch

    torch.set_num_threads(int(num_threads))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images, params = simulate_subject(
        list(seed), ad_severity=ad_severity, dose_reduction_factors=[drf], cache_dir=cache_dir
    )
    affine = images["affine"]
    pet_name, t1_name = f"sample_pet_drf{drf}.nii.gz", "sample_t1.nii.gz"
    save_nifti_atomic(np.round(images[f"pet_drf{drf}"], 1), affine, out / pet_name)
    save_nifti_atomic(np.round(images["t1"], 2), affine, out / t1_name)
    save_nifti_atomic(np.round(images["pet_sd"], 1), affine, out / "sample_pet_sd.nii.gz")
    save_nifti_atomic(images["labels"], affine, out / "sample_labels.nii.gz", dtype=np.int16)
    write_json_atomic({"id": "sample", **params}, out / "sample_params.json")
    if truth_dir is not None:
        Path(truth_dir).mkdir(parents=True, exist_ok=True)
        save_nifti_atomic(np.round(images["pet_truth"], 1), affine, Path(truth_dir) / "sample_pet_truth.nii.gz")
    studies = [{"id": "sample", "pet": pet_name, "mri": t1_name, "drf": drf}]
    write_json_atomic(studies, out / "studies.json")
    return out / "studies.json"


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Write the shipped sample study (simulated, AD, low dose).")
    parser.add_argument("--out_dir", default="bundle/sample")
    parser.add_argument("--truth_dir", default=None, help="folder for the true activity (keep it out of git)")
    parser.add_argument("--drf", type=int, default=20)
    parser.add_argument("--ad_severity", type=float, default=0.8)
    args = parser.parse_args()
    print(json.dumps(str(write_sample_study(args.out_dir, args.drf, args.ad_severity, truth_dir=args.truth_dir))))
