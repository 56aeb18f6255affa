"""The DICOM node's choice of series and its completeness test, from headers alone (no network, no inference)."""

from __future__ import annotations

import logging

import pydicom
import pytest
from dicom_node_testing import CountingStorage, copy_series, make_study, study_files
from inference_testing import BUNDLE
from pynetdicom.sop_class import BasicTextSRStorage, EnhancedMRImageStorage

from scripts.dicom_node import DicomNode, Spool, StudyFailed, StudyIncomplete, study_inputs
from scripts.dicom_node.series import declared_slices, read_series

SLICES = 10


def spool_files(spool: Spool, files) -> object:
    for path in files:
        ds = pydicom.dcmread(path)
        spool.store(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, path.read_bytes())
    return spool.folder("incoming") / ds.StudyInstanceUID


def uid(folder) -> str:
    return pydicom.dcmread(next(folder.iterdir())).SeriesInstanceUID


def test_series_chosen_from_the_headers_of_a_study_as_a_pacs_sends_it(tmp_path):
    """AC + NAC PET, a dynamic PET, an earlier derived series; localiser, T1, post-contrast T1, a coarser T1."""
    study = make_study(tmp_path / "study", seed=1)
    pet, mr = study["pet"], study["mri"]
    extra = tmp_path / "extra"
    series = [
        copy_series(pet, extra / "nac", "nac", CorrectedImage=["DECY", "SCAT", "RAN", "NORM"]),
        copy_series(pet, extra / "dynamic", "dyn", SeriesType=["DYNAMIC", "IMAGE"], NumberOfTimeSlices=1),
        copy_series(
            pet, extra / "ours", "ours", SeriesDescription="RESEARCH ONLY: M2Diff enhanced v0.8.3", SeriesNumber=1001
        ),
        copy_series(pet, extra / "derived", "derived", ImageType=["DERIVED", "SECONDARY"]),
        copy_series(mr, extra / "loc", "loc", keep=slice(0, 3), SeriesDescription="Localizer", MRAcquisitionType="2D"),
        copy_series(mr, extra / "post", "post", SeriesDescription="T1 MPRAGE POST GAD", ContrastBolusAgent="Gadovist"),
        copy_series(mr, extra / "coarse", "coarse", SeriesDescription="T1 MPRAGE", PixelSpacing=[2.5, 2.5]),
        copy_series(mr, extra / "flair", "flair", SeriesDescription="FLAIR 3D"),
    ]
    spool = Spool(tmp_path / "spool")
    folder = spool_files(spool, study_files(study) + [f for s in series for f in sorted(s.iterdir())])
    inputs = study_inputs(folder)
    assert (inputs.pet.name, inputs.mri.name) == (study["pet_series_uid"], uid(mr))
    assert (inputs.series, inputs.count) == (10, 9 * SLICES + 3)
    reasons = {note.split()[2]: note.split(": ", 1)[1] for note in inputs.notes}
    assert reasons == {
        uid(series[0]): "not attenuation-corrected (CorrectedImage DECY/SCAT/RAN/NORM)",
        uid(series[1]): "dynamic (SeriesType or NumberOfTimeSlices)",
        uid(series[2]): "a result of this node",
        uid(series[3]): "derived (ImageType DERIVED)",
        uid(series[4]): "a localiser",
        uid(series[5]): "post-contrast",
        uid(series[6]): f"a larger voxel than {uid(mr)}",
        uid(series[7]): "no T1 word in its description",
    }


def test_ambiguous_pet_and_enhanced_mr_are_refused_with_a_reason(tmp_path):
    study = make_study(tmp_path / "study", seed=2)
    second_ac = copy_series(study["pet"], tmp_path / "second", "second")
    spool = Spool(tmp_path / "spool")
    with pytest.raises(StudyFailed, match="2 static attenuation-corrected PET series"):
        study_inputs(spool_files(spool, study_files(study) + sorted(second_ac.iterdir())))

    other = make_study(tmp_path / "other", seed=3)
    enhanced_mr = copy_series(other["mri"], tmp_path / "emr", "emr", SOPClassUID=EnhancedMRImageStorage)
    files = sorted(other["pet"].iterdir()) + sorted(enhanced_mr.iterdir())
    with pytest.raises(StudyFailed, match="is Enhanced MR Image Storage .multi-frame., which the node does not read"):
        study_inputs(spool_files(spool, files))


def test_completeness_from_the_headers(tmp_path):
    study = make_study(tmp_path / "study", seed=4)
    pet, mr = sorted(study["pet"].iterdir()), sorted(study["mri"].iterdir())
    spool = Spool(tmp_path / "spool")
    folder = spool_files(spool, pet[:7] + mr)  # an interrupted push: the first 7 PET slices, in position order
    with pytest.raises(StudyIncomplete, match=f"PET series {study['pet_series_uid']}: 7 of 10 slices received"):
        study_inputs(folder, check_pixels=False)
    spool_files(spool, pet[7:])
    assert study_inputs(folder, check_pixels=False).count == 2 * SLICES

    other = make_study(tmp_path / "other", seed=5)
    mr = sorted(other["mri"].iterdir())  # MR declares no number of slices: a gap in the positions shows it
    folder = spool_files(spool, sorted(other["pet"].iterdir()) + mr[:4] + mr[5:])
    with pytest.raises(StudyIncomplete, match=r"T1 series .*: 9 of 10 slices received \(a gap in the slice positions"):
        study_inputs(folder, check_pixels=False)

    series = next(s for s in read_series(folder) if s.first.Modality == "PT")
    assert declared_slices(series) == SLICES
    series.first.NumberOfTimeSlices = 3
    assert declared_slices(series) == 3 * SLICES  # NumberOfSlices x NumberOfTimeSlices


def test_an_incomplete_study_waits_then_fails_with_the_count_and_only_a_failure_report_is_sent(tmp_path, caplog):
    destination = CountingStorage()
    try:
        destination_settings = {"host": "127.0.0.1", "port": destination.port, "ae_title": destination.ae_title}
        node = DicomNode(
            bundle_root=str(BUNDLE),
            spool_dir=str(tmp_path / "spool"),
            quiet_time_s=0,
            incomplete_timeout_s=3600,
            destination=destination_settings,
            report_failures=True,
        )
        study = make_study(tmp_path / "study", seed=6, with_mri=False)
        pet = sorted(study["pet"].iterdir())
        folder = spool_files(node.spool, pet[:4])
        with caplog.at_level(logging.INFO, logger="scripts.dicom_node"):
            node.poll()
            node.poll()  # nothing new: not read again, not logged again
        waiting = [r.message for r in caplog.records if "waiting for the rest" in r.message]
        assert waiting == [
            f"study {folder.name}: waiting for the rest: PET series {uid(study['pet'])}: 4 of 10 slices received"
        ]
        assert folder.is_dir()  # still incoming

        node.incomplete_timeout_s = 0
        node.poll()
    finally:
        destination.shutdown()
    reason = (node.spool.folder("failed") / folder.name / "reason.txt").read_text()
    assert reason.startswith("incomplete, no instance for 0 s, no result sent") and "4 of 10 slices received" in reason
    assert not folder.exists() and len(destination.datasets) == 1  # the report, no enhanced instance
    report = destination.datasets[0]
    assert (report.SOPClassUID, report.Modality, report.StudyInstanceUID) == (BasicTextSRStorage, "SR", folder.name)
    assert report.PatientID == pydicom.dcmread(pet[0]).PatientID and report.SeriesDescription.startswith("RESEARCH")
    assert report.ContentSequence[0].TextValue.startswith(reason.strip())
