"""Cohort generation: per-subject simulation, NIfTI/JSON output, train/validation/test datalist, resumability.

Every subject is simulated from its own seed (``SeedSequence([seed, index])``), so a subject's files do not depend on
which other subjects were generated, and a rerun skips subjects whose ``params.json`` (written last) exists.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .acquisition import Scanner, ScannerConfig, downsample_2x, log_uniform
from .activity import absolute_scale, attenuation_map, relative_uptake
from .anatomy import load_template_anatomy, mri_appearance, warp_anatomy, warp_anatomy_fine
from .atrophy import apply_atrophy, draw_atrophy
from .files import atomic_path
from .head import add_face_and_neck, extend_mu, whole_head_t1
from .heterogeneity import uptake_heterogeneity
from .lesions import draw_lesions
from .spheres import draw_spheres

__all__ = [
    "simulate_subject",
    "save_subject",
    "assign_groups_and_splits",
    "subject_record",
    "generate_cohort",
    "write_json_atomic",
    "save_nifti_atomic",
]

logger = logging.getLogger(__name__)


def write_json_atomic(obj, path: str | os.PathLike) -> None:
    """Write JSON through a temporary file and ``os.replace``."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2))


def save_nifti_atomic(array: np.ndarray, affine: np.ndarray, path: str | os.PathLike, dtype=np.float32) -> None:
    """Save a NIfTI (deterministic gzip: no timestamp) through a temporary file and ``os.replace``."""
    import gzip

    import nibabel as nib

    path = Path(path)
    img = nib.Nifti1Image(np.asarray(array, dtype=dtype), np.asarray(affine, dtype=np.float64))
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_qform(img.affine, code=1)
    img.header.set_sform(img.affine, code=1)
    with atomic_path(path) as tmp:
        tmp.write_bytes(gzip.compress(img.to_bytes(), compresslevel=4, mtime=0))


def simulate_subject(
    seed: int | Sequence[int],
    ad_severity: float = 0.0,
    dose_reduction_factors: Sequence[float] = (4, 20, 50, 100),
    sim_voxel_mm: int = 2,
    counts_range: tuple[float, float] = (5e7, 2e8),
    psf_fwhm_range_mm: tuple[float, float] = (3.5, 7.0),
    scanner: Scanner | None = None,
    scanner_config: ScannerConfig | None = None,
    cache_dir: str | os.PathLike | None = None,
    counts: float | None = None,
    warp: bool = True,
    heterogeneity_range: Sequence[float] | None = (0.05, 0.15),
    heterogeneity_scales_mm: Sequence[float] = (8.0, 30.0),
    lesions: bool = False,
    whole_head: bool = False,
    face_neck: bool = True,
    atrophy: bool = True,
    extra_drf: float | None = None,
    noise_realizations: int = 0,
    spheres: Sequence[dict] | None = None,
    anatomy_references: bool = False,
) -> tuple[dict[str, np.ndarray], dict]:
    """Simulate one subject: warped anatomy, T1, true activity, SD / LD / noise-free OSEM reconstructions.

    The features added after the first cohort (atrophy, face and neck, heterogeneity, lesions, extra DRF) draw from
    their own child seeds, so with all of them off the subject is the one the first simulator made from this seed,
    and switching one of them does not change the draws of the others (a lesion does not change the T1).

    Args:
        seed: integer or integer sequence (numpy SeedSequence entropy) for this subject.
        ad_severity: 0 for a cognitively normal subject, > 0 for AD (1 = full published contrast).
        dose_reduction_factors: dose reduction factors simulated from the same acquisition.
        sim_voxel_mm: simulation grid (2, or 1 to avoid the inverse crime properly; slower).
        counts_range: range of standard-dose true counts (log-uniform).
        psf_fwhm_range_mm: range of the true PSF FWHM.
        scanner: a prebuilt :class:`Scanner` (reuse across subjects; must match ``sim_voxel_mm``).
        scanner_config: settings used when ``scanner`` is None.
        cache_dir: template cache folder.
        counts: fixed standard-dose counts (overrides ``counts_range``; benchmarks).
        warp: apply the random anatomy warp (False: template anatomy; benchmarks).
        heterogeneity_range: range of the SD of the multiplicative uptake field (None: no field).
        heterogeneity_scales_mm: range of its correlation lengths (Gaussian FWHM).
        lesions: add 1-3 PET-only hot or cold lesions.
        whole_head: return a whole-head T1 (skull, scalp, face, neck) instead of a skull-stripped one.
        face_neck: extend the head (mu-map, scalp uptake, whole-head T1) with a face and neck below the brain.
        atrophy: cortical thinning and ventricular enlargement (AD: with severity; CN: mild, age-like).
        extra_drf: one more low-dose image at this dose reduction factor (key ``pet_drf_random``).
        noise_realizations: this many more low-dose images per dose reduction factor, each from its own noise seed
            (keys ``pet_drf{K}_noise{i}``): independent repeats of the same acquisition, for uncertainty benchmarks.
            They draw after everything else, so the other images do not change.
        spheres: PET-only spheres for contrast recovery (:func:`pet_simulator.spheres.recovery_sphere_specs`), placed
            from a seed of their own in place of the random lesions (``lesion_mask`` and ``params["lesions"]``).
        anatomy_references: also reconstruct the noise-free data of the activity without lesions
            (``pet_lesionfree_noisefree``) and without lesions and heterogeneity (``pet_anatomy_noisefree``: the image
            the anatomy alone predicts), for contrast recovery and heterogeneity scoring.

    Returns:
        (images, params): images on the 2 mm grid: ``t1``, ``pet_truth``, ``pet_sd``, ``pet_sd_noisefree``,
        ``pet_drf{K}``, ``labels``, ``brain_mask``, ``lesion_mask``, ``affine`` (and ``pet_drf_random``); params is a
        JSON-serialisable dict.
    """
    t0 = time.perf_counter()
    ss = np.random.SeedSequence(seed)
    warp_seed, rng_seed = ss.generate_state(2)
    rng = np.random.default_rng(rng_seed)
    rng_atrophy, rng_head, rng_field, rng_lesion, rng_extra = (np.random.default_rng(c) for c in ss.spawn(5))
    template2 = load_template_anatomy(2, cache_dir)
    shape2 = template2["t1"].shape
    if sim_voxel_mm == 2:
        anat = warp_anatomy(template2, int(warp_seed)) if warp else dict(template2)
    else:
        template1 = load_template_anatomy(1, cache_dir)
        anat = warp_anatomy_fine(template1, shape2, int(warp_seed)) if warp else dict(template1)
    feature_params = {}
    if atrophy:
        feature_params["atrophy"] = draw_atrophy(ad_severity, rng_atrophy)
        anat = apply_atrophy(anat, **feature_params["atrophy"])
    anat2 = anat if sim_voxel_mm == 2 else _to_recon_grid(anat, template2["affine"])
    if scanner is None:
        scanner = Scanner(shape2, sim_voxel_mm, scanner_config)
    elif scanner.sim_voxel_mm != sim_voxel_mm:
        raise ValueError(f"scanner simulates at {scanner.sim_voxel_mm} mm, requested sim_voxel_mm={sim_voxel_mm}")
    step = 2 if sim_voxel_mm == 1 else 1  # 2 mm voxel j is 1 mm voxel 2j
    rng_mri = copy.deepcopy(rng)  # the MRI appearance draws, reused for a whole-head T1
    t1, mri_params = mri_appearance(anat2["t1"], anat2["brain_mask"], rng)
    mu_sim, tissue, mu_params = attenuation_map(anat["brain_mask"], float(sim_voxel_mm), rng)
    if face_neck:
        head, feature_params["head"] = add_face_and_neck(tissue, anat["brain_mask"], anat["affine"], rng_head)
        mu_sim = extend_mu(mu_sim, tissue, head)
        tissue = head
    if whole_head:
        t1_head = whole_head_t1(anat2["t1"], anat2["brain_mask"], tissue[::step, ::step, ::step], rng_head)
        t1, mri_params = mri_appearance(t1_head, anat2["brain_mask"], rng_mri)
    rel, uptake_params = relative_uptake(anat, rng, ad_severity=ad_severity, skull_scalp=tissue)
    rel_anatomy = rel
    if heterogeneity_range is not None:
        field, feature_params["heterogeneity"] = uptake_heterogeneity(
            anat, rng_field, tuple(heterogeneity_range), tuple(heterogeneity_scales_mm)
        )
        rel = rel * field
    references = dict(zip(ANATOMY_REFERENCE_KEYS, (rel, rel_anatomy)))
    lesion_mask = np.zeros(shape2, dtype=np.uint8)
    if spheres:
        rng_spheres = np.random.default_rng(np.random.SeedSequence(ss.entropy, spawn_key=(_SPHERE_SEED_KEY,)))
        factor, mask_sim, feature_params["lesions"] = draw_spheres(
            anat["gm"], anat["wm"], anat["labels"], anat["affine"], spheres, rng_spheres
        )
    elif lesions:
        factor, mask_sim, feature_params["lesions"] = draw_lesions(anat["gm"], anat["wm"], anat["affine"], rng_lesion)
    if spheres or lesions:
        rel = rel * factor
        lesion_mask = np.ascontiguousarray(mask_sim[::step, ::step, ::step])
    scale = absolute_scale(rng)
    activity = rel * scale["bq_ml_per_unit"]
    if sim_voxel_mm == 2:
        truth, mu_recon = activity, mu_sim
    else:
        truth = downsample_2x(activity, shape2)
        mu_recon = downsample_2x(mu_sim, shape2)
    fwhm = float(rng.uniform(*psf_fwhm_range_mm))
    fwhm_xyz = (fwhm, fwhm, fwhm * float(rng.uniform(0.9, 1.15)))
    sd_counts = float(counts) if counts is not None else log_uniform(rng, *counts_range)
    data = scanner.expected_data(activity, mu_sim, mu_recon, fwhm_xyz, sd_counts)
    recon_fwhm = scanner.config.recon_psf_ratio * fwhm
    t_sim = time.perf_counter() - t0
    images = {
        "t1": t1,
        "pet_truth": truth.astype(np.float32),
        "labels": anat2["labels"].astype(np.int16),
        "brain_mask": anat2["brain_mask"].astype(np.uint8),
        "lesion_mask": lesion_mask,
        "affine": template2["affine"],
    }
    images["pet_sd_noisefree"] = scanner.reconstruct(data["prompts"], data, recon_fwhm, 1.0)
    for key, reference in references.items() if anatomy_references else ():
        reference_data = scanner.expected_data(
            reference * scale["bq_ml_per_unit"], mu_sim, mu_recon, fwhm_xyz, sd_counts
        )
        images[key] = scanner.reconstruct(reference_data["prompts"], reference_data, recon_fwhm, 1.0)
    images["pet_sd"] = scanner.reconstruct(scanner.poisson(data["prompts"], rng, 1.0), data, recon_fwhm, 1.0)
    for drf in dose_reduction_factors:
        noisy = scanner.poisson(data["prompts"], rng, float(drf))
        images[f"pet_drf{_drf_name(drf)}"] = scanner.reconstruct(noisy, data, recon_fwhm, float(drf))
    if extra_drf is not None:
        t_extra = time.perf_counter()
        noisy = scanner.poisson(data["prompts"], rng_extra, float(extra_drf))
        images["pet_drf_random"] = scanner.reconstruct(noisy, data, recon_fwhm, float(extra_drf))
        feature_params["seconds_drf_random"] = time.perf_counter() - t_extra
        feature_params["drf_random"] = float(extra_drf)
        feature_params["counts_drf_random"] = sd_counts / float(extra_drf)
    for i, child in enumerate(ss.spawn(int(noise_realizations))):  # children after the five feature seeds
        rng_repeat = np.random.default_rng(child)
        for drf in dose_reduction_factors:
            noisy = scanner.poisson(data["prompts"], rng_repeat, float(drf))
            images[f"pet_drf{_drf_name(drf)}_noise{i}"] = scanner.reconstruct(noisy, data, recon_fwhm, float(drf))
    seed_list = [int(s) for s in np.atleast_1d(np.asarray(seed))]
    params = {
        "seed": seed_list,
        "group": "AD" if ad_severity > 0 else "CN",
        "ad_severity": float(ad_severity),
        "counts": sd_counts,
        "counts_per_drf": {str(_drf_name(d)): sd_counts / float(d) for d in dose_reduction_factors},
        "dose_reduction_factors": [_drf_name(d) for d in dose_reduction_factors],
        "psf_fwhm_mm": fwhm,
        "psf_fwhm_xyz_mm": list(fwhm_xyz),
        "psf_tail_fraction": scanner.config.psf_tail_fraction,
        "recon_psf_fwhm_mm": recon_fwhm,
        "sim_voxel_mm": sim_voxel_mm,
        "recon_voxel_mm": 2.0,
        "osem_iterations": scanner.config.n_iterations,
        "osem_subsets": scanner.config.n_subsets,
        "n_angles": scanner.config.n_angles,
        "post_filter_mm": scanner.config.post_filter_mm,
        "scatter_fraction": scanner.config.scatter_fraction,
        "randoms_fraction": scanner.config.randoms_fraction,
        "calibration_counts_per_bq_ml": data["calibration"],
        "units": "Bq/ml",
        "decay_correction": "START",
        "activity_units_note": "activity concentrations decay-corrected to the scan start",
        "scan_start_after_injection_s": scale["uptake_time_s"],
        "radiopharmaceutical": "Fluorodeoxyglucose F^18^",
        **scale,
        **mu_params,
        **uptake_params,
        **mri_params,
        "t1_whole_head": bool(whole_head),
        "face_neck": bool(face_neck),
        "has_lesions": bool(lesions),
        "lesions": feature_params.pop("lesions", []),
        **feature_params,
        "seconds_simulation": time.perf_counter() - t0,
        "seconds_forward_model": t_sim,
    }
    return images, params


#: the noise-free reconstructions of ``anatomy_references`` (written by :func:`save_subject` when present)
ANATOMY_REFERENCE_KEYS = ("pet_lesionfree_noisefree", "pet_anatomy_noisefree")
#: spawn key of the spheres' seed: far beyond the children that features and noise repeats spawn
_SPHERE_SEED_KEY = 1_000_003


def _to_recon_grid(anat: dict[str, np.ndarray], affine2: np.ndarray) -> dict[str, np.ndarray]:
    """The 1 mm anatomy on the 2 mm grid (tissue maps averaged, labels and mask by the 2 mm voxel centres)."""
    shape2 = tuple((n + 1) // 2 for n in anat["t1"].shape)
    anat2 = {k: downsample_2x(anat[k], shape2) for k in ("t1", "gm", "wm", "csf")}
    anat2["labels"] = np.ascontiguousarray(anat["labels"][::2, ::2, ::2])
    anat2["brain_mask"] = (downsample_2x(anat["brain_mask"].astype(np.float32), shape2) > 0.5).astype(np.uint8)
    anat2["affine"] = affine2.copy()
    return anat2


def _drf_name(drf: float) -> int | float:
    return int(drf) if float(drf).is_integer() else float(drf)


def subject_files(subject_id: str, dose_reduction_factors: Sequence[float], drf_random: bool = False) -> dict[str, str]:
    """Record keys -> file names (relative to the cohort folder) for one subject."""
    keys = ["t1", "pet_truth", "pet_sd", "pet_sd_noisefree"]
    keys += [f"pet_drf{_drf_name(d)}" for d in dose_reduction_factors] + (["pet_drf_random"] if drf_random else [])
    keys += ["labels", "brain_mask", "lesion_mask"]
    files = {k: f"{subject_id}/{subject_id}_{k}.nii.gz" for k in keys}
    files["params"] = f"{subject_id}/{subject_id}_params.json"
    return files


def save_subject(images: dict, params: dict, out_dir: str | os.PathLike, subject_id: str) -> dict[str, str]:
    """Write a subject's NIfTI files and, last, its params.json (the completion marker)."""
    out_dir = Path(out_dir)
    (out_dir / subject_id).mkdir(parents=True, exist_ok=True)
    files = subject_files(subject_id, params["dose_reduction_factors"], "pet_drf_random" in images)
    files.update({k: f"{subject_id}/{subject_id}_{k}.nii.gz" for k in ANATOMY_REFERENCE_KEYS if k in images})
    dtypes = {"labels": np.int16, "brain_mask": np.uint8, "lesion_mask": np.uint8}
    for key, rel in files.items():
        if key == "params":
            continue
        save_nifti_atomic(images[key], images["affine"], out_dir / rel, dtype=dtypes.get(key, np.float32))
    write_json_atomic({"id": subject_id, **params}, out_dir / files["params"])
    return files


def _split_sizes(num_subjects: int, split_fractions: Sequence[float]) -> dict[str, int]:
    """Subjects per split: every split with a positive fraction gets at least one subject."""
    names = ("training", "validation", "test")
    needed = sum(f > 0 for f in split_fractions)
    if num_subjects < needed:
        raise ValueError(
            f"num_subjects={num_subjects} is too few for split_fractions {list(split_fractions)}: every split with a "
            f"positive fraction needs a subject, so at least {needed} subjects"
        )
    sizes = {n: (max(1, int(round(f * num_subjects))) if f > 0 else 0) for n, f in zip(names[1:], split_fractions[1:])}
    sizes = {"training": num_subjects - sum(sizes.values()), **sizes}
    while split_fractions[0] > 0 and sizes["training"] < 1:  # tiny cohorts: give training one back
        largest = max(("validation", "test"), key=lambda n: sizes[n])
        sizes[largest] -= 1
        sizes["training"] += 1
    return sizes


def assign_groups_and_splits(
    num_subjects: int, seed: int, ad_fraction: float, split_fractions: Sequence[float], severity_range=(0.3, 1.2)
) -> list[dict]:
    """Deterministic group, AD severity and split per subject, stratified by group.

    Every split with a positive fraction gets at least one subject (``ValueError`` when there are too few subjects).

    Returns:
        list of dicts with ``index``, ``id``, ``group``, ``ad_severity``, ``split``.
    """
    if len(split_fractions) != 3 or abs(sum(split_fractions) - 1) > 1e-6 or min(split_fractions) < 0:
        raise ValueError(f"split_fractions must be 3 fractions >= 0 summing to 1, got {list(split_fractions)}")
    sizes = _split_sizes(num_subjects, split_fractions)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 999_983]))
    n_ad = int(round(ad_fraction * num_subjects))
    is_ad = np.zeros(num_subjects, dtype=bool)
    is_ad[rng.permutation(num_subjects)[:n_ad]] = True
    severities = rng.uniform(*severity_range, size=num_subjects)
    ad_sizes = {k: int(round(v * n_ad / max(num_subjects, 1))) for k, v in sizes.items()}
    ad_sizes["training"] = n_ad - ad_sizes["validation"] - ad_sizes["test"]
    split = np.empty(num_subjects, dtype=object)
    for group_mask, group_sizes in ((is_ad, ad_sizes), (~is_ad, {k: sizes[k] - ad_sizes[k] for k in sizes})):
        idx = rng.permutation(np.flatnonzero(group_mask))
        start = 0
        for name in ("training", "validation", "test"):
            split[idx[start : start + group_sizes[name]]] = name
            start += group_sizes[name]
    return [
        {
            "index": i,
            "id": f"sub-{i + 1:04d}",
            "group": "AD" if is_ad[i] else "CN",
            "ad_severity": float(round(severities[i], 4)) if is_ad[i] else 0.0,
            "split": str(split[i]),
        }
        for i in range(num_subjects)
    ]


def plan_features(
    plans: list[dict],
    seed: int,
    whole_head_fraction: float = 0.5,
    lesion_fraction: float = 0.3,
    random_drf_range: Sequence[float] | None = (4.0, 100.0),
) -> list[dict]:
    """Add per-subject feature choices to the plans: ``t1_whole_head``, ``has_lesions``, ``drf_random``.

    Each subject draws from ``SeedSequence([seed, index, 31337])``, so its choices depend neither on the cohort size
    nor on the other subjects; the fractions only move thresholds (raising one adds subjects, never swaps them).
    """
    out = []
    for plan in plans:
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(plan["index"]), 31337]))
        u_head, u_lesion = rng.random(2)
        drf = log_uniform(rng, *random_drf_range) if random_drf_range is not None else None
        out.append(
            {
                **plan,
                "t1_whole_head": bool(u_head < whole_head_fraction),
                "has_lesions": bool(u_lesion < lesion_fraction),
                "drf_random": round(drf, 2) if drf is not None else None,
            }
        )
    return out


def subject_record(plan: dict, dose_reduction_factors: Sequence[float]) -> dict:
    """Datalist record of one subject (paths relative to the cohort folder)."""
    drfs = [_drf_name(d) for d in dose_reduction_factors]
    drf_random = plan.get("drf_random")
    record = {
        "id": plan["id"],
        "group": plan["group"],
        "ad_severity": plan["ad_severity"],
        "drfs": drfs,
        "t1_whole_head": bool(plan.get("t1_whole_head", False)),
        "has_lesions": bool(plan.get("has_lesions", False)),
        **subject_files(plan["id"], drfs, drf_random is not None),
    }
    if drf_random is not None:
        record["drf_random"] = drf_random
    return record


def _write_datalist(out_dir: Path, plans: list[dict], done: set[str], dose_reduction_factors) -> None:
    datalist = {"training": [], "validation": [], "test": []}
    for plan in plans:
        if plan["id"] in done:
            datalist[plan["split"]].append(subject_record(plan, dose_reduction_factors))
    datalist["dose_reduction_factors"] = [_drf_name(d) for d in dose_reduction_factors]
    datalist["num_subjects_planned"] = len(plans)
    datalist["complete"] = len(done) == len(plans)
    write_json_atomic(datalist, out_dir / "datalist.json")


PLAN_KEYS = ("group", "ad_severity", "t1_whole_head", "has_lesions", "drf_random")


def _sync_finished_subject(path: Path, plan: dict) -> None:
    """Check a finished subject against its plan and record the plan's split in its params.json.

    A changed split (other ``split_fractions`` or ``num_subjects``) is written into ``params.json``; a subject that
    was simulated as something else (group, severity, whole-head T1, lesions, random DRF) raises ``ValueError``.
    """
    params = json.loads(path.read_text())
    for key in PLAN_KEYS:
        if params.get(key) != plan[key]:
            raise ValueError(
                f"{path}: simulated with {key}={params.get(key)!r} but the cohort settings now give {plan[key]!r}; "
                "rerun with the settings of this cohort (cohort_config.json) or use a new output_dir"
            )
    if params.get("split") != plan["split"]:
        params["split"] = plan["split"]
        write_json_atomic(params, path)


def generate_cohort(
    output_dir: str | os.PathLike,
    num_subjects: int = 60,
    seed: int = 12345,
    dose_reduction_factors: Sequence[float] = (4, 20, 50, 100),
    split_fractions: Sequence[float] = (0.7, 0.1, 0.2),
    ad_fraction: float = 0.3,
    ad_severity_range: Sequence[float] = (0.3, 1.2),
    sim_voxel_mm: int = 2,
    counts_range: Sequence[float] = (5e7, 2e8),
    psf_fwhm_range_mm: Sequence[float] = (3.5, 7.0),
    scanner_config: ScannerConfig | None = None,
    num_threads: int = 1,
    num_workers: int = 1,
    cache_dir: str | os.PathLike | None = None,
    qc: bool = True,
    progress: bool = True,
    whole_head_fraction: float = 0.5,
    lesion_fraction: float = 0.3,
    random_drf_range: Sequence[float] | None = (4.0, 100.0),
    heterogeneity_range: Sequence[float] | None = (0.05, 0.15),
    heterogeneity_scales_mm: Sequence[float] = (8.0, 30.0),
    atrophy: bool = True,
    face_neck: bool = True,
) -> Path:
    """Generate (or resume) a simulated cohort and its ``datalist.json``.

    The datalist is rewritten after every subject with the completed subjects only (``"complete": false`` until all
    are done), so a partial cohort is usable. Finished subjects are checked against the plan; their recorded split
    follows the current ``split_fractions``.

    Args:
        output_dir: cohort folder.
        num_subjects: number of subjects (at least one per split with a positive fraction).
        seed: cohort seed (subject i uses ``SeedSequence([seed, i])``).
        dose_reduction_factors: simulated dose reduction factors.
        split_fractions: training / validation / test fractions (by subject, stratified by group).
        ad_fraction: fraction of AD subjects.
        ad_severity_range: uniform range of AD severities.
        sim_voxel_mm: simulation grid, 2 or 1 mm.
        counts_range: standard-dose true counts range (log-uniform).
        psf_fwhm_range_mm: true PSF FWHM range.
        scanner_config: scanner settings.
        num_threads: torch threads per process.
        num_workers: worker processes (each simulates whole subjects; 1 = in this process).
        cache_dir: template cache (default ``output_dir/.cache``).
        qc: write a QC PNG per subject.
        progress: show a tqdm progress bar.
        whole_head_fraction: fraction of subjects with a whole-head T1 (the others are skull-stripped).
        lesion_fraction: fraction of subjects with PET-only lesions.
        random_drf_range: range of one extra, log-uniform dose reduction factor per subject (None: none).
        heterogeneity_range: range of the SD of the uptake random field (None: uptake constant per region).
        heterogeneity_scales_mm: range of its correlation lengths (Gaussian FWHM, mm).
        atrophy: cortical thinning and ventricular enlargement (AD with severity, CN mild).
        face_neck: face and neck below the brain (mu-map, uptake, whole-head T1).

    Returns:
        the path of ``datalist.json``.
    """
    from tqdm import tqdm

    torch.set_num_threads(int(num_threads))
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(cache_dir) if cache_dir is not None else out / ".cache"
    drfs = [_drf_name(d) for d in dose_reduction_factors]
    plans = assign_groups_and_splits(
        int(num_subjects), int(seed), float(ad_fraction), list(split_fractions), tuple(ad_severity_range)
    )
    random_drf_range = tuple(random_drf_range) if random_drf_range is not None else None
    plans = plan_features(plans, int(seed), float(whole_head_fraction), float(lesion_fraction), random_drf_range)
    features = {
        "heterogeneity_range": list(heterogeneity_range) if heterogeneity_range is not None else None,
        "heterogeneity_scales_mm": list(heterogeneity_scales_mm),
        "atrophy": bool(atrophy),
        "face_neck": bool(face_neck),
    }
    write_json_atomic(
        {
            "num_subjects": int(num_subjects),
            "seed": int(seed),
            "dose_reduction_factors": drfs,
            "split_fractions": list(split_fractions),
            "ad_fraction": ad_fraction,
            "sim_voxel_mm": sim_voxel_mm,
            "counts_range": list(counts_range),
            "psf_fwhm_range_mm": list(psf_fwhm_range_mm),
            "whole_head_fraction": whole_head_fraction,
            "lesion_fraction": lesion_fraction,
            "random_drf_range": list(random_drf_range) if random_drf_range is not None else None,
            **features,
        },
        out / "cohort_config.json",
    )
    done = set()
    for plan in plans:
        params_path = out / plan["id"] / f"{plan['id']}_params.json"
        if params_path.exists():
            _sync_finished_subject(params_path, plan)
            done.add(plan["id"])
    _write_datalist(out, plans, done, drfs)
    todo = [p for p in plans if p["id"] not in done]
    job = {
        "out": str(out),
        "seed": int(seed),
        "drfs": drfs,
        "sim_voxel_mm": int(sim_voxel_mm),
        "counts_range": tuple(counts_range),
        "psf_fwhm_range_mm": tuple(psf_fwhm_range_mm),
        "scanner_config": scanner_config,
        "cache_dir": str(cache_dir),
        "qc": qc,
        "num_threads": int(num_threads),
        **features,
    }
    load_template_anatomy(2, cache_dir)  # build the cache once before any worker starts
    if sim_voxel_mm == 1:
        load_template_anatomy(1, cache_dir)
    bar = tqdm(total=len(plans), initial=len(done), desc="simulating subjects", disable=not progress)
    if int(num_workers) <= 1:
        results = (_simulate_and_save(plan, job) for plan in todo)
        pool = None
    else:
        import multiprocessing as mp

        pool = mp.get_context("spawn").Pool(int(num_workers))
        results = pool.imap_unordered(functools.partial(_simulate_and_save, job=job), todo)
    try:
        for subject_id, seconds in results:
            done.add(subject_id)
            _write_datalist(out, plans, done, drfs)
            bar.update(1)
            logger.info("%s done in %.1f s", subject_id, seconds)
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()
    return out / "datalist.json"


_SCANNERS: dict = {}


def _scanner(job: dict) -> Scanner:
    """The job's scanner, built once per process."""
    key = (job["sim_voxel_mm"], repr(job["scanner_config"]))
    if key not in _SCANNERS:
        template = load_template_anatomy(2, job["cache_dir"])
        _SCANNERS[key] = Scanner(template["t1"].shape, job["sim_voxel_mm"], job["scanner_config"])
    return _SCANNERS[key]


def _simulate_plan(plan: dict, job: dict, **extra) -> tuple[dict[str, np.ndarray], dict]:
    """:func:`simulate_subject` for one planned subject of a cohort job (``extra``: more keyword arguments)."""
    return simulate_subject(
        [job["seed"], plan["index"]],
        ad_severity=plan["ad_severity"],
        dose_reduction_factors=job["drfs"],
        sim_voxel_mm=job["sim_voxel_mm"],
        counts_range=job["counts_range"],
        psf_fwhm_range_mm=job["psf_fwhm_range_mm"],
        scanner=_scanner(job),
        cache_dir=job["cache_dir"],
        heterogeneity_range=job["heterogeneity_range"],
        heterogeneity_scales_mm=job["heterogeneity_scales_mm"],
        lesions=plan["has_lesions"],
        whole_head=plan["t1_whole_head"],
        face_neck=job["face_neck"],
        atrophy=job["atrophy"],
        extra_drf=plan["drf_random"],
        **extra,
    )


def _simulate_and_save(plan: dict, job: dict) -> tuple[str, float]:
    """Simulate and write one subject (runs in the main process or a worker; scanners are cached per process)."""
    torch.set_num_threads(job["num_threads"])
    images, params = _simulate_plan(plan, job)
    params["split"] = plan["split"]
    params["drf_random"] = plan["drf_random"]
    out = Path(job["out"])
    if job["qc"]:
        from .qc import qc_figure

        (out / "qc").mkdir(exist_ok=True)
        title = f"{plan['id']} {params['group']} severity {params['ad_severity']:.2f}"
        title += ", whole-head T1" if params["t1_whole_head"] else ", skull-stripped T1"
        title += f", {len(params['lesions'])} lesion(s) (red)" if params["lesions"] else ""
        title += f", random DRF {plan['drf_random']}" if plan["drf_random"] is not None else ""
        qc_figure(images, out / "qc" / f"{plan['id']}_qc.png", title=title)
    save_subject(images, params, out, plan["id"])
    return plan["id"], float(params["seconds_simulation"])


def noise_repeats(
    dataset_dir: str | os.PathLike,
    subject_id: str,
    dose_reduction_factors: Sequence[float],
    realizations: int,
    scanner_config: ScannerConfig | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> dict[str, np.ndarray]:
    """A finished subject of a cohort simulated again, with ``realizations`` repeats of each low-dose acquisition.

    The subject is rebuilt from ``cohort_config.json`` and its ``params.json`` (``simulate_subject`` with
    ``noise_realizations``): keys ``pet_drf{K}_noise{i}`` hold the same acquisition with independent noise.

    Args:
        dataset_dir: the cohort folder.
        subject_id: a finished subject, e.g. ``"sub-0008"``.
        dose_reduction_factors: dose levels to repeat.
        realizations: repeats per dose level.
        scanner_config: the scanner the cohort was simulated with (default settings when None).
        cache_dir: template cache (default ``dataset_dir/.cache``).

    Raises:
        ValueError: when the rebuilt noise-free standard dose is not the saved one (another scanner or simulator).
    """
    import nibabel as nib

    out = Path(dataset_dir)
    cohort = json.loads((out / "cohort_config.json").read_text())
    params = json.loads((out / subject_id / f"{subject_id}_params.json").read_text())
    plan = {"index": params["seed"][1], "drf_random": None}
    plan.update({key: params[key] for key in ("ad_severity", "has_lesions", "t1_whole_head")})
    job = {key: cohort[key] for key in ("sim_voxel_mm", "heterogeneity_range", "heterogeneity_scales_mm")}
    job.update({key: cohort[key] for key in ("face_neck", "atrophy")})
    job.update(counts_range=tuple(cohort["counts_range"]), psf_fwhm_range_mm=tuple(cohort["psf_fwhm_range_mm"]))
    job.update(seed=params["seed"][0], drfs=[_drf_name(d) for d in dose_reduction_factors])
    job.update(scanner_config=scanner_config, cache_dir=str(cache_dir if cache_dir is not None else out / ".cache"))
    images, _ = _simulate_plan(plan, job, noise_realizations=int(realizations))
    saved_path = out / subject_id / f"{subject_id}_pet_sd_noisefree.nii.gz"
    saved = np.asarray(nib.load(saved_path).dataobj)
    if not np.allclose(images["pet_sd_noisefree"], saved, rtol=1e-3, atol=1e-3 * float(saved.max())):
        raise ValueError(f"{saved_path}: the simulator does not reproduce this subject (another scanner_config?)")
    return images
