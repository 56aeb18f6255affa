"""Where the seconds before and around the first study go: imports, config parsing, weights, the study itself.

Runs the README's enhance command's workflow (``configs/inference.json`` on the shipped sample, or ``--datalist``) in
one fresh process and prints the seconds of each stage, as ``python -m monai.bundle run`` goes through them::

    python benchmarks/bench_startup.py [--datalist studies.json] [--ckpt_path model.pt] [--num_threads 0] \
        [--override --key value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

BUNDLE = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "bundle"))


def _json_or_text(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datalist", default=os.path.join(BUNDLE, "sample", "studies.json"))
    parser.add_argument("--ckpt_path", default=os.path.join(BUNDLE, "models", "model.pt"))
    parser.add_argument("--num_threads", type=int, default=0)
    parser.add_argument("--override", nargs=argparse.REMAINDER, default=[], help="--key value pairs for inference")
    args = parser.parse_args()
    overrides = {key.lstrip("-"): _json_or_text(text) for key, text in zip(args.override[::2], args.override[1::2])}

    stages = []
    start = last = time.perf_counter()

    def stage(name: str) -> None:
        nonlocal last
        now = time.perf_counter()
        stages.append((name, now - last))
        last = now

    import torch  # noqa: F401

    stage("import torch")
    import monai  # noqa: F401
    from monai.bundle import ConfigWorkflow

    stage("import monai")
    sys.path.insert(0, BUNDLE)
    import scripts.enhance  # noqa: F401
    import scripts.registration  # noqa: F401

    stage("import the bundle's scripts")
    with tempfile.TemporaryDirectory() as output_dir:
        workflow = ConfigWorkflow(
            config_file=os.path.join(BUNDLE, "configs", "inference.json"),
            meta_file=os.path.join(BUNDLE, "configs", "metadata.json"),
            logging_file=False,
            workflow_type="inference",
            bundle_root=BUNDLE,
            datalist=args.datalist,
            ckpt_path=args.ckpt_path,
            output_dir=output_dir,
            num_threads=args.num_threads,
            **overrides,
        )
        workflow.initialize()
        stage("parse the config")
        workflow.parser.get_parsed_content("evaluator")
        stage("build the network, data and engine")
        workflow.run()
        stage("run: weights, studies, writing")
        workflow.finalize()
    total = time.perf_counter() - start
    print("| stage | seconds | share |\n| --- | --- | --- |")
    for name, seconds in stages:
        print(f"| {name} | {seconds:.2f} | {100 * seconds / total:.0f} % |")
    print(f"| total | {total:.2f} | 100 % |")


if __name__ == "__main__":
    main()
