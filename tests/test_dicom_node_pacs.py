"""The DICOM node against a real PACS (Orthanc): an interrupted push, a PACS that is down and comes back, a re-push,
a wrong called AE title."""

from __future__ import annotations

import shutil
import time

import pydicom
import pytest
from dicom_node_testing import Orthanc, make_study, push, start_node, stop, study_files, wait_for
from inference_testing import save_tiny_weights

from scripts.dicom_node.node import AUDIT_LOG

SLICES = 10


@pytest.mark.skipif(shutil.which("Orthanc") is None, reason="the Orthanc binary is absent (apt-get install orthanc)")
def test_interrupted_push_pacs_down_then_back_and_a_re_push_leave_one_complete_derived_series(tmp_path):
    weights = save_tiny_weights(tmp_path / "model.pt")
    study = make_study(tmp_path / "study", seed=7)
    pet = sorted(study["pet"].iterdir())
    orthanc = Orthanc(tmp_path / "orthanc")
    node, port = start_node(tmp_path, weights, orthanc.dicom_port, "ORTHANC", retry_interval_s=1)
    audit = tmp_path / "spool" / AUDIT_LOG

    def in_pacs() -> list:
        """The study's series in Orthanc."""
        found = orthanc.post("/tools/lookup", study["study_uid"].encode())
        return orthanc.get(f"/studies/{found[0]['ID']}/series") if found else []

    try:
        orthanc.start(port)
        assert push(pet[:4], port) == [0x0000] * 4  # the sender stops after 4 of the 10 PET slices
        wait_for(lambda: "waiting for the rest" in audit.read_text(), 30, "the node to wait for the rest")
        time.sleep(3)  # three quiet times (1 s) and many polls later
        assert in_pacs() == [] and list((tmp_path / "spool" / "processing").iterdir()) == []

        orthanc.stop()  # the PACS goes down; the rest of the study arrives
        assert push(pet[4:] + sorted(study["mri"].iterdir()), port) == [0x0000] * (2 * SLICES - 4)
        wait_for(lambda: "could not send" in audit.read_text(), 60, "a failed send while the PACS is down")
        orthanc.start(port)
        wait_for(
            lambda: in_pacs() and len(in_pacs()[0]["Instances"]) == SLICES, 60, "the result after the PACS is back"
        )

        assert set(push(study_files(study), port)) == {0x0000}  # the whole study again
        wait_for(lambda: audit.read_text().count(": sent ") == 2, 60, "the re-pushed study's result")
        series = in_pacs()

        with pytest.raises(ConnectionRefusedError):
            push(pet[:1], port, called_ae="WRONGAE")
    finally:
        stop(node)
        orthanc.stop()
    log = audit.read_text()
    assert len(series) == 1 and len(series[0]["Instances"]) == SLICES  # one derived series, complete
    tags = series[0]["MainDicomTags"]
    assert tags["SeriesDescription"].startswith("RESEARCH ONLY: M2Diff") and tags["SeriesNumber"] == "1001"
    sent = [line.split("derived series ")[1].split()[0] for line in log.splitlines() if ": sent " in line]
    assert sent == [tags["SeriesInstanceUID"]] * 2  # both results carry the same identity
    assert f"waiting for the rest: PET series {study['pet_series_uid']}: 4 of 10 slices received" in log
    assert "association rejected (called AE is not M2DIFF): calling AE TESTSCU, called AE WRONGAE" in log
    assert log.count(": received ") == 2 and log.count(": enhanced ") == 2 and "failed" not in log
    assert "stopping (SIGTERM)" in log and log.rstrip().endswith("DICOM node M2DIFF stopped")
    assert pydicom.dcmread(pet[0]).SeriesNumber == 1  # the offset is the source's + 1000
