"""Peak memory of one sampler network call on 2 mm MNI slices (99 x 117, padded to 104 x 120), per slice batch.

The network runs at its training spacing (2 mm) whatever the study's voxel size. The sampler holds the whole volume on
the CPU and sends ``slice_batch_size`` slices at a time to the device, so the device memory of a study is the
network's memory for one batch plus the weights. Prints one line per batch size::

    python benchmarks/inference_memory.py --slice_batch_sizes 1 4 16 [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import torch

BUNDLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bundle")
sys.path.insert(0, BUNDLE)

from scripts.network import M2DiffNet  # noqa: E402


def network_from_config() -> M2DiffNet:
    """The ``network_def`` of bundle/configs/inference.json."""
    with open(os.path.join(BUNDLE, "configs", "inference.json")) as f:
        config = {k: v for k, v in json.load(f)["network_def"].items() if not k.startswith("_")}
    return M2DiffNet(**config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slice_batch_sizes", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--height", type=int, default=104)
    parser.add_argument("--width", type=int, default=120)
    args = parser.parse_args()
    torch.set_num_threads(1)
    device = torch.device(args.device)
    network = network_from_config().to(device).eval()
    weights_mb = sum(p.numel() * p.element_size() for p in network.parameters()) / 2**20
    print(f"device {device}, weights {weights_mb:.1f} MiB, slices {args.height} x {args.width}")
    for batch in args.slice_batch_sizes:
        channels = 1 + 2 * network.image_channels  # [x_t, low-dose slices, T1 slices]
        x = torch.randn(batch, channels, args.height, args.width, device=device)
        t = torch.full((batch,), 500, device=device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
        start = time.perf_counter()
        with torch.inference_mode():
            network(x, t)
        seconds = time.perf_counter() - start
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device) / 2**20
            print(f"slice_batch_size {batch:3d}: peak GPU memory {peak:8.1f} MiB, {seconds:.2f} s per call")
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
            print(f"slice_batch_size {batch:3d}: peak RSS {peak:8.1f} MiB (+{peak - rss_before:.1f}), {seconds:.2f} s")


if __name__ == "__main__":
    main()
