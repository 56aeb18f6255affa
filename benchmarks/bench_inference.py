"""Seconds and peak memory to enhance one study with the bundle's default inference settings.

Runs ``python -m monai.bundle run ... inference.json`` on the shipped sample study (99x117x95, 2 mm) several times in
fresh processes and prints the median wall time of the whole command, the sampler's own seconds (from the run's
summary.json when available), network calls, and the peak resident memory of the runs.

    python benchmarks/bench_inference.py --runs 3 [--override --num_inference_steps 4 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def run_once(output_dir: str, extra: list[str]) -> float:
    command = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--bundle_root",
        os.path.join(REPO, "bundle"),
        "--config_file",
        os.path.join(REPO, "bundle", "configs", "inference.json"),
        "--output_dir",
        output_dir,
        *extra,
    ]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, text=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--override", nargs=argparse.REMAINDER, default=[], help="extra `--key value` for the run")
    args = parser.parse_args()
    walls, study_seconds, calls = [], [], []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as output_dir:
            walls.append(run_once(output_dir, args.override))
            summary_path = os.path.join(output_dir, "summary.json")
            if os.path.exists(summary_path):
                with open(summary_path) as f:
                    studies = json.load(f).get("studies", [])
                study_seconds += [s["seconds"] for s in studies if "seconds" in s]
                calls += [s["network_calls"] for s in studies if "network_calls" in s]
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2
    print(
        f"hardware: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch threads "
        f"{torch.get_num_threads()}, cuda={torch.cuda.is_available()}"
    )
    print(f"settings: defaults of inference.json {' '.join(args.override)}")
    print(
        f"whole command (start, load, enhance, save), median of {args.runs}: {statistics.median(walls):.1f} s "
        f"(runs: {', '.join(f'{w:.1f}' for w in walls)})"
    )
    if study_seconds:
        print(f"enhancement of the study (summary.json), median: {statistics.median(study_seconds):.1f} s")
    if calls:
        print(f"network calls per study (batched forward passes): {calls[0]}")
    print(f"peak resident memory of a run: {peak_gb:.2f} GB")


if __name__ == "__main__":
    main()
