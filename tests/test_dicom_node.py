"""The DICOM node: spool and study checks in-process; a real PACS (Orthanc) round trip; a SIGKILL during enhancement."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading

import nibabel as nib
import numpy as np
import pydicom
import pytest
from dicom_node_testing import (
    CountingStorage,
    Orthanc,
    free_port,
    make_study,
    push,
    series_values,
    start_node,
    stop,
    study_files,
    wait_for,
)
from inference_testing import BUNDLE, run_workflow, save_tiny_weights, write_datalist
from pynetdicom.sop_class import EnhancedPETImageStorage

from scripts.dicom_node import DicomNode, Spool, StudyFailed, study_inputs
from scripts.dicom_node.node import ENHANCED_MARKER, OUTPUT_DIR, STUDY_ID
from scripts.dicom_node.sender import SENT_LOG

SLICES = 10


def spool_study(spool: Spool, study: dict) -> os.PathLike:
    for path in study_files(study):
        ds = pydicom.dcmread(path)
        spool.store(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, path.read_bytes())
    return spool.folder("incoming") / study["study_uid"]


def test_spool_groups_by_study_and_checks_each_study(tmp_path):
    spool = Spool(tmp_path / "spool")
    with pytest.raises(ValueError, match="invalid StudyInstanceUID"):
        spool.store("../escape", "1.2", "1.2.3", b"")
    guided = spool_study(spool, make_study(tmp_path / "a", seed=1))
    assert len(list(guided.iterdir())) == 2  # the PET and MR series folders
    assert spool.quiet_studies(3600) == [] and [s for s, _ in spool.quiet_studies(0)] == [guided]
    inputs = study_inputs(spool.claim(guided))
    assert (inputs.count, inputs.series, inputs.notes) == (2 * SLICES, 2, []) and inputs.pet != inputs.mri
    assert not guided.exists() and list(spool.folder("processing").iterdir())

    free = spool_study(spool, make_study(tmp_path / "b", seed=2, with_mri=False))
    assert study_inputs(free).mri is None  # MRI-free

    mr_only = make_study(tmp_path / "c", seed=3)
    shutil.rmtree(mr_only.pop("pet"))
    with pytest.raises(StudyFailed, match="no PET series"):
        study_inputs(spool_study(spool, mr_only))

    enhanced_pet = make_study(tmp_path / "d", seed=4, with_mri=False)
    for path in study_files(enhanced_pet):  # a multi-frame Enhanced PET: not read by the bundle
        ds = pydicom.dcmread(path)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = EnhancedPETImageStorage
        ds.save_as(path)
    with pytest.raises(StudyFailed, match=f"unsupported SOP class {EnhancedPETImageStorage}"):
        study_inputs(spool_study(spool, enhanced_pet))

    corrupt = spool_study(spool, make_study(tmp_path / "e", seed=5, with_mri=False))
    victim = sorted(next(corrupt.iterdir()).iterdir())[3]
    victim.write_bytes(victim.read_bytes()[:300])
    with pytest.raises(StudyFailed, match=f"corrupt file {victim.name}"):
        study_inputs(corrupt)
    claimed = spool.claim(corrupt)
    failed = spool.move(claimed, "failed", f"corrupt file {claimed}/x.dcm")
    assert (failed / "reason.txt").read_text() == f"corrupt file {failed}/x.dcm\n"  # where the study now is


@pytest.mark.skipif(shutil.which("Orthanc") is None, reason="the Orthanc binary is absent (apt-get install orthanc)")
def test_orthanc_round_trip(tmp_path):
    weights = save_tiny_weights(tmp_path / "model.pt")
    studies = {
        "guided": make_study(tmp_path / "guided", seed=1),
        "free": make_study(tmp_path / "free", seed=2, with_mri=False),
        "broken": make_study(tmp_path / "broken", seed=3, missing_slice=4),
    }
    orthanc = Orthanc(tmp_path / "orthanc")
    settings = {"incomplete_timeout_s": 4, "report_failures": True}
    node, port = start_node(tmp_path, weights, orthanc.dicom_port, "ORTHANC", **settings)
    try:
        orthanc.start(port)
        assert orthanc.post("/modalities/m2diff/echo", {}) == {}  # C-ECHO from the PACS
        with pytest.raises(ConnectionRefusedError):  # an AE title the node does not know
            push(study_files(studies["free"])[:1], port, calling_ae="INTRUDER")
        ids = {name: orthanc.upload(study_files(study)) for name, study in studies.items()}
        for name in ids:  # the PACS pushes the three studies at once
            orthanc.post("/modalities/m2diff/store", {"Resources": [ids[name]], "Asynchronous": True})

        def derived(name, modality="PT"):
            return [
                s
                for s in orthanc.get(f"/studies/{ids[name]}/series")
                if "M2Diff" in s["MainDicomTags"].get("SeriesDescription", "")  # "RESEARCH ONLY: M2Diff ..."
                and s["MainDicomTags"].get("Modality") == modality
            ]

        def arrived():
            return all(len(derived(n)) == 1 and len(derived(n)[0]["Instances"]) == SLICES for n in ("guided", "free"))

        wait_for(arrived, 240, "the derived series in Orthanc")
        failed = wait_for(lambda: list((tmp_path / "spool" / "failed").iterdir()), 60, "the broken study to fail")
        reports = wait_for(lambda: derived("broken", "SR"), 30, "the failure report in Orthanc")
        other_reports = [derived(name, "SR") for name in ("guided", "free")]
        orthanc_series = {name: derived(name) for name in ids}
        downloaded = {n: series_values(orthanc, s[0]["ID"], tmp_path / n) for n, s in orthanc_series.items() if s}
    finally:
        stop(node)
        orthanc.stop()
    log = (tmp_path / "node.log").read_text()

    assert orthanc_series["broken"] == []  # never sent
    assert [len(s["Instances"]) for s in reports] == [1] and other_reports == [[], []]  # a report for the failure only
    assert [f.name for f in failed] == [studies["broken"]["study_uid"]]
    assert (
        "PET series" in (failed[0] / "reason.txt").read_text()
        and "9 of 10 slices received" in (failed[0] / "reason.txt").read_text()
    )
    counts = {word: log.count(f": {word} ") for word in ("received", "enhanced", "sent", "failed:")}
    assert counts == {"received": 3, "enhanced": 2, "sent": 2, "failed:": 1}, log[-3000:]  # one line each

    # the MRI-guided study: its geometry, new series UID, same study UID, values of inference.json's NIfTI output
    study = studies["guided"]
    values, datasets = downloaded["guided"]
    sources = sorted((pydicom.dcmread(p) for p in study["pet"].iterdir()), key=lambda d: d.ImagePositionPatient[2])
    for got, source in zip(datasets, sources, strict=True):
        assert got.StudyInstanceUID == study["study_uid"] and got.SeriesInstanceUID != study["pet_series_uid"]
        for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns"):
            assert got.get(keyword) == source.get(keyword), keyword
        assert got.FrameOfReferenceUID == source.FrameOfReferenceUID
    datalist = write_datalist([{"id": "guided", "pet": str(study["pet"]), "mri": str(study["mri"])}], tmp_path / "d")
    run_workflow(datalist, tmp_path / "nifti", weights)
    expected = nib.load(tmp_path / "nifti" / "guided" / "guided_enhanced.nii.gz").get_fdata()
    np.testing.assert_allclose(values, expected, rtol=0, atol=float(np.abs(expected).max()) / 20000)


def test_sigkill_while_enhancing_then_restart_sends_each_instance_once(tmp_path):
    weights = save_tiny_weights(tmp_path / "model.pt")
    study = make_study(tmp_path / "study", seed=1)
    destination = CountingStorage()
    processing = tmp_path / "spool" / "processing"
    try:
        node, port = start_node(tmp_path, weights, destination.port, destination.ae_title)
        try:
            assert set(push(study_files(study), port)) == {0x0000}  # acknowledged = on disk
            claimed = wait_for(lambda: list(processing.iterdir()), 60, "the study to be claimed", interval_s=0.02)
            os.kill(node.pid, signal.SIGKILL)
            node.wait(timeout=30)
        finally:
            stop(node)
        assert not (claimed[0] / ENHANCED_MARKER).exists() and destination.received == []  # killed while enhancing

        node, _ = start_node(tmp_path, weights, destination.port, destination.ae_title)
        try:
            done = wait_for(lambda: list((tmp_path / "spool" / "done").iterdir()), 120, "the study after restart")
        finally:
            stop(node)
    finally:
        destination.shutdown()
    assert [d.name for d in done] == [study["study_uid"]] and list(processing.iterdir()) == []
    sop_uids = [sop for _, sop in destination.received]
    assert len(sop_uids) == len(set(sop_uids)) == SLICES and len({series for series, _ in destination.received}) == 1
    assert "resuming after a restart" in (tmp_path / "node.log").read_text()


def test_sigkill_mid_push_then_the_pacs_pushes_again_and_one_complete_series_is_sent(tmp_path):
    weights = save_tiny_weights(tmp_path / "model.pt")
    study = make_study(tmp_path / "study", seed=8)
    incoming = tmp_path / "spool" / "incoming"
    destination = CountingStorage()
    try:
        node, port = start_node(tmp_path, weights, destination.port, destination.ae_title)

        def push_until_killed():
            with contextlib.suppress(Exception):  # the association breaks when the node is killed
                push(study_files(study), port)

        pushing = threading.Thread(target=push_until_killed)
        try:
            pushing.start()
            wait_for(lambda: len(list(incoming.glob("*/*/*.dcm"))) >= 4, 60, "4 instances", interval_s=0.005)
            os.kill(node.pid, signal.SIGKILL)
            node.wait(timeout=30)
            pushing.join(timeout=60)
        finally:
            stop(node)
        spooled = len(list(incoming.glob("*/*/*.dcm")))
        assert 4 <= spooled < 2 * SLICES and destination.received == []  # killed mid-push

        node, port = start_node(tmp_path, weights, destination.port, destination.ae_title)
        try:
            wait_for(lambda: "waiting for the rest" in (tmp_path / "spool" / "audit.log").read_text(), 30, "waiting")
            assert set(push(study_files(study), port)) == {0x0000}  # the PACS sends the study again
            wait_for(lambda: list((tmp_path / "spool" / "done").iterdir()), 120, "the study")
        finally:
            stop(node)
    finally:
        destination.shutdown()
    assert len({series for series, _ in destination.received}) == 1
    assert len({sop for _, sop in destination.received}) == len(destination.received) == SLICES


def enhanced_study(spool: Spool, study: dict, sent: int = 0):
    """A claimed study as a node leaves it after enhancing (marker, derived series) and sending ``sent`` instances."""
    folder = spool.claim(spool_study(spool, study))
    derived = folder / OUTPUT_DIR / STUDY_ID / f"{STUDY_ID}_enhanced_dicom"
    shutil.copytree(study["pet"], derived)
    (folder / ENHANCED_MARKER).touch()
    sop_uids = sorted(pydicom.dcmread(p).SOPInstanceUID for p in derived.iterdir())
    (folder / SENT_LOG).write_text("".join(f"{uid}\n" for uid in sop_uids[:sent]))
    return folder, sop_uids


def test_resumed_send_skips_what_was_sent_and_results_wait_for_a_dead_destination(tmp_path):
    destination = CountingStorage()
    try:
        settings = dict(bundle_root=str(BUNDLE), spool_dir=str(tmp_path / "spool"), retry_interval_s=0)
        node = DicomNode(
            destination={"host": "127.0.0.1", "port": destination.port, "ae_title": "STORESCP"}, **settings
        )
        folder, sop_uids = enhanced_study(node.spool, make_study(tmp_path / "a", seed=1, with_mri=False), sent=3)
        (folder / "reason.txt").write_text("an earlier attempt failed\n")  # retried from failed/
        node.process(folder)
    finally:
        destination.shutdown()
    assert sorted(sop for _, sop in destination.received) == sop_uids[3:]  # killed after 3: the other 7, once
    assert [p.name for p in node.spool.folder("done").iterdir()] == [folder.name]
    assert not (node.spool.folder("done") / folder.name / "reason.txt").exists()  # the earlier failure's is gone

    port = free_port()  # a destination that is down, then comes back
    node = DicomNode(destination={"host": "127.0.0.1", "port": port, "ae_title": "LATER"}, **settings)
    folder, sop_uids = enhanced_study(node.spool, make_study(tmp_path / "b", seed=2, with_mri=False))
    node.process(folder)
    node.resend()
    assert folder.is_dir() and not (node.spool.folder("done") / folder.name).exists()  # waits in processing/
    later = CountingStorage("LATER", port=port)
    try:
        node.resend()
    finally:
        later.shutdown()
    assert sorted(sop for _, sop in later.received) == sop_uids and not folder.exists()
    assert (node.spool.folder("done") / folder.name).is_dir()

    dead = {"host": "127.0.0.1", "port": free_port(), "ae_title": "NOBODY"}
    node = DicomNode(destination=dead, send_timeout_s=0, **settings)
    folder, _ = enhanced_study(node.spool, make_study(tmp_path / "c", seed=3, with_mri=False))
    node.process(folder)
    reason = (node.spool.folder("failed") / folder.name / "reason.txt").read_text()
    assert reason.startswith(f"could not send to NOBODY@127.0.0.1:{dead['port']} for 0 s: could not associate")
