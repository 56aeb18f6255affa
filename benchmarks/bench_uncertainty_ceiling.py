"""How well could any uncertainty map rank the errors? The ideal map, measured on validation subjects.

For each validation subject of a simulated cohort, the simulator repeats the subject's low-dose acquisition
``--realizations`` times with independent noise (same anatomy, uptake, counts and PSF; ``noise_realizations`` of
``pet_simulator.cohort.simulate_subject``), and the bundle's inference workflow (``configs/inference.json``, seed 0)
enhances each repeat. The per-voxel RMS error over the other repeats (noise-free standard dose as truth) is the
ideal uncertainty map: the true error scale of that voxel, bias and noise together, which no map made from one study
can know better. It is scored like a candidate map (``scripts.faithfulness.uncertainty_calibration``): Spearman(map,
|error|) inside the brain and the fraction of voxels with |error| <= 2 x map, for each repeat against the others,
with all other repeats and with 3 of them (the ideal map's own estimate improves with more repeats). The uncertainty
targets are Spearman >= 0.5 and 2-SD coverage 90-98 % (docs/README.md, "No uncertainty map").

    python benchmarks/bench_uncertainty_ceiling.py --dataset_dir data/sim [--subjects 6] [--realizations 8]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import nibabel as nib
import numpy as np
import torch
from bench_uncertainty import BUNDLE, REPO, enhance  # puts the bundle's scripts package on the path
from monai.bundle import ConfigParser

sys.path.insert(0, REPO)

from pet_simulator.cohort import noise_repeats  # noqa: E402
from scripts.faithfulness import uncertainty_calibration  # noqa: E402
from scripts.training import load_cohort  # noqa: E402


def ideal_map_scores(errors: np.ndarray, brain: np.ndarray, others: int) -> dict:
    """Mean over repeats of the ideal map's scores: RMS error of ``others`` other repeats against this repeat's error.

    ``errors``: ``(R, H, W, D)`` enhanced - truth of each repeat.
    """
    scores = []
    for j in range(len(errors)):
        rest = np.delete(errors, j, axis=0)[:others]
        ideal = np.sqrt((rest**2).mean(axis=0))
        scores.append(uncertainty_calibration(errors[j], ideal, np.zeros_like(ideal), brain))  # |error - 0|
    return {key: float(np.mean([s[key] for s in scores])) for key in ("spearman", "coverage_2sd")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset_dir", required=True, help="simulated cohort (datalist.json, cohort_config.json)")
    parser.add_argument("--subjects", type=int, default=None, help="the first N validation subjects (default all)")
    parser.add_argument("--realizations", type=int, default=8, help="noise repeats per subject and dose")
    parser.add_argument("--dose_reduction_factors", type=int, nargs="+", default=[20, 100])
    args = parser.parse_args()
    torch.set_num_threads(2)
    drfs = args.dose_reduction_factors
    records = load_cohort(os.path.join(args.dataset_dir, "datalist.json"), "validation")[: args.subjects]
    config = ConfigParser()
    config.read_config(os.path.join(BUNDLE, "configs", "simulate.json"))
    scanner_config = config.get_parsed_content("scanner_config")
    print(f"{len(records)} validation subjects x {drfs} x {args.realizations} noise repeats")
    print(
        "| study | ideal map Spearman (all others / 3 others) | 2-SD coverage (all others / 3 others) | bias^2 share |"
    )
    print("|---|---|---|---|")
    results = []
    with tempfile.TemporaryDirectory() as work:
        for record in records:
            images = noise_repeats(args.dataset_dir, record["id"], drfs, args.realizations, scanner_config)
            repeats = {d: [images[f"pet_drf{d}_noise{i}"] for i in range(args.realizations)] for d in drfs}
            reference = nib.load(record["pet_sd_noisefree"])
            studies = []
            for drf, scans in repeats.items():
                for i, image in enumerate(scans):
                    study_id = f"{record['id']}_drf{drf}_noise{i}"
                    path = os.path.join(work, f"{study_id}.nii.gz")
                    nib.save(nib.Nifti1Image(np.asarray(image, np.float32), reference.affine, reference.header), path)
                    studies.append({"id": study_id, "pet": path, "mri": record["t1"]})
            enhance(studies, work, 0, {})
            truth = np.asarray(reference.dataobj, dtype=np.float64)
            brain = np.asarray(nib.load(record["brain_mask"]).dataobj) > 0
            for drf in repeats:
                errors = np.stack(
                    [
                        np.asarray(nib.load(os.path.join(work, "seed0", s, f"{s}_enhanced.nii.gz")).dataobj) - truth
                        for s in (f"{record['id']}_drf{drf}_noise{i}" for i in range(args.realizations))
                    ]
                )
                inside = errors[:, brain]
                bias_share = float((inside.mean(axis=0) ** 2).mean() / (inside**2).mean())
                full, few = ideal_map_scores(errors, brain, args.realizations - 1), ideal_map_scores(errors, brain, 3)
                results.append(full)
                print(
                    f"| {record['id']} DRF {drf} | {full['spearman']:.3f} / {few['spearman']:.3f} "
                    f"| {100 * full['coverage_2sd']:.1f} / {100 * few['coverage_2sd']:.1f} % | {bias_share:.2f} |"
                )
    spearman = [r["spearman"] for r in results]
    print(f"Ideal map: Spearman {min(spearman):.3f}-{max(spearman):.3f} (mean {np.mean(spearman):.3f}); target >= 0.5.")


if __name__ == "__main__":
    main()
