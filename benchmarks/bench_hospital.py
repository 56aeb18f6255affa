"""Hospital deployment numbers on this machine's CPUs, in one run, with the shipped weights and sample study:

1. ONNX Runtime vs PyTorch: seconds per volume through the same sampler (the ratio; the target is >= 1.3x faster).
2. Studies per hour over 8 studies (copies of the sample) with 1 process and with 2 processes (torchrun, gloo).
3. The DICOM node: seconds from a PACS (Orthanc) pushing the sample study to the derived series stored in it.

    OMP_NUM_THREADS=2 python benchmarks/bench_hospital.py [--threads 2] [--parts onnx processes node]

The node part needs the Orthanc binary and reuses the test helpers in tests/dicom_node_testing.py.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import torch

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundle"
SAMPLE = BUNDLE / "sample"
sys.path[:0] = [str(BUNDLE), str(REPO), str(REPO / "tests")]


def load_network():
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(BUNDLE / "models" / "model.pt", map_location="cpu", weights_only=True))
    return network.eval()


def sample_inputs() -> torch.Tensor:
    """The sample study as the sampler takes it: ``(1, 2, H, W, D)`` normalised [low-dose PET, T1] (2 mm grid)."""
    from scripts.normalise import mri_scale, pet_scale

    pet = torch.as_tensor(nib.load(SAMPLE / "sample_pet_drf20.nii.gz").get_fdata(), dtype=torch.float32)
    mri = torch.as_tensor(nib.load(SAMPLE / "sample_t1.nii.gz").get_fdata(), dtype=torch.float32)
    return torch.stack([pet / pet_scale(pet), mri / mri_scale(mri)])[None]


def seconds_per_volume(sampler, network, inputs: torch.Tensor, repeats: int) -> tuple[float, torch.Tensor]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        enhanced = sampler(inputs, network, voxel_size_mm=[2.0, 2.0, 2.0])
        times.append(time.perf_counter() - start)
    return statistics.median(times), enhanced


def bench_onnx(work: Path, threads: int, repeats: int, dynamo: bool) -> None:
    from scripts.onnx_network import OnnxNetwork, export_onnx
    from scripts.sampler import DDIMVolumeSampler

    network = load_network()
    start = time.perf_counter()
    export_onnx(network, work / "model.onnx", dynamo=dynamo)
    print(f"ONNX export ({'dynamo' if dynamo else 'torchscript'} exporter): {time.perf_counter() - start:.1f} s")
    inputs = sample_inputs()
    sampler = DDIMVolumeSampler(  # inference.json's defaults
        num_inference_steps=1,
        slice_batch_size=16,
        seed=0,
        progress=False,
        context_slices=network.context_slices,
        consistency_fwhm_mm="auto",
    )
    torch.set_num_threads(threads)
    torch_s, torch_mean = seconds_per_volume(sampler, network, inputs, repeats)
    onnx_s, onnx_mean = seconds_per_volume(sampler, OnnxNetwork(work / "model.onnx", threads), inputs, repeats)
    error = float((onnx_mean - torch_mean).abs().max() / torch_mean.abs().max())
    print(f"sample study {tuple(inputs.shape[2:])}, 1 DDIM step, MRI-guided, {threads} threads, median of {repeats}:")
    print(f"  PyTorch {torch_s:.2f} s/volume, ONNX Runtime {onnx_s:.2f} s/volume: ONNX Runtime {torch_s / onnx_s:.2f}x")
    verdict = "meets" if torch_s / onnx_s >= 1.3 else "does NOT meet"
    print(f"  {verdict} the 1.3x target; max relative difference of the outputs {error:.1e}")


def bench_processes(work: Path, studies: int, threads: int, process_counts: list[int]) -> None:
    pet, mri = str(SAMPLE / "sample_pet_drf20.nii.gz"), str(SAMPLE / "sample_t1.nii.gz")
    records = [{"id": f"sample{i}", "pet": pet, "mri": mri} for i in range(studies)]
    datalist = work / "studies.json"
    datalist.write_text(json.dumps(records))
    base = ["-m", "monai.bundle", "run", "--bundle_root", str(BUNDLE), "--datalist", str(datalist)]
    for processes in process_counts:
        output_dir = work / f"out{processes}"
        if processes == 1:
            command = [sys.executable, *base, "--config_file", str(BUNDLE / "configs" / "inference.json")]
        else:
            configs = f"['{BUNDLE}/configs/inference.json','{BUNDLE}/configs/multi_gpu_inference.json']"
            command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}"]
            command += [*base, "--config_file", configs]
        env = dict(os.environ, OMP_NUM_THREADS=str(max(1, threads // processes)), CUDA_VISIBLE_DEVICES="")
        start = time.perf_counter()
        subprocess.run([*command, "--output_dir", str(output_dir)], check=True, capture_output=True, env=env)
        seconds = time.perf_counter() - start
        summary = json.loads((output_dir / "summary.json").read_text())
        assert summary["ok"] == studies, summary
        print(
            f"{processes} process(es) x {max(1, threads // processes)} thread(s), {studies} studies: {seconds:.1f} s "
            f"(whole command), {3600 * studies / seconds:.0f} studies/hour"
        )


def bench_node(work: Path) -> None:
    from dicom_node_testing import Orthanc, start_node, stop, wait_for

    from pet_simulator.dicom_export import SeriesInfo, write_mr_series, write_pet_series

    pet, t1 = nib.load(SAMPLE / "sample_pet_drf20.nii.gz"), nib.load(SAMPLE / "sample_t1.nii.gz")
    params = json.loads((SAMPLE / "sample_params.json").read_text())
    series = write_pet_series(
        pet.get_fdata(),
        pet.affine,
        work / "dicom" / "PET",
        SeriesInfo(patient_weight_kg=params.get("patient_weight_kg", 70.0), uid_entropy=["bench-hospital"]),
        injected_dose_bq=params.get("injected_dose_bq", 2e8),
    )
    write_mr_series(
        t1.get_fdata(),
        t1.affine,
        work / "dicom" / "MR",
        SeriesInfo(
            study_uid=series["study_uid"],
            frame_of_reference_uid=series["frame_of_reference_uid"],
            uid_entropy=["bench-hospital-mr"],
        ),
    )
    slices = len(list((work / "dicom" / "PET").iterdir()))
    orthanc = Orthanc(work / "orthanc")
    quiet_s = 5
    start = time.perf_counter()
    node, port = start_node(
        work,
        BUNDLE / "models" / "model.pt",
        orthanc.dicom_port,
        "ORTHANC",
        quiet_time_s=quiet_s,
        inference_overrides={"ckpt_path": str(BUNDLE / "models" / "model.pt")},
    )
    print(f"DICOM node start-up: {time.perf_counter() - start:.1f} s")
    try:
        orthanc.start(port)
        study_id = orthanc.upload(sorted((work / "dicom").rglob("*.dcm")))
        start = time.perf_counter()
        orthanc.post("/modalities/m2diff/store", {"Resources": [study_id], "Asynchronous": False})
        pushed = time.perf_counter() - start

        def arrived():
            return any(
                "M2Diff" in s["MainDicomTags"].get("SeriesDescription", "") and len(s["Instances"]) == slices
                for s in orthanc.get(f"/studies/{study_id}/series")
            )

        wait_for(arrived, 600, "the derived series", interval_s=0.5)
        total = time.perf_counter() - start
    finally:
        stop(node)
        orthanc.stop()
    print(
        f"node end to end (PACS push of {2 * slices} instances -> derived series of {slices} in PACS): {total:.1f} s"
        f" (push {pushed:.1f} s, quiet time {quiet_s} s); target <= 120 s: {'met' if total <= 120 else 'NOT met'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads in total (both runtimes, all processes)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--studies", type=int, default=8)
    parser.add_argument("--process_counts", type=int, nargs="+", default=[1, 2], help="processes per run")
    parser.add_argument("--torchscript_exporter", action="store_true", help="export with dynamo=False (faster)")
    parser.add_argument("--parts", nargs="+", default=["onnx", "processes", "node"], help="what to measure")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")
    print(f"load average before: {os.getloadavg()[0]:.1f} (other jobs share these cores)")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if "onnx" in args.parts:
            bench_onnx(work, args.threads, args.repeats, dynamo=not args.torchscript_exporter)
        if "processes" in args.parts:
            bench_processes(work, args.studies, args.threads, args.process_counts)
        if "node" in args.parts:
            bench_node(work)
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
