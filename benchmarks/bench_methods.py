"""Side-by-side table of every method on one split: image quality per dose level and group, time and network calls.

Trains nothing. Reads ``<runs_dir>/eval/<split>/<method>/summary.json`` written by configs/evaluate.json; with
``--run_missing`` it first runs that evaluation for methods without a summary, loading the trained checkpoints
(``<runs_dir>/<method>/checkpoints/model.pt``).

    python benchmarks/bench_methods.py --runs_dir runs --split test [--run_missing --dataset_dir data/sim]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
BUNDLE_ROOT = os.path.join(REPO, "bundle")
METHODS = (
    "low_dose",
    "gaussian_filter",
    "unet_regression",
    "single_branch_diffusion",
    "pet_only_diffusion",
    "m2diff_mri_free",
    "m2diff",
)
OVERRIDES = {name: f"baselines/{name}" for name in ("unet_regression", "single_branch_diffusion", "pet_only_diffusion")}
COLUMNS = (
    ("psnr", "PSNR", "{:.2f}"),
    ("ssim", "SSIM", "{:.4f}"),
    ("nmse", "NMSE", "{:.4f}"),
    ("mean_bias_pct", "bias%", "{:+.2f}"),
    ("suvr_bias_pct", "SUVRb%", "{:+.2f}"),
    ("slice_ssim", "sliceSSIM", "{:.4f}"),
    ("lesion_contrast_err_pct", "lesion%", "{:+.1f}"),
    ("pattern_amplitude", "patternAmp", "{:.2f}"),
    ("pattern_correlation", "patternR", "{:.2f}"),
)
GROUPS = ("CN", "AD", "lesion", "whole_head")


def run_evaluation(method: str, runs_dir: str, dataset_dir: str, split: str, overrides: dict) -> None:
    """Run configs/evaluate.json for one method (existing checkpoints only)."""
    sys.path.insert(0, BUNDLE_ROOT)
    from monai.bundle import ConfigWorkflow

    names = ["inference", "train"] + ([OVERRIDES[method]] if method in OVERRIDES else []) + ["evaluate"]
    workflow = ConfigWorkflow(
        config_file=[os.path.join(BUNDLE_ROOT, "configs", f"{n}.json") for n in names],
        logging_file=os.path.join(BUNDLE_ROOT, "configs", "logging.conf"),
        workflow_type="infer",
        bundle_root=BUNDLE_ROOT,
        dataset_dir=dataset_dir,
        runs_dir=runs_dir,
        method=method,
        eval_split=split,
        **overrides,
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()


def _dose_levels(summaries: dict[str, dict], reference: str) -> list[str]:
    """The summaries' dose levels (``drf20`` ...) in the order ``scripts.evaluation.summarise`` wrote them."""
    return list(dict.fromkeys(d for s in summaries.values() for d in s["metrics"].get(reference, {})))


def _dose_title(level: str) -> str:
    return f"1/{level[3:]}" if level[3:].isdigit() else "1/4-1/100, each subject at its own untrained level"


def _cell(entry: dict | None, key: str, fmt: str) -> str:
    value = (entry or {}).get(key)
    return fmt.format(value["mean"]) if value else "-"


def print_markdown(summaries: dict[str, dict], reference: str, groups: tuple[str, ...] = GROUPS) -> None:
    """The same numbers as :func:`print_table` as Markdown tables (one per dose level), for the README."""
    doses = _dose_levels(summaries, reference)
    titles = [title for _, title, _ in COLUMNS]
    for dose in doses:
        print(f"\n**Dose {_dose_title(dose)}** (reference: {reference})\n")
        print("| method | group | " + " | ".join(titles) + " | s/volume | calls/volume |")
        print("|---" * (len(titles) + 4) + "|")
        for method, summary in summaries.items():
            by_group = summary["metrics"].get(reference, {}).get(dose, {})
            for group in groups:
                entry = by_group.get(group)
                if entry is None:
                    continue
                cells = [_cell(entry, k, f) for k, _, f in COLUMNS]
                cells += [_cell(entry, "seconds", "{:.1f}"), _cell(entry, "network_calls_per_volume", "{:.0f}")]
                print(f"| {method} | {group} (n={entry.get('n', '?')}) | " + " | ".join(cells) + " |")


def print_table(summaries: dict[str, dict], reference: str) -> None:
    """One block per dose level; rows = method x group; columns = metrics, seconds and calls per volume."""
    doses = _dose_levels(summaries, reference)
    header = f"{'method':<25}{'group':<6}" + "".join(f"{title:>11}" for _, title, _ in COLUMNS)
    header += f"{'s/volume':>10}{'calls/vol':>10}{'steps':>6}"
    print(f"\nreference: {reference} (brain-masked 3D metrics in activity units; sliceSSIM = paper's protocol)")
    for dose in doses:
        print(f"\n== dose {_dose_title(dose)} ==\n{header}\n{'-' * len(header)}")
        for method, summary in summaries.items():
            groups = summary["metrics"].get(reference, {}).get(dose, {})
            for group in (*GROUPS, "all"):
                if group not in groups:
                    continue
                entry = groups[group]
                line = f"{method:<25}{group:<6}" + "".join(f"{_cell(entry, k, f):>11}" for k, _, f in COLUMNS)
                line += (
                    f"{_cell(entry, 'seconds', '{:.1f}'):>10}{_cell(entry, 'network_calls_per_volume', '{:.0f}'):>10}"
                )
                line += f"{summary.get('num_inference_steps', 0):>6}"
                print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs_dir", default=os.path.join(REPO, "runs"))
    parser.add_argument("--split", default="test")
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--reference", default="sd", choices=["sd", "sd_noisefree"])
    parser.add_argument("--run_missing", action="store_true", help="evaluate methods that have no summary yet")
    parser.add_argument("--dataset_dir", default=os.path.join(REPO, "data", "sim"))
    parser.add_argument("--num_inference_steps", type=int, default=1)
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables (CN, AD, lesion, whole-head)")
    parser.add_argument("--gaussian_fwhm_mm", type=float, default=None, help="default: evaluate.json's")
    args = parser.parse_args()
    runs_dir = os.path.abspath(args.runs_dir)

    summaries = {}
    for method in args.methods:
        path = os.path.join(runs_dir, "eval", args.split, method, "summary.json")
        if not os.path.exists(path) and args.run_missing:
            overrides = {"num_inference_steps": args.num_inference_steps}
            if args.gaussian_fwhm_mm is not None:
                overrides["gaussian_fwhm_mm"] = args.gaussian_fwhm_mm
            run_evaluation(method, runs_dir, os.path.abspath(args.dataset_dir), args.split, overrides)
        if not os.path.exists(path):
            print(f"[{method}] no summary at {path}; skipped")
            continue
        with open(path) as f:
            summaries[method] = json.load(f)
    if not summaries:
        raise SystemExit(f"no evaluation summaries under {os.path.join(runs_dir, 'eval', args.split)}")
    (print_markdown if args.markdown else print_table)(summaries, args.reference)


if __name__ == "__main__":
    main()
