"""Draw the README's picture: the shipped sample study's T1, low-dose input, enhanced output and standard dose.

Run the README's enhance command first (it writes ``bundle/output/sample/sample_enhanced.nii.gz``), then, from the
repository root::

    python benchmarks/plot_sample.py --out bundle/docs/images/sample_enhanced.png

One axial plane through the PET's centre of activity, in the style of the evaluation panels (``scripts.plotting``):
every PET image on the standard dose's display range, ``|error|`` = |enhanced - standard dose| on a quarter of it.
The sample's standard dose is a noisy simulated reconstruction (``bundle/sample/sample_pet_sd.nii.gz``), so part of
that error is its own noise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bundle"))

from scripts.plotting import evaluation_figure, save_figure, slice_position  # noqa: E402


def _ras(path: str):
    import nibabel as nib

    image = nib.as_closest_canonical(nib.load(path))
    return np.asarray(image.dataobj, dtype=np.float32), image.affine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sample_dir", default=os.path.join(ROOT, "bundle", "sample"))
    parser.add_argument(
        "--enhanced", default=os.path.join(ROOT, "bundle", "output", "sample", "sample_enhanced.nii.gz")
    )
    parser.add_argument("--out", default="sample_enhanced.png")
    args = parser.parse_args()
    if not os.path.isfile(args.enhanced):
        sys.exit(f"{args.enhanced} not found: run the README's enhance command first")
    record = json.load(open(os.path.join(args.sample_dir, "studies.json")))[0]
    low_dose, affine = _ras(os.path.join(args.sample_dir, record["pet"]))
    mri, _ = _ras(os.path.join(args.sample_dir, record["mri"]))
    standard, _ = _ras(os.path.join(args.sample_dir, "sample_pet_sd.nii.gz"))
    enhanced, _ = _ras(args.enhanced)
    if not low_dose.shape == mri.shape == standard.shape == enhanced.shape:
        sys.exit("the sample's images are not on one grid")
    weights = np.clip(low_dose, 0, None)
    z = int(round(float((weights.sum(axis=(0, 1)) * np.arange(weights.shape[2])).sum() / weights.sum())))
    images = {
        "MRI": mri[:, :, z],
        f"low dose 1/{record.get('drf', '?')} (input)": low_dose[:, :, z],
        "enhanced (output)": enhanced[:, :, z],
        "standard dose": standard[:, :, z],
        "|error|": np.abs(enhanced - standard)[:, :, z],
    }
    title = "sample study (simulated AD, shipped weights, inference.json defaults)"
    figure = evaluation_figure(images, title, "Bq/ml", affine, slice_position(affine, 2, z, low_dose.shape))
    print(save_figure(figure, args.out))


if __name__ == "__main__":
    main()
