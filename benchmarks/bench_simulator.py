"""Benchmark of the PET/MRI simulator: time and memory per subject, noise per dose, AD SUVR contrast.

Usage (from the repository root):
    python benchmarks/bench_simulator.py                 # 2 mm simulation (default) + the 1 mm option
    python benchmarks/bench_simulator.py --skip_1mm      # 2 mm only
    python benchmarks/bench_simulator.py --features_off  # the first simulator's subject (no new feature)

Prints seconds per subject (standard dose + DRF 4/20/50/100 + noise-free reconstruction), peak resident memory,
white-matter noise per dose at 1e8 counts, and the meta-ROI/pons SUVR of a severity-1 AD subject versus the same
subject without AD. By default every subject has the cohort features that cost time: atrophy, uptake heterogeneity,
face and neck, a whole-head T1 and one extra low-dose image at DRF 30 (lesions are off so that the SUVR comparison
stays a pure AD effect; they cost well under a second).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
import torch
from scipy import ndimage

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bundle"))
sys.path.insert(0, ROOT)

from pet_simulator.acquisition import Scanner  # noqa: E402
from pet_simulator.anatomy import load_template_anatomy  # noqa: E402
from pet_simulator.cohort import simulate_subject  # noqa: E402
from scripts.regions import suvr  # noqa: E402

DRFS = (4, 20, 50, 100)
SEED = [424242, 1]


def peak_rss_gb() -> float:
    """Peak resident memory of this process in GB (Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def white_matter_mask(images: dict) -> np.ndarray:
    """Cerebral white matter (labels 44/45), eroded once, where the truth is within 5 % of its WM median."""
    truth = images["pet_truth"]
    wm = np.isin(images["labels"], (44, 45))
    med = float(np.median(truth[wm]))
    return ndimage.binary_erosion(wm, iterations=1) & (np.abs(truth - med) < 0.05 * med)


def run_one(sim_voxel_mm: int, cache_dir: str, severity: float = 0.0, features: bool = True) -> dict:
    """Simulate one subject at 1e8 counts and return timings and noise/SUVR numbers."""
    torch.set_num_threads(1)
    load_template_anatomy(2, cache_dir)
    if sim_voxel_mm == 1:
        load_template_anatomy(1, cache_dir)
    t0 = time.perf_counter()
    scanner = Scanner((99, 117, 95), sim_voxel_mm)
    t_scanner = time.perf_counter() - t0
    t0, cpu0 = time.perf_counter(), time.process_time()
    images, params = simulate_subject(
        SEED,
        ad_severity=severity,
        dose_reduction_factors=DRFS,
        sim_voxel_mm=sim_voxel_mm,
        scanner=scanner,
        cache_dir=cache_dir,
        counts=1e8,
        whole_head=features,
        extra_drf=30.0 if features else None,
        **({} if features else {"heterogeneity_range": None, "face_neck": False, "atrophy": False}),
    )
    t_subject = time.perf_counter() - t0
    cpu_subject = time.process_time() - cpu0
    wm = white_matter_mask(images)
    nf = images["pet_sd_noisefree"]
    noise, cov = {}, {}
    for key in ["pet_sd"] + [f"pet_drf{d}" for d in DRFS] + (["pet_drf_random"] if features else []):
        img = images[key]
        noise[key] = float((img - nf)[wm].std() / nf[wm].mean())
        cov[key] = float(img[wm].std() / img[wm].mean())
    suvrs = {
        k: suvr(images[k], images["labels"], images["affine"]) for k in ("pet_truth", "pet_sd_noisefree", "pet_sd")
    }
    gm = np.isin(images["labels"], (190, 191, 142, 143))  # superior and middle frontal gyri
    return {
        "sim_voxel_mm": sim_voxel_mm,
        "severity": severity,
        "seconds_scanner_build": t_scanner,
        "seconds_subject": t_subject - params.get("seconds_drf_random", 0.0),
        "seconds_drf_random": params.get("seconds_drf_random", 0.0),
        "cpu_seconds_subject": cpu_subject,
        "seconds_forward_model": params["seconds_forward_model"],
        "peak_rss_gb": peak_rss_gb(),
        "wm_voxels": int(wm.sum()),
        "psf_fwhm_mm": params["psf_fwhm_mm"],
        "recon_psf_fwhm_mm": params["recon_psf_fwhm_mm"],
        "wm_noise": noise,
        "wm_cov": cov,
        "suvr": suvrs,
        "frontal_gm_wm_ratio_noisefree": float(nf[gm].mean() / nf[wm].mean()),
        "frontal_gm_wm_ratio_truth": float(images["pet_truth"][gm].mean() / images["pet_truth"][wm].mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache_dir", default=os.path.join(ROOT, "data", "sim", ".cache"))
    parser.add_argument("--skip_1mm", action="store_true")
    parser.add_argument("--features_off", action="store_true", help="no atrophy, heterogeneity, head, extra DRF")
    parser.add_argument("--child", choices=["1mm"], default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "1mm":  # separate process: its own peak memory
        print(json.dumps(run_one(1, args.cache_dir, features=not args.features_off)))
        return
    features = not args.features_off
    print(f"CPU cores visible: {os.cpu_count()}, torch threads: 1, load average {os.getloadavg()[0]:.2f}")
    print("features: " + ("atrophy, heterogeneity, face/neck, whole-head T1, extra DRF 30" if features else "none"))
    cn = run_one(2, args.cache_dir, 0.0, features)
    ad = run_one(2, args.cache_dir, 1.0, features)
    print(f"load average after the 2 mm subjects: {os.getloadavg()[0]:.2f}")
    print("\n== 2 mm simulation grid (reconstruction 2 mm, OSEM 4 it x 21 subsets, PSF, 3 mm post-filter) ==")
    print(f"scanner build (once per process): {cn['seconds_scanner_build']:.1f} s")
    print(
        f"seconds per subject (SD + DRF 4/20/50/100 + noise-free): {cn['seconds_subject']:.1f} s (CN), "
        f"{ad['seconds_subject']:.1f} s (AD); forward model part {cn['seconds_forward_model']:.1f} s; "
        f"the extra random-DRF image adds {cn['seconds_drf_random']:.1f} s"
    )
    print(
        f"CPU seconds of this process per subject (all images, load-independent): {cn['cpu_seconds_subject']:.1f} s "
        f"(CN), {ad['cpu_seconds_subject']:.1f} s (AD)"
    )
    print(f"peak RSS: {max(cn['peak_rss_gb'], ad['peak_rss_gb']):.2f} GB")
    print(f"subject PSF FWHM {cn['psf_fwhm_mm']:.2f} mm (reconstruction models {cn['recon_psf_fwhm_mm']:.2f} mm)")
    print(
        f"white-matter noise at 1e8 counts ({cn['wm_voxels']} voxels): std(image - noise-free) / mean, "
        "and plain std / mean"
    )
    for key in cn["wm_noise"]:
        print(f"  {key:12s} {100 * cn['wm_noise'][key]:5.1f} %   {100 * cn['wm_cov'][key]:5.1f} %")
    print(
        f"frontal GM / WM: truth {cn['frontal_gm_wm_ratio_truth']:.2f}, noise-free recon "
        f"{cn['frontal_gm_wm_ratio_noisefree']:.2f}"
    )
    print("meta-ROI / pons SUVR, same subject without AD vs AD severity 1:")
    for key in cn["suvr"]:
        drop = 1 - ad["suvr"][key] / cn["suvr"][key]
        print(f"  {key:18s} CN {cn['suvr'][key]:.3f}  AD {ad['suvr'][key]:.3f}  drop {100 * drop:.1f} %")
    if not args.skip_1mm:
        out = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--child", "1mm", "--cache_dir", args.cache_dir]
            + (["--features_off"] if args.features_off else []),
            capture_output=True,
            text=True,
            check=True,
        )
        one = json.loads(out.stdout.strip().splitlines()[-1])
        print("\n== 1 mm simulation grid option (reconstruction 2 mm) ==")
        print(
            f"scanner build: {one['seconds_scanner_build']:.1f} s; seconds per subject: {one['seconds_subject']:.1f} s "
            f"(forward model {one['seconds_forward_model']:.1f} s); peak RSS {one['peak_rss_gb']:.2f} GB"
        )
        for key in one["wm_noise"]:
            print(f"  {key:12s} {100 * one['wm_noise'][key]:5.1f} %   {100 * one['wm_cov'][key]:5.1f} %")
        print(f"  SUVR CN truth {one['suvr']['pet_truth']:.3f}, noise-free {one['suvr']['pet_sd_noisefree']:.3f}")


if __name__ == "__main__":
    main()
