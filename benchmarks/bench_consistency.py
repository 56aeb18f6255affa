"""Which data-consistency cut-off? Fixed cut-offs and the automatic one at several noise tolerances, on validation.

Enhances each validation study once with the bundle's inference workflow and the data consistency off
(``configs/inference.json``, ``--consistency_fwhm_mm 0``), then applies each variant with the bundle's own functions
(``scripts.consistency``, as the sampler does) and scores it with evaluate.json's scorer against the noise-free
standard dose (``--reference sd``: the standard-dose scan, for real data in the cohort format of docs/simulator.md):
brain-masked PSNR, meta-ROI/pons SUVR error, the worst lesion's contrast error, and the cut-off used.
Choose ``consistency_noise_pct`` here, on validation subjects, never on the test split (docs/README.md, "Cut-off
from the study's measured noise"); a fine-tuned model or another scanner may want another value.

    python benchmarks/bench_consistency.py --dataset_dir data/sim [--model_file bundle/models/model.pt] \
        [--override --key value ...]
"""

from __future__ import annotations

import argparse
import os
import tempfile

import nibabel as nib
import numpy as np
import torch
from bench_uncertainty import BUNDLE, enhance, parse_overrides  # puts the bundle's scripts package on the path

from scripts.consistency import consistent_with_measurement
from scripts.evaluation import REFERENCES, score_study
from scripts.training import load_cohort


def with_consistency(enhanced: np.ndarray, low_dose: np.ndarray, voxel_mm: list[float], variant: str) -> tuple:
    """``(corrected image clipped at zero, cut-off in mm)`` for a variant ``"<mm> mm"`` or ``"auto <pct> %"``."""
    enhanced_t, low_dose_t = (torch.from_numpy(a.astype(np.float32))[None] for a in (enhanced, low_dose))
    fwhm = "auto" if variant.startswith("auto") else float(variant.split()[0])
    pct = float(variant.split()[1]) if variant.startswith("auto") else 1.0
    corrected, cutoff = consistent_with_measurement(enhanced_t, low_dose_t, voxel_mm, fwhm, pct)
    return np.clip(corrected[0].numpy().astype(np.float64), 0, None), cutoff


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset_dir", required=True, help="simulated cohort (datalist.json)")
    parser.add_argument("--model_file", default=os.path.join(BUNDLE, "models", "model.pt"))
    parser.add_argument("--dose_levels", nargs="+", default=["20", "100", "random"])
    parser.add_argument("--fixed_mm", type=float, nargs="+", default=[8, 12, 16, 24])
    parser.add_argument("--noise_pcts", type=float, nargs="+", default=[0.43, 0.6, 0.74, 0.89, 1.17])
    parser.add_argument(
        "--reference", choices=sorted(REFERENCES), default="sd_noisefree", help="sd: the standard-dose scan (real data)"
    )
    parser.add_argument("--override", nargs=argparse.REMAINDER, default=[], help="--key value pairs for inference")
    args = parser.parse_args()
    overrides = parse_overrides(args.override)
    levels = [int(x) if x.isdigit() else x for x in args.dose_levels]
    records = load_cohort(os.path.join(args.dataset_dir, "datalist.json"), "validation", levels, True)
    studies = [{"id": f"{r['id']}_{r['dose_level']}", "pet": r["pet_low_dose"], "mri": r["t1"]} for r in records]
    variants = [f"{mm:g} mm" for mm in args.fixed_mm] + [f"auto {pct:g} %" for pct in args.noise_pcts]
    print(f"{len(studies)} validation studies ({', '.join(args.dose_levels)}), weights {args.model_file}, ", end="")
    print(f"reference {args.reference}")
    scores: dict = {}
    with tempfile.TemporaryDirectory() as output_dir:
        enhance(studies, output_dir, 0, {**overrides, "consistency_fwhm_mm": 0, "ckpt_path": args.model_file})
        for record, study in zip(records, studies):
            load = lambda path: np.asarray(nib.load(path).dataobj, dtype=np.float64)  # noqa: E731
            image = nib.load(os.path.join(output_dir, "seed0", study["id"], f"{study['id']}_enhanced.nii.gz"))
            voxel_mm = [float(v) for v in image.header.get_zooms()[:3]]
            labels = nib.load(record["labels"])
            key = REFERENCES[args.reference]
            reference = {key: load(record[key]), "brain_mask": load(record["brain_mask"])}
            reference.update(labels=np.asarray(labels.dataobj).astype(np.int32), affine=labels.affine)
            if record.get("lesion_mask"):
                reference["lesion_mask"] = np.asarray(nib.load(record["lesion_mask"]).dataobj).astype(np.int32)
            enhanced, low_dose = load(image.get_filename()), load(record["pet_low_dose"])
            for variant in variants:
                corrected, cutoff = with_consistency(enhanced, low_dose, voxel_mm, variant)
                row = score_study(corrected, reference)[0]
                scores.setdefault((variant, str(record["dose_level"])), []).append({**row, "cutoff": cutoff})
    print("| cut-off | dose | PSNR | mean abs SUVR error % | max abs SUVR error % | lesion abs error % | cut-off, mm |")
    print("|---|---|---|---|---|---|---|")
    for (variant, level), rows in scores.items():
        psnr = np.mean([r["psnr"] for r in rows])
        suvr = np.abs([r["suvr_bias_pct"] for r in rows])
        lesion = [abs(r["lesion_contrast_err_pct"]) for r in rows if np.isfinite(r["lesion_contrast_err_pct"])]
        lesion_mean = np.mean(lesion) if lesion else float("nan")
        cut = [r["cutoff"] for r in rows]
        print(
            f"| {variant} | {level} | {psnr:.2f} | {suvr.mean():.2f} | {suvr.max():.2f} | {lesion_mean:.1f} "
            f"| {np.mean(cut):.1f} ({min(cut):.0f}-{max(cut):.0f}) |"
        )


if __name__ == "__main__":
    main()
