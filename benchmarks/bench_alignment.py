"""A T1 that does not line up, or is not a T1: the registration, its checks and the fallback, measured.

Runs on the contrast-recovery cohorts (``bench_recovery.py simulate``: seed 5101 validation, 5102 test; T1s on the
PET's grid, half of them whole-head). Five steps:

1. ``cases``: per subject, T1s moved by known rigid transforms (written by changing the NIfTI affine: the T1 moves
   in the world without being resampled, as a T1 registered badly by someone else would be), and two images that
   are not T1s (T2-like: the T1's contrast inverted inside the head, CSF bright; FLAIR-like: grey matter brighter
   than white, CSF dark). Directions and axes are drawn per subject from a seed. Writes one datalist per case at
   ``<split>/alignment/<case>.json``.
2. ``checks``: the alignment and T1 checks of ``scripts.registration`` on every case, registered and as the header
   places them, without the network: their ranges per case, from which the thresholds are chosen (validation).
3. ``enhance``: one case through the bundle's inference workflow (``configs/inference.json``), the product's path;
   ``--name`` and ``--override`` run variants (``--override --register_mri false``: the header trusted).
4. ``score``: brain-masked PSNR against the noise-free standard dose per case, against the aligned run with the header
   trusted, the aligned run registered and the MRI-free mode; registration seconds and fallbacks from ``summary.json``.
5. ``time``: seconds of the registration and its checks per study, per thread count (run it on an idle machine).

    python benchmarks/bench_alignment.py cases --out data/recovery --split validation
    python benchmarks/bench_alignment.py checks --out data/recovery --split validation
    python benchmarks/bench_alignment.py enhance --out data/recovery --split test --case shift_4mm
    python benchmarks/bench_alignment.py enhance --out data/recovery --split test --case aligned \
        --name aligned_trusted --override --register_mri false
    python benchmarks/bench_alignment.py score --out data/recovery --split test
    python benchmarks/bench_alignment.py time --out data/recovery --split test --cases aligned shift_10mm_rotation_10deg
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from bench_uncertainty import REPO, enhance, parse_overrides  # puts the bundle's scripts package on the path

sys.path.insert(0, REPO)

from scripts import metrics  # noqa: E402

#: case -> (shift in mm, rotation in degrees, image): the T1 moved in the world by a rigid transform
MOVES = {
    "aligned": (0.0, 0.0),
    "shift_2mm": (2.0, 0.0),
    "shift_4mm": (4.0, 0.0),
    "shift_8mm": (8.0, 0.0),
    "rotation_5deg": (0.0, 5.0),
    "rotation_10deg": (0.0, 10.0),
    "shift_10mm_rotation_10deg": (10.0, 10.0),
    "reversed": (0.0, 180.0),
    "shift_1mm": (1.0, 0.0),  # last: adding it left the other cases' random directions as they were
}
#: cases whose image is not a T1 (on the T1's place)
CONTRASTS = ("t2_like", "flair_like")
CASES = tuple(MOVES) + CONTRASTS
DOSE = 20
SPLIT_SEEDS = {"validation": 5101, "test": 5102}


def rigid(shift_mm: float, rotation_deg: float, centre: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A 4x4 world transform: a rotation about a random axis through ``centre`` and a shift in a random direction."""
    from scipy.spatial.transform import Rotation

    axis = rng.normal(size=3)
    direction = rng.normal(size=3)
    if rotation_deg == 180.0:  # reversed: a half turn about the head's long axis (faces the wrong way)
        axis = np.array([0.0, 0.0, 1.0])
    matrix = np.eye(4)
    matrix[:3, :3] = Rotation.from_rotvec(np.radians(rotation_deg) * axis / np.linalg.norm(axis)).as_matrix()
    matrix[:3, 3] = centre - matrix[:3, :3] @ centre + shift_mm * direction / np.linalg.norm(direction)
    return matrix


def contrast(t1: np.ndarray, kind: str) -> np.ndarray:
    """A T2-like (inverted inside the head) or FLAIR-like (grey > white, CSF dark) image made from a T1."""
    head = t1 > 0.05 * np.percentile(t1, 99.5)
    if kind == "t2_like":
        return np.where(head, 1.3 * np.percentile(t1, 99) - t1, 0.0).astype(np.float32)
    white = float(np.median(t1[t1 > np.percentile(t1[head], 90)]))
    relative = t1 / white  # white matter ~1, grey ~0.75, CSF ~0.3
    flair = np.interp(relative, [0.0, 0.3, 0.5, 0.75, 1.0, 1.5], [0.0, 0.1, 0.3, 1.0, 0.7, 0.6])
    return (flair * white).astype(np.float32)


def make_cases(out: Path, split: str) -> None:
    """Write every case's MRI per subject and one datalist per case (the 1/20-dose PET)."""
    folder = out / split
    subjects = sorted(p.name for p in folder.glob("sub-*") if p.is_dir())
    if not subjects:
        raise SystemExit(f"{folder}: no subjects; run bench_recovery.py simulate --out {out} --split {split} first")
    cases_dir = folder / "alignment"
    datalists: dict[str, list] = {case: [] for case in CASES}
    for index, subject in enumerate(subjects):
        t1_image = nib.load(folder / subject / f"{subject}_t1.nii.gz")
        t1 = np.asarray(t1_image.dataobj, dtype=np.float32)
        centre = (t1_image.affine @ [*((np.array(t1.shape) - 1) / 2.0), 1.0])[:3]
        rng = np.random.default_rng([SPLIT_SEEDS[split], index, 77])
        (cases_dir / subject).mkdir(parents=True, exist_ok=True)
        for case in CASES:
            if case in MOVES:
                data, affine = t1, rigid(*MOVES[case], centre, rng) @ t1_image.affine
            else:
                data, affine = contrast(t1, case), t1_image.affine
            path = cases_dir / subject / f"{subject}_mri_{case}.nii.gz"
            nib.save(nib.Nifti1Image(data, affine), path)
            pet = f"../{subject}/{subject}_pet_drf{DOSE}.nii.gz"
            datalists[case].append({"id": f"{subject}_drf{DOSE}", "pet": pet, "mri": f"{subject}/{path.name}"})
    for case, studies in datalists.items():
        (cases_dir / f"{case}.json").write_text(json.dumps(studies, indent=1))
    print(f"{len(subjects)} subjects x {len(CASES)} cases under {cases_dir}")


def _preprocessed(out: Path, split: str, case: str, study: dict) -> dict:
    """The study loaded as inference loads it, up to the MRI's registration (PET at 2 mm, RAS)."""
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd, Spacingd

    base = out / split / "alignment"
    load = Compose(
        [
            LoadImaged(["pet", "mri"], image_only=True),
            EnsureChannelFirstd(["pet", "mri"], channel_dim="no_channel"),
            Orientationd("pet", axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
            Spacingd("pet", pixdim=(2.0, 2.0, 2.0), mode="bilinear", padding_mode="border"),
        ]
    )
    return load({"pet": str(base / study["pet"]), "mri": str(base / study["mri"]), "id": study["id"]})


def run_checks(out: Path, split: str, cases: list[str], register_modes: list[bool]) -> None:
    """Print, per case, the checks' ranges over the split's studies, registered and with the header trusted."""
    from scripts.registration import REGISTRATION_KEY, RegisterMRId

    print("| case | registered | gain | prominence | white/grey | MRI kept | seconds (max) |")
    print("|---|---|---|---|---|---|---|")
    for case in cases:
        studies = json.loads((out / split / "alignment" / f"{case}.json").read_text())
        for register in register_modes:
            records = []
            for study in studies:
                data = RegisterMRId(register=register)(_preprocessed(out, split, case, study))
                records.append(data[REGISTRATION_KEY])

            def span(key: str, digits: int) -> str:
                values = [r[key] for r in records]
                return f"{min(values):+.{digits}f} to {max(values):+.{digits}f}"

            kept = sum(r["used"] for r in records)
            seconds = max(r["seconds"] for r in records)
            print(
                f"| {case} | {register} | {span('gain', 3)} | {span('prominence', 2)} | "
                f"{span('white_grey_ratio', 2)} | {kept}/{len(records)} | {seconds:.1f} |",
                flush=True,
            )


def time_registration(out: Path, split: str, cases: list[str], threads: list[int]) -> None:
    """Seconds of the registration and checks per study (``RegisterMRId`` alone), per case and torch thread count."""
    import time

    import torch

    from scripts.registration import RegisterMRId

    for count in threads:
        torch.set_num_threads(count)
        for case in cases:
            seconds = []
            for study in json.loads((out / split / "alignment" / f"{case}.json").read_text()):
                data = _preprocessed(out, split, case, study)
                start = time.perf_counter()
                RegisterMRId()(data)
                seconds.append(time.perf_counter() - start)
            print(
                f"{count} thread(s), {case}: {np.mean(seconds):.2f} s mean, "
                f"{np.min(seconds):.2f}-{np.max(seconds):.2f} s per study ({len(seconds)} studies)",
                flush=True,
            )


def run_enhance(out: Path, split: str, case: str, name: str | None, overrides: dict) -> None:
    """Enhance every study of a case through configs/inference.json into ``alignment/enhanced/<name>``."""
    base = out / split / "alignment"
    studies = json.loads((base / f"{'aligned' if case == 'mri_free' else case}.json").read_text())
    if case == "mri_free":
        studies = [{k: v for k, v in s.items() if k != "mri"} for s in studies]
    studies = [{k: str((base / v).resolve()) if k in ("pet", "mri") else v for k, v in s.items()} for s in studies]
    target = base / "enhanced" / (name or case)
    target.mkdir(parents=True, exist_ok=True)
    enhance(studies, str(target), 0, overrides)


def score(out: Path, split: str) -> None:
    """PSNR per case against the aligned run with the header trusted and the MRI-free mode; registration records."""
    base = out / split / "alignment"
    runs = sorted(p.name for p in (base / "enhanced").iterdir() if (p / "seed0" / "summary.json").exists())
    psnr: dict[str, dict[str, float]] = {}
    summaries = {}
    for run in runs:
        summary = json.loads((base / "enhanced" / run / "seed0" / "summary.json").read_text())
        summaries[run] = {s["id"]: s for s in summary["studies"]}
        psnr[run] = {}
        for study_id in summaries[run]:
            subject = study_id.rsplit("_drf", 1)[0]
            ref_path = out / split / subject / f"{subject}_pet_sd_noisefree.nii.gz"
            ref = np.asarray(nib.load(ref_path).dataobj, dtype=np.float64)
            brain = np.asarray(nib.load(out / split / subject / f"{subject}_brain_mask.nii.gz").dataobj) > 0
            image = base / "enhanced" / run / "seed0" / study_id / f"{study_id}_enhanced.nii.gz"
            psnr[run][study_id] = metrics.masked_psnr(np.asarray(nib.load(image).dataobj, np.float64), ref, brain)
    reference = psnr.get("aligned_trusted")
    registered = psnr.get("aligned")
    mri_free = psnr.get("mri_free")
    print(
        f"{split} split, 1/{DOSE} dose, {len(next(iter(psnr.values())))} studies: "
        "brain PSNR (dB) against the noise-free SD"
    )
    print(
        "| run | PSNR mean | vs aligned, header trusted: mean (worst) | vs aligned, registered: mean (worst) "
        "| vs MRI-free: worst | MRI kept | reg. s (max) |"
    )
    print("|---|---|---|---|---|---|---|")
    for run in runs:
        ids = sorted(psnr[run])
        values = np.array([psnr[run][i] for i in ids])
        versus = np.array([psnr[run][i] - reference[i] for i in ids]) if reference else np.full(len(ids), np.nan)
        aligned = np.array([psnr[run][i] - registered[i] for i in ids]) if registered else np.full(len(ids), np.nan)
        free = np.array([psnr[run][i] - mri_free[i] for i in ids]) if mri_free else np.full(len(ids), np.nan)
        records = [summaries[run][i].get("mri_registration") or {} for i in ids]
        kept = sum(bool(r.get("used")) for r in records)
        seconds = max([r.get("seconds", 0.0) for r in records] or [0.0])
        print(
            f"| {run} | {values.mean():.2f} | {versus.mean():+.2f} ({versus.min():+.2f}) | "
            f"{aligned.mean():+.2f} ({aligned.min():+.2f}) | {free.min():+.2f} | "
            f"{kept}/{len(ids)} | {seconds:.1f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=("cases", "checks", "enhance", "score", "time"))
    parser.add_argument("--out", type=Path, default=Path("data/recovery"), help="bench_recovery.py's --out")
    parser.add_argument("--split", choices=tuple(SPLIT_SEEDS), default="validation")
    parser.add_argument("--case", choices=CASES + ("mri_free",), default="aligned", help="enhance: the case")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES), help="checks: the cases")
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1], help="time: torch thread counts")
    parser.add_argument(
        "--register", nargs="+", choices=("true", "false"), default=["true", "false"], help="checks: registered or not"
    )
    parser.add_argument("--name", default=None, help="enhance: the run's name (default: the case)")
    parser.add_argument("--override", nargs=argparse.REMAINDER, default=[], help="enhance: --key value pairs")
    args = parser.parse_args()
    if args.step == "cases":
        make_cases(args.out, args.split)
    elif args.step == "checks":
        run_checks(args.out, args.split, args.cases, [mode == "true" for mode in args.register])
    elif args.step == "time":
        time_registration(args.out, args.split, args.cases, args.threads)
    elif args.step == "enhance":
        run_enhance(args.out, args.split, args.case, args.name, parse_overrides(args.override))
    else:
        score(args.out, args.split)


if __name__ == "__main__":
    main()
