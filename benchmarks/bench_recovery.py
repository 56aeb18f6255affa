"""Contrast recovery of PET-only spheres, background variability, heterogeneity: scored on the files inference writes.

Three steps, each resumable:

1. ``simulate``: a cohort of its own (seed 5101 for ``validation``, 5102 for ``test``; never used for training),
   half healthy and half AD, half with whole-head T1s. Each subject carries one hot (x1.5-3; centred in cortex, deep
   grey or white matter) and one cold (x0.3-0.7; cortex or deep grey) PET-only sphere of every diameter 8-22 mm
   (``pet_simulator.spheres``),
   and two more noise-free reconstructions: without the spheres, and without spheres and heterogeneity (the image the
   anatomy alone predicts). Writes ``studies.json`` and ``studies_mri_free.json`` (inference datalists, one study per
   subject and dose level).
2. ``enhance``: runs a method and writes ``<id>/<id>_enhanced.nii.gz`` per study under ``enhanced/<name>``: ``m2diff``
   and ``m2diff_mri_free`` through the bundle's inference workflow (``configs/inference.json``, the product's path,
   ``--override`` passes its options), ``gaussian_filter`` with the FWHM chosen on validation subjects of the main
   cohort (6 mm at 1/20, 10 mm at 1/100). ``low_dose`` needs no step (the input itself is scored).
3. ``score``: reads the written files (``scripts.recovery``) and prints, per method and dose: recovery per sphere size
   and kind (pooled over the spheres of a cell, ``scripts.recovery.pooled_recovery``), mean signed contrast error,
   background variability, heterogeneity amplitude and correlation, brain PSNR against the noise-free standard dose
   and |SUVR error|; ``--by_group`` splits CN and AD; ``--plot`` draws recovery
   against size and against background variability; ``--departure m2diff`` validates the departure map of that
   method's output (the shrunk spheres it flags, its false regions).

    python benchmarks/bench_recovery.py simulate --out data/recovery --split validation --subjects 8
    python benchmarks/bench_recovery.py enhance --out data/recovery --split validation --method m2diff
    python benchmarks/bench_recovery.py score --out data/recovery --split validation --plot recovery.png
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from bench_uncertainty import REPO, enhance, parse_overrides  # puts the bundle's scripts package on the path

sys.path.insert(0, REPO)

from scripts import metrics, recovery  # noqa: E402

SPLIT_SEEDS = {"validation": 5101, "test": 5102}
DOSES = (20, 100)
#: Gaussian FWHM (mm) per dose, chosen on the main cohort's validation subjects (docs/README.md, Test split)
GAUSSIAN_FWHM_MM = {20: 6.0, 100: 10.0}
DIAMETERS = (8.0, 10.0, 13.0, 17.0, 22.0)


def simulate(out: Path, split: str, subjects: int, workers_threads: int) -> None:
    """Simulate (or resume) the split's subjects and write its two datalists."""
    import torch

    from pet_simulator.acquisition import Scanner
    from pet_simulator.anatomy import load_template_anatomy
    from pet_simulator.cohort import save_subject, simulate_subject
    from pet_simulator.spheres import recovery_sphere_specs

    torch.set_num_threads(workers_threads)
    folder = out / split
    cache = out / ".cache"
    scanner = Scanner(load_template_anatomy(2, cache)["t1"].shape, 2)
    studies = []
    for index in range(subjects):
        subject_id = f"sub-{index + 1:04d}"
        params_path = folder / subject_id / f"{subject_id}_params.json"
        if not params_path.exists():
            rng = np.random.default_rng(np.random.SeedSequence([SPLIT_SEEDS[split], index, 404]))
            severity = float(rng.uniform(0.5, 1.2)) if index % 2 else 0.0
            images, params = simulate_subject(
                [SPLIT_SEEDS[split], index],
                ad_severity=severity,
                dose_reduction_factors=DOSES,
                scanner=scanner,
                cache_dir=cache,
                whole_head=(index // 2) % 2 == 1,
                spheres=recovery_sphere_specs(rng),
                anatomy_references=True,
            )
            save_subject(images, {**params, "split": split}, folder, subject_id)
            seconds = params["seconds_simulation"]
            print(f"{subject_id}: {params['group']}, {len(params['lesions'])} spheres, {seconds:.0f} s")
        for drf in DOSES:
            pet = f"{subject_id}/{subject_id}_pet_drf{drf}.nii.gz"
            studies.append({"id": f"{subject_id}_drf{drf}", "pet": pet, "mri": f"{subject_id}/{subject_id}_t1.nii.gz"})
    (folder / "studies.json").write_text(json.dumps(studies, indent=1))
    mri_free = [{k: v for k, v in s.items() if k != "mri"} for s in studies]
    (folder / "studies_mri_free.json").write_text(json.dumps(mri_free, indent=1))


def _studies(folder: Path) -> list[dict]:
    return json.loads((folder / "studies.json").read_text())


def gaussian_filter(folder: Path, output_dir: Path) -> None:
    """The Gaussian post-filter of every study, written like inference writes its output."""
    import torch
    from monai.transforms import GaussianSmooth

    from scripts.constants import fwhm_to_sigma

    for study in _studies(folder):
        image = nib.load(folder / study["pet"])
        drf = int(study["id"].rsplit("drf", 1)[1])
        spacing = image.header.get_zooms()[:3]
        sigma = [fwhm_to_sigma(GAUSSIAN_FWHM_MM[drf]) / float(s) for s in spacing]
        data = torch.as_tensor(np.asarray(image.dataobj, dtype=np.float32))[None]
        filtered = np.asarray(GaussianSmooth(sigma)(data))[0]
        path = output_dir / study["id"] / f"{study['id']}_enhanced.nii.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(filtered.astype(np.float32), image.affine), path)


def enhanced_path(folder: Path, method: str, study: dict) -> Path:
    """Where a method's output of a study is (the low-dose input itself for ``low_dose``)."""
    if method == "low_dose":
        return folder / study["pet"]
    seeded = folder / "enhanced" / method / "seed0" / study["id"] / f"{study['id']}_enhanced.nii.gz"
    plain = folder / "enhanced" / method / study["id"] / f"{study['id']}_enhanced.nii.gz"
    return seeded if seeded.exists() else plain


def _load(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj, dtype=np.float64)


def score_study(folder: Path, study: dict, methods: list[str]) -> tuple[list[dict], list[dict]]:
    """Per-sphere and per-study rows of every method for one study (references loaded once)."""
    subject_id, drf = study["id"].rsplit("_drf", 1)
    base = folder / subject_id / subject_id
    params = json.loads(Path(f"{base}_params.json").read_text())
    ref = _load(Path(f"{base}_pet_sd_noisefree.nii.gz"))
    free = _load(Path(f"{base}_pet_lesionfree_noisefree.nii.gz"))
    anatomy = _load(Path(f"{base}_pet_anatomy_noisefree.nii.gz"))
    lesions = _load(Path(f"{base}_lesion_mask.nii.gz")).astype(np.int32)
    brain = _load(Path(f"{base}_brain_mask.nii.gz")) > 0
    labels = _load(Path(f"{base}_labels.nii.gz")).astype(np.int32)
    affine = nib.load(f"{base}_labels.nii.gz").affine
    spacing = np.abs(np.diag(affine)[:3])
    rois = recovery.lesion_rois(lesions, brain, spacing)
    background = recovery.background_rois(lesions, brain, spacing)
    common = {"subject": subject_id, "drf": int(drf), "group": params["group"]}
    sphere_rows, study_rows = [], []
    for method in methods:
        image = _load(enhanced_path(folder, method, study))
        for sphere in params["lesions"]:
            scores = recovery.contrast_recovery(image, ref, free, *rois[sphere["index"]])
            sphere_rows.append({"method": method, **common, **{k: sphere[k] for k in ("index", "kind", "diameter_mm")}})
            sphere_rows[-1].update(location=sphere["location"], **scores)
        het = recovery.heterogeneity_retention(image, ref, anatomy, brain, lesions, spacing)
        study_rows.append(
            {
                "method": method,
                **common,
                "bv_pct": recovery.background_variability(image, ref, background),
                "het_amplitude": het["amplitude"],
                "het_correlation": het["correlation"],
                "psnr": metrics.masked_psnr(image, ref, brain),
                "abs_suvr_err_pct": abs(metrics.suvr_bias(image, ref, labels, affine)),
            }
        )
    return sphere_rows, study_rows


def departure_flags(folder: Path, study: dict, method: str, threshold: float) -> dict:
    """Validate the departure map of ``method``'s output (``scripts.consistency.restore_significant_residual``).

    Returns the study's spheres >= 10 mm that the method shrank by more than 20 % (recovery < 0.8) and how many of
    them the map flags (its maximum in the sphere >= ``threshold``), and the false regions: connected regions of the
    map >= ``threshold`` in the brain, farther than 8 mm from every sphere, at least as large as an 8 mm sphere.
    """
    import torch
    from scipy import ndimage

    from scripts.consistency import restore_significant_residual

    subject_id = study["id"].rsplit("_drf", 1)[0]
    base = folder / subject_id / subject_id
    low_dose = nib.load(folder / study["pet"])
    spacing = [float(v) for v in low_dose.header.get_zooms()[:3]]
    image = torch.as_tensor(_load(enhanced_path(folder, method, study)), dtype=torch.float32)[None]
    _, departure = restore_significant_residual(
        image, torch.as_tensor(_load(folder / study["pet"]))[None], spacing, threshold
    )
    flagged = departure[0].numpy() >= threshold
    lesions = _load(Path(f"{base}_lesion_mask.nii.gz")).astype(np.int32)
    brain = _load(Path(f"{base}_brain_mask.nii.gz")) > 0
    far = ndimage.distance_transform_edt(lesions == 0, sampling=spacing) > recovery.LESION_MARGIN_MM
    regions, count = ndimage.label(flagged & brain & far)
    sizes = np.bincount(regions.ravel())[1:] * float(np.prod(spacing))
    return {"flagged": flagged, "lesions": lesions, "false_regions": int(np.sum(sizes >= np.pi / 6 * 8.0**3))}


def print_departure_validation(folder: Path, method: str, threshold: float, sphere_rows: list[dict]) -> None:
    """Per dose: the shrunk spheres >= 10 mm the departure map flags, and the false regions per study."""
    shrunk = {(r["subject"], r["drf"], r["index"]) for r in sphere_rows if r["method"] == method}
    shrunk = {k for k in shrunk if _row(sphere_rows, method, *k)["recovery"] < 0.8}
    print(f"\ndeparture map of {method} (>= {threshold} noise SDs)")
    print(
        "| dose | spheres >= 10 mm shrunk > 20 % | flagged | false regions per study (mean, max) |\n|---|---|---|---|"
    )
    for drf in DOSES:
        hits, total, false = 0, 0, []
        for study in (s for s in _studies(folder) if s["id"].endswith(f"_drf{drf}")):
            result = departure_flags(folder, study, method, threshold)
            subject_id = study["id"].rsplit("_drf", 1)[0]
            for key in (k for k in shrunk if k[0] == subject_id and k[1] == drf):
                total += 1
                hits += bool(result["flagged"][result["lesions"] == key[2]].any())
            false.append(result["false_regions"])
        print(
            f"| 1/{drf} | {total} | {hits} ({100 * hits / max(total, 1):.0f} %) | {np.mean(false):.1f}, {max(false)} |"
        )


def _row(rows: list[dict], method: str, subject: str, drf: int, index: int) -> dict:
    return next(r for r in rows if (r["method"], r["subject"], r["drf"], r["index"]) == (method, subject, drf, index))


def _mean(rows: list[dict], key: str, **where) -> float:
    values = [r[key] for r in rows if all(r[k] == v for k, v in where.items())]
    return float(np.mean(values)) if values else float("nan")


def print_tables(sphere_rows: list[dict], study_rows: list[dict], methods: list[str], by_group: bool) -> None:
    """One Markdown table per dose: a row per method (and group), recovery per size and kind, then the costs."""
    groups = ("CN", "AD") if by_group else (None,)
    for drf in sorted({r["drf"] for r in study_rows}):
        sizes = " | ".join(f"{k} {d:g}" for k in ("hot", "cold") for d in DIAMETERS)
        print(f"\n1/{drf} dose: contrast recovery per sphere diameter (mm), then per-study means")
        print(f"| method | group | {sizes} | signed err % (>=10 mm) | BV % | het amp | het R | PSNR | abs SUVR err % |")
        print("|---" * (2 + 2 * len(DIAMETERS) + 6) + "|")
        for method in methods:
            for group in groups:
                where = {"method": method, "drf": drf, **({"group": group} if group else {})}
                cells = [
                    _recovery(sphere_rows, kind=k, diameter_mm=d, **where) for k in ("hot", "cold") for d in DIAMETERS
                ]
                large = _recovery(sphere_rows, large=True, **where)
                costs = [_mean(study_rows, k, **where) for k in ("bv_pct", "het_amplitude", "het_correlation")]
                costs += [_mean(study_rows, k, **where) for k in ("psnr", "abs_suvr_err_pct")]
                row = [method, group or "all"] + [f"{c:.2f}" for c in cells]
                row += [f"{100 * (large - 1):+.0f}"] + [f"{c:.2f}" for c in costs]
                print("| " + " | ".join(row) + " |")


def _recovery(sphere_rows: list[dict], large: bool = False, **where) -> float:
    """Pooled recovery of the spheres matching ``where`` (``large``: diameters >= 10 mm only)."""
    rows = [
        r for r in sphere_rows if all(r[k] == v for k, v in where.items()) and (r["diameter_mm"] >= 10 or not large)
    ]
    return recovery.pooled_recovery(rows)


def plot(sphere_rows: list[dict], study_rows: list[dict], methods: list[str], path: str) -> None:
    """Recovery against diameter (hot, cold; per dose) and mean recovery (>= 10 mm) against background variability."""
    from scripts.plotting import new_figure, save_figure

    doses = sorted({r["drf"] for r in study_rows})
    figure, axes = new_figure(len(doses), 3, width=4.0, height=3.2)
    for row, drf in enumerate(doses):
        for column, kind in enumerate(("hot", "cold")):
            axis = axes[row, column]
            for method in methods:
                values = [_recovery(sphere_rows, method=method, drf=drf, kind=kind, diameter_mm=d) for d in DIAMETERS]
                axis.plot(DIAMETERS, values, marker="o", label=method)
            axis.axhline(1.0, color="grey", lw=0.8, ls="--")
            axis.set(title=f"{kind} spheres, 1/{drf} dose", xlabel="diameter (mm)", ylabel="contrast recovery")
        axis = axes[row, 2]
        for method in methods:
            where = {"method": method, "drf": drf}
            axis.scatter(
                _mean(study_rows, "bv_pct", **where), _recovery(sphere_rows, large=True, **where), label=method
            )
        axis.set(title=f"1/{drf} dose", xlabel="background variability (%)", ylabel="mean recovery, >= 10 mm")
        axis.legend(fontsize=7)
    axes[0, 0].legend(fontsize=7)
    figure.tight_layout()
    save_figure(figure, path)


def score(
    folder: Path, methods: list[str], by_group: bool, plot_path: str | None, departure: list[str], threshold: float
) -> None:
    """Score every study of the split, write ``scores_spheres.csv`` / ``scores_studies.csv``, print the tables."""
    sphere_rows, study_rows = [], []
    for study in _studies(folder):
        spheres, studies = score_study(folder, study, methods)
        sphere_rows += spheres
        study_rows += studies
    for name, rows in (("spheres", sphere_rows), ("studies", study_rows)):
        with open(folder / f"scores_{name}.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    subjects = sorted({r["subject"] for r in study_rows})
    print(f"{folder}: {len(subjects)} subjects, {len(sphere_rows) // len(methods)} sphere scores per method")
    print_tables(sphere_rows, study_rows, methods, by_group)
    if plot_path:
        plot(sphere_rows, study_rows, methods, plot_path)
        print(f"plot: {plot_path}")
    for method in departure:
        print_departure_validation(folder, method, threshold, sphere_rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=("simulate", "enhance", "score"))
    parser.add_argument("--out", default=os.path.join(REPO, "data", "recovery"), help="benchmark folder")
    parser.add_argument("--split", choices=tuple(SPLIT_SEEDS), default="validation")
    parser.add_argument("--subjects", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (simulate)")
    parser.add_argument("--method", default="m2diff", help="enhance: m2diff, m2diff_mri_free or gaussian_filter")
    parser.add_argument("--name", default=None, help="enhance: output name (default the method)")
    parser.add_argument("--methods", nargs="+", default=["low_dose", "gaussian_filter", "m2diff_mri_free", "m2diff"])
    parser.add_argument("--by_group", action="store_true")
    parser.add_argument("--plot", default=None, help="score: PNG path of the recovery plots")
    parser.add_argument("--departure", nargs="*", default=[], help="score: validate the departure map of these methods")
    parser.add_argument("--significance", type=float, default=3.5, help="score: the departure map's threshold (SDs)")
    parser.add_argument("--override", nargs=argparse.REMAINDER, default=[], help="enhance: --key value for inference")
    args = parser.parse_args()
    folder = Path(args.out) / args.split
    if args.step == "simulate":
        simulate(Path(args.out), args.split, args.subjects, args.threads)
    elif args.step == "enhance":
        output_dir = folder / "enhanced" / (args.name or args.method)
        if args.method == "gaussian_filter":
            gaussian_filter(folder, output_dir)
        else:
            datalist = "studies_mri_free.json" if args.method == "m2diff_mri_free" else "studies.json"
            studies = [{**s, **{k: str(folder / s[k]) for k in ("pet", "mri") if k in s}} for s in _studies(folder)]
            if datalist == "studies_mri_free.json":
                studies = [{k: v for k, v in s.items() if k != "mri"} for s in studies]
            output_dir.mkdir(parents=True, exist_ok=True)
            enhance(studies, str(output_dir), 0, parse_overrides(args.override))
    else:
        score(folder, args.methods, args.by_group, args.plot, args.departure, args.significance)


if __name__ == "__main__":
    main()
