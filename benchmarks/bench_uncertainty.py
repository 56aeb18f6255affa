"""Would the spread of several samples be an uncertainty map? Measured on validation subjects, never on the test split.

Enhances each validation study of a simulated cohort ``--num_samples`` times with the bundle's inference workflow
(``configs/inference.json``, seeds 0..K-1; their mean is what ``--num_samples K`` outputs) and scores the samples'
per-voxel SD against the actual error of their mean (noise-free standard dose as truth, inside the brain):
Spearman(SD, |error|) and the fraction of voxels with |error| <= 2 SD (``scripts.faithfulness``). The targets an
uncertainty map must meet to be shipped: Spearman >= 0.5 and 2-SD coverage in [0.90, 0.98].

    python benchmarks/bench_uncertainty.py --dataset_dir data/sim --num_samples 4 [--override --num_inference_steps 4]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import nibabel as nib
import numpy as np

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
BUNDLE = os.path.join(REPO, "bundle")
sys.path.insert(0, BUNDLE)

from scripts.faithfulness import uncertainty_calibration  # noqa: E402
from scripts.training import load_cohort  # noqa: E402


def parse_overrides(pairs: list[str]) -> dict:
    """``--key value`` pairs for the inference workflow; values are JSON (numbers, lists, booleans) where they parse."""

    def value(text: str):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text

    return {key.lstrip("-"): value(text) for key, text in zip(pairs[::2], pairs[1::2])}


def enhance(studies: list[dict], output_dir: str, seed: int, overrides: dict) -> None:
    """Run the inference workflow on ``studies`` with one seed."""
    from monai.bundle import ConfigWorkflow

    datalist = os.path.join(output_dir, "studies.json")
    with open(datalist, "w") as f:
        json.dump(studies, f)
    workflow = ConfigWorkflow(
        config_file=os.path.join(BUNDLE, "configs", "inference.json"),
        meta_file=os.path.join(BUNDLE, "configs", "metadata.json"),
        logging_file=False,
        workflow_type="inference",
        bundle_root=BUNDLE,
        datalist=datalist,
        output_dir=os.path.join(output_dir, f"seed{seed}"),
        seed=seed,
        **overrides,
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset_dir", required=True, help="simulated cohort (datalist.json)")
    parser.add_argument("--num_samples", type=int, default=4)
    parser.add_argument("--dose_reduction_factors", type=int, nargs="+", default=[20, 100])
    parser.add_argument("--override", nargs=argparse.REMAINDER, default=[], help="--key value pairs for inference")
    args = parser.parse_args()
    overrides = parse_overrides(args.override)
    records = load_cohort(
        os.path.join(args.dataset_dir, "datalist.json"), "validation", args.dose_reduction_factors, True
    )
    studies = [{"id": f"{r['id']}_drf{r['dose_level']}", "pet": r["pet_low_dose"], "mri": r["t1"]} for r in records]
    print(f"{len(studies)} validation studies, {args.num_samples} samples each, overrides {overrides or 'none'}")
    print("| study | Spearman(SD, abs error) | 2-SD coverage | median SD / median abs error |")
    print("|---|---|---|---|")
    scores = []
    with tempfile.TemporaryDirectory() as output_dir:
        for seed in range(args.num_samples):
            enhance(studies, output_dir, seed, overrides)
        for record, study in zip(records, studies):
            paths = [
                os.path.join(output_dir, f"seed{s}", study["id"], f"{study['id']}_enhanced.nii.gz")
                for s in range(args.num_samples)
            ]
            samples = np.stack([np.asarray(nib.load(p).dataobj, dtype=np.float64) for p in paths])
            truth = np.asarray(nib.load(record["pet_sd_noisefree"]).dataobj, dtype=np.float64)
            brain = np.asarray(nib.load(record["brain_mask"]).dataobj) > 0
            mean, spread = samples.mean(0), samples.std(0)
            score = uncertainty_calibration(mean, spread, truth, brain)
            ratio = np.median(spread[brain]) / max(np.median(np.abs(mean - truth)[brain]), 1e-12)
            scores.append(score)
            print(f"| {study['id']} | {score['spearman']:.3f} | {100 * score['coverage_2sd']:.1f} % | {ratio:.3f} |")
    spearman = np.mean([s["spearman"] for s in scores])
    coverage = np.mean([s["coverage_2sd"] for s in scores])
    print(f"| mean | {spearman:.3f} | {100 * coverage:.1f} % | |")
    verdict = "meets" if spearman >= 0.5 and 0.90 <= coverage <= 0.98 else "does not meet"
    print(f"The samples' SD {verdict} the targets (Spearman >= 0.5, 2-SD coverage 90-98 %).")


if __name__ == "__main__":
    main()
