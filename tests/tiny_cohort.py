"""A tiny synthetic cohort in the simulator's data format (bundle/docs/simulator.md), for quick workflow tests."""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np

SHAPE = (40, 40, 20)
AFFINE = np.array([[2.0, 0, 0, -40], [0, 2.0, 0, -40], [0, 0, 2.0, -30], [0, 0, 0, 1]])
DRFS = (4, 100)
META_LABEL, PONS_LABEL = 166, 35


def _phantom(rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    i, j, k = np.meshgrid(*[np.linspace(-1, 1, s) for s in SHAPE], indexing="ij")
    brain = (i / 0.8) ** 2 + (j / 0.8) ** 2 + (k / 0.9) ** 2 <= 1
    labels = np.zeros(SHAPE, np.int16)
    labels[brain] = 1
    labels[brain & (i > 0.2)] = META_LABEL
    labels[brain & (np.abs(i) < 0.25) & (np.abs(j) < 0.25) & (k < -0.3)] = PONS_LABEL
    truth = np.where(brain, 8000.0, 0.0) + np.where(labels == META_LABEL, 4000.0, 0.0)
    truth *= 1 + 0.1 * np.sin(6 * j) * brain
    t1 = np.where(brain, 600.0 + 200 * (labels == META_LABEL), 50.0) + rng.normal(0, 5, SHAPE)
    return brain, labels, truth, t1


def make_tiny_cohort(folder: str, splits: dict[str, int] | None = None, seed: int = 0) -> str:
    """Write subjects and ``datalist.json`` under ``folder``; returns the datalist path."""
    splits = splits or {"training": 2, "validation": 2, "test": 2}
    rng = np.random.default_rng(seed)
    datalist: dict = {"dose_reduction_factors": list(DRFS)}
    number = 0
    for split, count in splits.items():
        datalist[split] = []
        for _ in range(count):
            number += 1
            sid = f"sub-{number:04d}"
            os.makedirs(os.path.join(folder, sid), exist_ok=True)
            brain, labels, truth, t1 = _phantom(rng)
            group = "AD" if number % 2 == 0 else "CN"
            images = {
                "t1": t1,
                "pet_truth": truth,
                "pet_sd_noisefree": truth,
                "pet_sd": truth + rng.normal(0, 300, SHAPE) * brain,
                "labels": labels,
                "brain_mask": brain.astype(np.uint8),
            }
            images.update({f"pet_drf{k}": truth + rng.normal(0, 300 * np.sqrt(k), SHAPE) * brain for k in DRFS})
            own = np.random.default_rng([seed, number])  # the untrained-dose image has its own stream
            drf_random = float(own.uniform(4, 100))
            images["pet_drf_random"] = truth + own.normal(0, 300 * np.sqrt(drf_random), SHAPE) * brain
            record = {"id": sid, "group": group, "ad_severity": 0.5 if group == "AD" else 0.0, "drfs": list(DRFS)}
            record["drf_random"] = drf_random
            for key, array in images.items():
                name = f"{sid}/{sid}_{key}.nii.gz"
                dtype = array.dtype if array.dtype in (np.int16, np.uint8) else np.float32
                nib.save(nib.Nifti1Image(np.asarray(array, dtype=dtype), AFFINE), os.path.join(folder, name))
                record[key] = name
            params = f"{sid}/{sid}_params.json"
            with open(os.path.join(folder, params), "w") as f:
                json.dump({"seed": seed, "group": group}, f)
            record["params"] = params
            datalist[split].append(record)
    path = os.path.join(folder, "datalist.json")
    with open(path, "w") as f:
        json.dump(datalist, f, indent=1)
    return path
