"""Quality and speed against the number of DDIM steps, warm start and samples, on VALIDATION subjects only.

For each setting it enhances each validation subject's low-dose image(s) and prints brain-masked 3D PSNR and SSIM
against the standard-dose image (activity units), seconds per volume and network calls per slice. Use it to pick the
default of inference.json; never run it on the test split.

    python benchmarks/bench_steps.py --weights bundle/models/model.pt --datalist data/sim/datalist.json \
        --steps 1 2 4 8 16 50 --warm-start none 500 --samples 1 4 --drf 20 100 --subjects 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(REPO, "bundle"))

from scripts.metrics import masked_psnr, masked_ssim  # noqa: E402
from scripts.network import M2DiffNet  # noqa: E402
from scripts.normalise import NormaliseStudyd, restore_units  # noqa: E402
from scripts.sampler import DDIMVolumeSampler  # noqa: E402
from scripts.training import load_cohort  # noqa: E402


def load_network(weights: str, config_file: str) -> M2DiffNet:
    """Build ``network_def`` of a bundle config and load a CPU state_dict."""
    with open(config_file) as f:
        args = {k: v for k, v in json.load(f)["network_def"].items() if k != "_target_"}
    network = M2DiffNet(**args)
    network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return network.eval()


def volume(path: str) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj, dtype=np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=os.path.join(REPO, "bundle", "models", "model.pt"))
    parser.add_argument("--config", default=os.path.join(REPO, "bundle", "configs", "inference.json"))
    parser.add_argument("--datalist", default=os.path.join(REPO, "data", "sim", "datalist.json"))
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8, 16, 50])
    parser.add_argument("--warm-start", nargs="+", default=["none"], help="'none' or start timesteps")
    parser.add_argument("--samples", type=int, nargs="+", default=[1])
    parser.add_argument("--drf", type=int, nargs="+", default=[20, 100])
    parser.add_argument("--subjects", type=int, default=0, help="first N validation subjects (0 = all)")
    parser.add_argument("--slice-batch-size", type=int, default=32)
    parser.add_argument("--slab", type=int, default=0, help="score only the N central axial slices (0 = whole volume)")
    args = parser.parse_args()

    network = load_network(args.weights, args.config)
    records = load_cohort(args.datalist, "validation", args.drf, per_dose=True)
    if args.subjects:
        keep = sorted({r["id"] for r in records})[: args.subjects]
        records = [r for r in records if r["id"] in keep]
    normalise = NormaliseStudyd(["pet_low_dose"], "pet_low_dose", "t1")  # inference's normalisation
    cases = []
    for record in records:
        study = normalise({key: MetaTensor(volume(record[key])) for key in ("pet_low_dose", "t1")})
        sd, mask = volume(record["pet_sd"]), volume(record["brain_mask"]) > 0
        inputs = torch.stack([study["pet_low_dose"], study["t1"]]).as_tensor()[None]  # (1, 2, H, W, D) as at inference
        if args.slab:
            first = (sd.shape[-1] - args.slab) // 2
            inputs, sd, mask = (v[..., first : first + args.slab] for v in (inputs, sd, mask))
        cases.append((record, inputs, sd, mask, study["pet_low_dose"]))
    where = f"central {args.slab} slices" if args.slab else "whole volume"
    print(
        f"{where} of {len(cases)} validation volumes ({len({c[0]['id'] for c in cases})} subjects, DRF {args.drf}), "
        f"{os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}"
    )
    print(f"| steps | warm start | samples | DRF | PSNR (dB) | SSIM | s ({where}) | network calls / slice |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for warm in args.warm_start:
        warm_t = None if warm == "none" else int(warm)
        for samples in args.samples:
            for steps in args.steps:
                sampler = DDIMVolumeSampler(
                    steps,
                    warm_t,
                    samples,
                    args.slice_batch_size,
                    seed=0,
                    progress=False,
                    context_slices=getattr(network, "context_slices", 0),
                )
                rows: dict[int, list] = {}
                for record, inputs, sd, mask, low_dose in cases:
                    start = time.perf_counter()
                    pred = sampler(inputs, network)
                    seconds = time.perf_counter() - start
                    enhanced = restore_units(pred[0, 0], low_dose).numpy()
                    rows.setdefault(record["dose_reduction_factor"], []).append(
                        (masked_psnr(enhanced, sd, mask), masked_ssim(enhanced, sd, mask), seconds)
                    )
                for drf, values in sorted(rows.items()):
                    psnr, ssim, sec = (statistics.mean(v[i] for v in values) for i in range(3))
                    print(
                        f"| {steps} | {warm} | {samples} | {drf} | {psnr:.2f} | {ssim:.4f} | {sec:.1f} | "
                        f"{sampler.network_calls_per_slice} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
