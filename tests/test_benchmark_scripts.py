"""Benchmark scripts run (tiny settings): code that nothing runs rots.

Every script in benchmarks/ is either run in a smoke mode on tiny data (a tiny cohort, a tiny network) or, where a
run needs the simulator's full-size subjects (minutes), imported and asked for ``--help``: :data:`SMOKE` and
:data:`HELP_ONLY` together name them all.
"""

import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from inference_testing import TINY_NETWORK, nifti_study, write_datalist
from tiny_cohort import make_tiny_cohort

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
BENCHMARKS = os.path.join(REPO, "benchmarks")

#: scripts run on tiny data by a test below
SMOKE = (
    "bench_consistency.py",
    "bench_hospital.py",  # its ONNX part; processes (torchrun) and node (Orthanc) parts: --help only
    "bench_inference.py",
    "bench_methods.py",
    "bench_startup.py",
    "bench_steps.py",
    "bench_uncertainty.py",
    "inference_memory.py",
    "plot_sample.py",
    "summarise_cohort.py",
)
#: scripts whose run simulates full-size subjects (minutes): imported and --help only
HELP_ONLY = ("bench_alignment.py", "bench_recovery.py", "bench_simulator.py", "bench_uncertainty_ceiling.py")


def _run(*args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


def _overrides(python_literals: bool = False) -> list[str]:
    """TINY_NETWORK as ``--key value`` pairs (JSON values, or Python literals for MONAI's command line)."""
    pairs = []
    for key, value in TINY_NETWORK.items():
        text = json.dumps(value)
        pairs += [f"--{key}", text.replace("false", "False").replace("true", "True") if python_literals else text]
    return pairs


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> str:
    folder = str(tmp_path_factory.mktemp("cohort"))
    make_tiny_cohort(folder, splits={"training": 1, "validation": 1, "test": 1})
    return folder


def test_every_benchmark_script_is_run_by_a_test():
    scripts = {name for name in os.listdir(BENCHMARKS) if name.endswith(".py")}
    assert scripts == set(SMOKE) | set(HELP_ONLY)


@pytest.mark.parametrize("script", sorted(HELP_ONLY + ("bench_hospital.py", "bench_methods.py")))
def test_benchmark_scripts_import_and_describe_themselves(script):
    assert "usage:" in _run(os.path.join("benchmarks", script), "--help")


def test_inference_memory_calls_the_shipped_network_layout():
    out = _run("benchmarks/inference_memory.py", "--slice_batch_sizes", "1", "--height", "32", "--width", "32")
    assert "slice_batch_size   1: peak RSS" in out


def test_hospital_benchmark_times_pytorch_and_onnx_runtime_on_the_sample():
    out = _run("benchmarks/bench_hospital.py", "--parts", "onnx", "--repeats", "1", "--torchscript_exporter")
    assert "s/volume, ONNX Runtime" in out and "max relative difference of the outputs" in out


def test_inference_benchmark_times_a_tiny_study(cohort, weights, tmp_path):
    record = json.load(open(os.path.join(cohort, "datalist.json")))["test"][0]
    study = {"id": "tiny", "pet": os.path.join(cohort, record["pet_drf100"]), "mri": os.path.join(cohort, record["t1"])}
    datalist = write_datalist([study], tmp_path / "studies.json")
    extra = ["--datalist", str(datalist), "--ckpt_path", str(weights), "--register_mri", "False", *_overrides(True)]
    out = _run("benchmarks/bench_inference.py", "--runs", "1", "--override", *extra)
    assert "whole command (start, load, enhance, save), median of 1:" in out
    assert "network calls per study (batched forward passes): " in out


def test_uncertainty_benchmark_scores_the_spread_of_samples(cohort, weights):
    extra = ["--ckpt_path", str(weights), "--register_mri", "false", *_overrides()]
    args = ["--dataset_dir", cohort, "--num_samples", "2", "--dose_reduction_factors", "100", "--override", *extra]
    out = _run("benchmarks/bench_uncertainty.py", *args)
    assert "| sub-0002_drf100 |" in out and "the targets (Spearman >= 0.5, 2-SD coverage 90-98 %)" in out


def test_consistency_benchmark_scores_fixed_and_automatic_cut_offs(cohort, weights):
    args = ["--dataset_dir", cohort, "--model_file", str(weights), "--dose_levels", "100", "--fixed_mm", "8"]
    args += ["--noise_pcts", "0.6", "--override", "--register_mri", "false", *_overrides()]
    out = _run("benchmarks/bench_consistency.py", *args)
    assert "| 8 mm | 100 |" in out and "| auto 0.6 % | 100 |" in out


def test_steps_benchmark_scores_a_slab(cohort, weights, tmp_path):
    """The tiny network in the shipped layout (inference.json's context_slices), as the shipped weights run."""
    with open(os.path.join(REPO, "bundle", "configs", "inference.json")) as f:
        network_def = json.load(f)["network_def"]
    network_def.update({k.split("#")[1]: v for k, v in TINY_NETWORK.items() if k.startswith("network_def#")})
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"network_def": network_def}))
    args = ["--weights", str(weights), "--config", str(config), "--datalist", os.path.join(cohort, "datalist.json")]
    args += ["--steps", "1", "--drf", "100", "--subjects", "1", "--slab", "8", "--slice-batch-size", "8"]
    out = _run("benchmarks/bench_steps.py", *args)
    assert "central 8 slices of 1 validation volumes" in out and "| 1 | none | 1 | 100 |" in out


def test_methods_benchmark_evaluates_missing_methods_and_tabulates_them(cohort, tmp_path):
    runs = str(tmp_path / "runs")
    args = ["--runs_dir", runs, "--dataset_dir", cohort, "--methods", "low_dose", "gaussian_filter", "--run_missing"]
    out = _run("benchmarks/bench_methods.py", *args)
    assert "== dose 1/100 ==" in out and "\nlow_dose " in out and "\ngaussian_filter " in out
    assert os.path.exists(os.path.join(runs, "eval", "test", "gaussian_filter", "summary.json"))


def test_plot_sample_draws_the_sample_study(tmp_path):
    sample = os.path.join(REPO, "bundle", "sample")
    out_png = str(tmp_path / "sample.png")
    _run("benchmarks/plot_sample.py", "--enhanced", os.path.join(sample, "sample_pet_sd.nii.gz"), "--out", out_png)
    with open(out_png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_summarise_cohort_reads_a_cohort(tmp_path):
    folder = str(tmp_path / "cohort")
    datalist = make_tiny_cohort(folder, splits={"training": 1, "validation": 1, "test": 2})
    for record in [r for split in ("training", "validation", "test") for r in json.load(open(datalist))[split]]:
        params = os.path.join(folder, record["params"])  # what the simulator records and the tiny cohort leaves out
        json.dump({**json.load(open(params)), "counts": 1e8, "psf_fwhm_mm": 4.0}, open(params, "w"))
        labels = nib.load(os.path.join(folder, record["labels"]))
        array = np.asarray(labels.dataobj)
        array[array == 1] = 44  # the tiny cohort's plain brain as white matter (Neuromorphometrics 44/45)
        nib.save(nib.Nifti1Image(array, labels.affine), labels.get_filename())
    out = _run("benchmarks/summarise_cohort.py", datalist)
    assert "subjects: 4" in out and "test         2 subjects, AD 1" in out
    noise = [line for line in out.splitlines() if line.strip().startswith("pet_drf100 ") and "%" in line]
    assert noise and "nan" not in noise[0]


def test_startup_benchmark_times_every_stage_of_the_enhance_command(weights, tmp_path):
    datalist = write_datalist([nifti_study(tmp_path / "study")], tmp_path / "studies.json")
    args = ["--datalist", str(datalist), "--ckpt_path", str(weights), "--override", *_overrides()]
    out = _run("benchmarks/bench_startup.py", *args)
    for stage in ("import torch", "import monai", "parse the config", "run: weights, studies, writing", "total"):
        assert f"| {stage} | " in out, out
