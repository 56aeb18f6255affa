"""Summarise a simulated cohort from its files: groups, splits, counts, WM noise per dose and SUVR per group.

Usage (from the repository root): python benchmarks/summarise_cohort.py data/sim/datalist.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bundle"))

from scripts.regions import suvr  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("datalist")
    parser.add_argument("--max_subjects", type=int, default=0, help="0 = all")
    args = parser.parse_args()
    import nibabel as nib
    from scipy import ndimage

    base = os.path.dirname(os.path.abspath(args.datalist))
    datalist = json.load(open(args.datalist))
    drfs = datalist["dose_reduction_factors"]
    records = [(s, r) for s in ("training", "validation", "test") for r in datalist[s]]
    if args.max_subjects:
        records = records[: args.max_subjects]
    print(f"complete: {datalist.get('complete')}, subjects: {len(records)}")
    for s in ("training", "validation", "test"):
        groups = [r["group"] for r in datalist[s]]
        print(f"  {s:10s} {len(groups):3d} subjects, AD {groups.count('AD')}")
    rows = []
    for split, rec in records:
        load = lambda key: np.asarray(nib.load(os.path.join(base, rec[key])).dataobj, dtype=np.float32)  # noqa: E731
        params = json.load(open(os.path.join(base, rec["params"])))
        labels = np.asarray(nib.load(os.path.join(base, rec["labels"])).dataobj)
        affine = nib.load(os.path.join(base, rec["labels"])).affine
        truth, nf = load("pet_truth"), load("pet_sd_noisefree")
        wm = np.isin(labels, (44, 45))
        med = float(np.median(truth[wm]))
        wm = ndimage.binary_erosion(wm, iterations=1) & (np.abs(truth - med) < 0.05 * med)
        row = {
            "id": rec["id"],
            "group": rec["group"],
            "severity": rec["ad_severity"],
            "counts": params["counts"],
            "psf": params["psf_fwhm_mm"],
            "whole_head": bool(rec.get("t1_whole_head", False)),
            "lesions": params.get("lesions", []),
            "drf_random": rec.get("drf_random"),
        }
        row["suvr_truth"] = suvr(truth, labels, affine)
        for key in ["pet_sd"] + [f"pet_drf{d}" for d in drfs]:
            img = load(key)
            row[f"noise_{key}"] = float((img - nf)[wm].std() / nf[wm].mean())
            row[f"suvr_{key}"] = suvr(img, labels, affine)
        rows.append(row)
    keys = ["pet_sd"] + [f"pet_drf{d}" for d in drfs]
    lesions = [les for r in rows for les in r["lesions"]]
    random_drfs = [r["drf_random"] for r in rows if r["drf_random"] is not None]
    print(
        f"\n{len(rows)} subjects: whole-head T1 {sum(r['whole_head'] for r in rows)}, with lesions "
        f"{sum(bool(r['lesions']) for r in rows)} ({sum(les['kind'] == 'hot' for les in lesions)} hot, "
        f"{sum(les['kind'] == 'cold' for les in lesions)} cold lesions); PSF FWHM "
        f"{min(r['psf'] for r in rows):.2f}-{max(r['psf'] for r in rows):.2f} mm"
        + (f"; random DRF {min(random_drfs):.1f}-{max(random_drfs):.1f}" if random_drfs else "")
    )
    print("\nWM noise std(image - noise-free)/mean, median [min, max] over subjects (own counts 5e7-2e8):")
    for key in keys:
        v = np.array([r[f"noise_{key}"] for r in rows])
        print(f"  {key:12s} {100 * np.median(v):5.1f} %  [{100 * v.min():5.1f}, {100 * v.max():5.1f}]")
    print("\nmeta-ROI/pons SUVR, mean (SD) per group:")
    for key in ["truth"] + keys:
        parts = []
        for g in ("CN", "AD"):
            v = np.array([r[f"suvr_{key}"] for r in rows if r["group"] == g])
            parts.append(f"{g} {v.mean():.3f} ({v.std():.3f}) n={len(v)}" if len(v) else f"{g} -")
        print(f"  {key:12s} " + "   ".join(parts))
    ad = [r for r in rows if r["group"] == "AD"]
    if len(ad) > 2:
        c = np.corrcoef([r["severity"] for r in ad], [r["suvr_truth"] for r in ad])[0, 1]
        print(f"\nAD severity vs truth SUVR correlation: {c:.2f} (n={len(ad)})")


if __name__ == "__main__":
    main()
