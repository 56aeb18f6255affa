"""Helpers for the DICOM node tests: simulated studies, a node subprocess, a counting Storage SCP, Orthanc."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
from inference_testing import REPO, TINY_NETWORK, blob_volume, grid_affine
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from pet_simulator.dicom_export import SeriesInfo, write_mr_series, write_pet_series

SHAPE = (20, 24, 10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout_s: float, what: str, interval_s: float = 0.2):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def make_study(folder: Path, seed: int, with_mri: bool = True, missing_slice: int | None = None) -> dict:
    """A simulated PET (+ T1 MR) DICOM study (pet_simulator.dicom_export); returns its folders and UIDs."""
    pet = write_pet_series(
        blob_volume(SHAPE, seed=seed),
        grid_affine(),
        folder / "PET",
        SeriesInfo(patient_weight_kg=70.0, uid_entropy=["node-test", seed]),
        injected_dose_bq=2e8,
    )
    study = {"pet": folder / "PET", "study_uid": pet["study_uid"], "pet_series_uid": pet["series_uid"]}
    if with_mri:
        write_mr_series(
            blob_volume(SHAPE, peak=400.0, seed=seed + 100, background=5.0),
            grid_affine(),
            folder / "MR",
            SeriesInfo(
                study_uid=pet["study_uid"],
                frame_of_reference_uid=pet["frame_of_reference_uid"],
                uid_entropy=["node-test-mr", seed],
            ),
        )
        study["mri"] = folder / "MR"
    if missing_slice is not None:
        files = sorted((folder / "PET").iterdir())
        files[missing_slice].unlink()
    return study


def copy_series(source: Path, folder: Path, name: str, keep: slice = slice(None), **attributes) -> Path:
    """A copy of a series as another series of the same study (new UIDs from ``name``), its headers changed."""
    import pydicom
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True)
    series_uid = generate_uid(entropy_srcs=["copy", name, str(source)])
    for path in sorted(source.iterdir())[keep]:
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[series_uid, path.name])
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.save_as(folder / path.name)
    return folder


def study_files(study: dict) -> list[Path]:
    return sorted(f for key in ("pet", "mri") if key in study for f in Path(study[key]).iterdir())


def push(files: list[Path], port: int, calling_ae: str = "TESTSCU", called_ae: str = "M2DIFF") -> list[int]:
    """C-STORE files to the node; returns the statuses (raises if the association is rejected)."""
    import pydicom

    datasets = [pydicom.dcmread(f) for f in files]
    ae = AE(ae_title=calling_ae)
    for sop_class in {ds.SOPClassUID for ds in datasets}:
        ae.add_requested_context(sop_class)
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
    if not assoc.is_established:
        raise ConnectionRefusedError(f"association from {calling_ae} rejected")
    try:
        return [assoc.send_c_store(ds).Status for ds in datasets]
    finally:
        assoc.release()


def start_node(tmp_path: Path, weights: Path, destination_port: int, destination_ae: str, **settings):
    """Run ``python -m monai.bundle run`` on dicom_node.json plus an override file; returns (process, port)."""
    port = free_port()
    overrides = {
        "spool_dir": str(tmp_path / "spool"),
        "port": port,
        "host": "127.0.0.1",
        "allowed_calling_aes": ["ORTHANC", "TESTSCU"],
        "quiet_time_s": 1,
        "destination_port": destination_port,
        "destination_ae_title": destination_ae,
        "retry_interval_s": 1,
        "inference_overrides": {**TINY_NETWORK, "ckpt_path": str(weights)},
        **settings,
    }
    override_file = tmp_path / "node_overrides.json"
    override_file.write_text(json.dumps(overrides))
    configs = f"['bundle/configs/dicom_node.json','{override_file}']"
    command = [sys.executable, "-m", "monai.bundle", "run", "--bundle_root", "bundle", "--config_file", configs]
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONWARNINGS="ignore")
    log = open(tmp_path / "node.log", "a")
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    wait_for(lambda: "listening on" in (tmp_path / "node.log").read_text() or process.poll() is not None, 120, "node")
    assert process.poll() is None, (tmp_path / "node.log").read_text()[-3000:]
    return process, port


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


class CountingStorage:
    """A Storage SCP in this process that records every SOPInstanceUID it receives (duplicates included)."""

    def __init__(self, ae_title: str = "STORESCP", port: int | None = None) -> None:
        self.ae_title, self.port = ae_title, port or free_port()
        self.received: list[tuple[str, str]] = []  # (SeriesInstanceUID, SOPInstanceUID)
        self.datasets: list = []  # what was received, in order
        self.lock = threading.Lock()
        ae = AE(ae_title=ae_title)
        ae.supported_contexts = AllStoragePresentationContexts
        ae.add_supported_context(Verification)
        self.server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )

    def _store(self, event) -> int:
        with self.lock:
            self.received.append((event.dataset.SeriesInstanceUID, event.dataset.SOPInstanceUID))
            self.datasets.append(event.dataset)
        return 0x0000

    def shutdown(self) -> None:
        self.server.shutdown()


class Orthanc:
    """An Orthanc server on loopback ports with its own storage, knowing the node as modality ``m2diff``."""

    def __init__(self, folder: Path) -> None:
        self.http_port, self.dicom_port = free_port(), free_port()
        folder.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "test-pacs",
            "StorageDirectory": str(folder / "db"),
            "IndexDirectory": str(folder / "db"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": "ORTHANC",
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomModalities": {},
            "Plugins": [],
        }
        self.config_path = folder / "orthanc.json"
        self.config = config
        self.folder = folder
        self.process = None

    def start(self, node_port: int) -> None:
        self.config["DicomModalities"] = {"m2diff": ["M2DIFF", "127.0.0.1", node_port]}
        self.config_path.write_text(json.dumps(self.config))
        log = open(self.folder / "orthanc.log", "w")
        self.process = subprocess.Popen(["Orthanc", str(self.config_path)], stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: self._alive(), 60, "Orthanc")

    def _alive(self) -> bool:
        try:
            self.get("/system")
            return True
        except OSError:
            assert self.process.poll() is None, (self.folder / "orthanc.log").read_text()[-2000:]
            return False

    def request(self, path: str, data: bytes | None = None, method: str | None = None):
        url = f"http://127.0.0.1:{self.http_port}{path}"
        with urllib.request.urlopen(urllib.request.Request(url, data=data, method=method), timeout=60) as response:
            body = response.read()
        return body

    def get(self, path: str):
        return json.loads(self.request(path))

    def post(self, path: str, payload) -> dict:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return json.loads(self.request(path, data=data, method="POST"))

    def upload(self, files: list[Path]) -> str:
        """Store files in Orthanc; returns the Orthanc study id."""
        return [self.post("/instances", f.read_bytes()) for f in files][-1]["ParentStudy"]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


def series_values(orthanc: Orthanc, series_id: str, folder: Path) -> tuple[np.ndarray, list]:
    """Download a series from Orthanc; returns its values ``(columns, rows, slices)`` and the sorted datasets."""
    import pydicom

    folder.mkdir(parents=True, exist_ok=True)
    datasets = []
    for instance in orthanc.get(f"/series/{series_id}")["Instances"]:
        path = folder / f"{instance}.dcm"
        path.write_bytes(orthanc.request(f"/instances/{instance}/file"))
        datasets.append(pydicom.dcmread(path))
    datasets.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    values = np.stack([(d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept)).T for d in datasets], -1)
    return values, datasets


def measure_turnaround(folder: Path, quiet_time_s: float, threads: int) -> dict:
    """Push the sample study (DICOM export of ``bundle/sample``: 95-slice PET + T1) from Orthanc to a node running the
    shipped weights; returns the seconds from the push's start to the complete derived series in Orthanc."""
    import re

    from inference_testing import BUNDLE

    from pet_simulator.dicom_export import export_subject

    study = export_subject(BUNDLE / "sample", folder / "study", subject_id="sample")
    files = sorted((folder / "study").rglob("*.dcm"))
    slices = len(study["pet"]["sop_instance_uids"])
    orthanc = Orthanc(folder / "orthanc")
    settings = {"quiet_time_s": quiet_time_s, "threads": threads, "inference_overrides": {}}
    node, port = start_node(folder, None, orthanc.dicom_port, "ORTHANC", **settings)
    try:
        orthanc.start(port)
        study_id = orthanc.upload(files)
        start = time.perf_counter()
        orthanc.post("/modalities/m2diff/store", {"Resources": [study_id]})
        pushed = time.perf_counter() - start

        def result():
            series = [s for s in orthanc.get(f"/studies/{study_id}/series") if s["MainDicomTags"].get("SeriesNumber")]
            return [
                s for s in series if int(s["MainDicomTags"]["SeriesNumber"]) > 1000 and len(s["Instances"]) == slices
            ]

        wait_for(result, 900, "the derived series in Orthanc", interval_s=0.1)
        turnaround = time.perf_counter() - start
    finally:
        stop(node)
        orthanc.stop()
    log = (folder / "spool" / "audit.log").read_text()
    received = sorted(p.stat().st_mtime for p in (folder / "spool" / "done").rglob("*.dcm") if "_output" not in str(p))
    return {
        "instances": len(files),
        "quiet_time_s": quiet_time_s,
        "threads": threads,
        "push_s": round(pushed, 2),
        "largest_gap_between_instances_s": round(float(np.max(np.diff(received))), 3),
        "enhanced_in_s": float(re.search(r"enhanced in ([0-9.]+) s", log).group(1)),
        "turnaround_s": round(turnaround, 1),
        "load_average_1min": os.getloadavg()[0],
    }


if __name__ == "__main__":
    # PYTHONPATH=.:bundle python tests/dicom_node_testing.py QUIET_TIME_S THREADS [QUIET_TIME_S THREADS ...]
    # prints the node's turnaround on the sample study for each pair
    import tempfile

    for quiet, threads in zip(sys.argv[1::2], sys.argv[2::2]):
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(measure_turnaround(Path(tmp), float(quiet), int(threads))), flush=True)
