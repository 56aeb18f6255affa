"""Benchmark scripts run (tiny settings): code that nothing runs rots."""

import os
import subprocess
import sys

import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def _run(*args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_inference_memory_calls_the_shipped_network_layout():
    out = _run("benchmarks/inference_memory.py", "--slice_batch_sizes", "1", "--height", "32", "--width", "32")
    assert "slice_batch_size   1: peak RSS" in out


@pytest.mark.parametrize("script", ["bench_recovery.py", "bench_hospital.py", "bench_methods.py"])
def test_benchmark_scripts_import_and_describe_themselves(script):
    assert "usage:" in _run(os.path.join("benchmarks", script), "--help")


def test_hospital_benchmark_times_pytorch_and_onnx_runtime_on_the_sample():
    out = _run("benchmarks/bench_hospital.py", "--parts", "onnx", "--repeats", "1", "--torchscript_exporter")
    assert "s/volume, ONNX Runtime" in out and "max relative difference of the outputs" in out
