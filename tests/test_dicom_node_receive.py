"""The DICOM node's receiving side in-process: acknowledged means on disk, error statuses, the spool under a
concurrent poller, association checks in the audit log, start-up checks."""

from __future__ import annotations

import errno
import logging
import re
import threading
import time

import pydicom
import pytest
from dicom_node_testing import CountingStorage, free_port, make_study, push, wait_for
from inference_testing import BUNDLE, save_tiny_weights

import scripts.dicom_node.spool as spool_module
from scripts.dicom_node import DicomNode, Spool
from scripts.dicom_node.node import AUDIT_LOG


@pytest.fixture
def node(tmp_path):
    """A node receiving on a loopback port (no processing loop), with its audit log."""
    destination = {"host": "127.0.0.1", "port": free_port(), "ae_title": "PACS"}
    node = DicomNode(
        bundle_root=str(BUNDLE),
        spool_dir=str(tmp_path / "spool"),
        host="127.0.0.1",
        port=free_port(),
        allowed_calling_aes=["TESTSCU"],
        destination=destination,
    )
    package = logging.getLogger("scripts.dicom_node")
    handlers = list(package.handlers)
    node.open_audit_log()
    node.start()
    yield node
    node.receiver.shutdown()
    for handler in set(package.handlers) - set(handlers):
        package.removeHandler(handler)
        handler.close()


def audit(node: DicomNode) -> str:
    return (node.spool.root / AUDIT_LOG).read_text()


def test_success_only_after_the_instance_is_on_disk_and_errors_otherwise(node, tmp_path, monkeypatch):
    files = sorted(make_study(tmp_path / "study", seed=1, with_mri=False)["pet"].iterdir())
    ds = pydicom.dcmread(files[0])
    stored = node.spool.folder("incoming") / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
    original = spool_module.write_durably

    def slow_write(data, path):
        time.sleep(0.5)
        return original(data, path)

    monkeypatch.setattr(spool_module, "write_durably", slow_write)
    start = time.perf_counter()
    assert push(files[:1], node.port) == [0x0000]
    assert stored.is_file() and time.perf_counter() - start >= 0.5  # the reply waited for the slowed write
    assert pydicom.dcmread(stored).SOPInstanceUID == ds.SOPInstanceUID

    def full_disk(data, path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(spool_module, "write_durably", full_disk)
    assert push(files[1:2], node.port) == [0xA700]  # out of resources, never a success
    monkeypatch.setattr(spool_module, "write_durably", original)

    bad = pydicom.dcmread(files[2])
    bad.SOPInstanceUID = "1.2.x.../../escape"
    bad.save_as(tmp_path / "bad.dcm")
    assert push([tmp_path / "bad.dcm"], node.port) == [0xC000]
    assert sorted(p.name for p in stored.parent.iterdir()) == [stored.name]  # the refused two are not there
    log = audit(node)
    assert "could not spool an instance from TESTSCU: [Errno 28] No space left on device" in log
    assert "refused an instance from TESTSCU: invalid SOP '1.2.x.../../escape'" in log


def test_associations_in_the_audit_log_and_the_called_ae_title_enforced(node, tmp_path):
    files = sorted(make_study(tmp_path / "study", seed=2, with_mri=False)["pet"].iterdir())
    with pytest.raises(ConnectionRefusedError):
        push(files[:1], node.port, called_ae="WRONGAE")
    with pytest.raises(ConnectionRefusedError):
        push(files[:1], node.port, calling_ae="INTRUDER")
    assert push(files[:2], node.port) == [0x0000, 0x0000]
    study = pydicom.dcmread(files[0]).StudyInstanceUID
    peer = r"peer 127\.0\.0\.1:\d+"
    expected = [
        rf"association rejected \(called AE is not M2DIFF\): calling AE TESTSCU, called AE WRONGAE, {peer}",
        rf"association rejected \(calling AE not in allowed_calling_aes\): calling AE INTRUDER, called AE M2DIFF, "
        rf"{peer}",
        rf"association accepted: calling AE TESTSCU, called AE M2DIFF, {peer}",
        rf"study {study}: first instance received from calling AE TESTSCU, called AE M2DIFF, {peer}",
        rf"association released: calling AE TESTSCU, called AE M2DIFF, {peer}; 2 instances stored",
    ]
    for line in expected:
        wait_for(lambda line=line: re.search(line, audit(node)), 5, line)  # events are handled in the server's threads
    assert audit(node).count("first instance received") == 1  # once per study
    assert len(list(node.spool.folder("incoming").glob("*/*/*.dcm"))) == 2


def test_spool_never_loses_an_instance_stored_while_the_poller_claims(tmp_path):
    """Stores in one thread, the poller listing, dating and claiming quiet studies in another, 600 times over."""
    spool = Spool(tmp_path / "spool")
    errors, done = [], threading.Event()

    def store():
        try:
            for n in range(600):
                spool.store(f"1.2.{n % 3}", f"1.2.{n % 3}.1", f"1.2.{n % 3}.1.{n}", b"instance")
        except Exception as exc:  # noqa: B902 - any error fails the test
            errors.append(exc)
        finally:
            done.set()

    def poll():
        try:
            while not done.is_set():
                for study, newest in spool.quiet_studies(0):
                    spool.claim(study, newest)
        except Exception as exc:  # noqa: B902 - any error fails the test
            errors.append(exc)

    threads = [threading.Thread(target=store), threading.Thread(target=poll)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    claimed = list(spool.folder("processing").glob("*/*/*.dcm"))
    waiting = list(spool.folder("incoming").glob("*/*/*.dcm"))
    assert len(claimed) + len(waiting) == 600 and len({p.name for p in claimed + waiting}) == 600
    assert len(list(spool.folder("processing").iterdir())) > 3  # the poller did claim studies while they grew


def test_a_study_is_not_claimed_when_an_instance_arrived_after_it_was_listed(tmp_path):
    spool = Spool(tmp_path / "spool")
    spool.store("1.2.3", "1.2.3.4", "1.2.3.4.1", b"first")
    [(study, newest)] = spool.quiet_studies(0)
    time.sleep(0.02)
    spool.store("1.2.3", "1.2.3.4", "1.2.3.4.2", b"late")
    assert spool.claim(study, newest) is None and study.is_dir()
    [(study, newest)] = spool.quiet_studies(0)
    assert spool.claim(study, newest) == spool.folder("processing") / "1.2.3"


def identity_onnx(path):
    """A one-node ONNX graph (the start-up check only loads it)."""
    import onnx
    from onnx import TensorProto, helper

    tensor = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1]) for name in ("x", "y")]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity", tensor[:1], tensor[1:])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_start_up_checks(tmp_path, caplog):
    weights = save_tiny_weights(tmp_path / "model.pt")
    destination = CountingStorage()
    try:
        settings = dict(
            bundle_root=str(BUNDLE),
            spool_dir=str(tmp_path / "spool"),
            destination={"host": "127.0.0.1", "port": destination.port, "ae_title": destination.ae_title},
        )
        node = DicomNode(inference_config_file="configs/inference.json", **settings)
        assert node.inference_config_file == [str(BUNDLE / "configs" / "inference.json")]  # the bundle root's
        with pytest.raises(FileNotFoundError, match="configs/inferense.json not found .relative paths are resolved"):
            DicomNode(inference_config_file="configs/inferense.json", **settings).check()
        with pytest.raises(ValueError, match="inference_overrides: option num_samples: got 'four', expected"):
            DicomNode(inference_overrides={"num_samples": "four"}, **settings).check()  # before any study comes
        with pytest.raises(FileNotFoundError, match="network weights .*absent.pt not found"):
            DicomNode(inference_overrides={"ckpt_path": str(tmp_path / "absent.pt")}, **settings).check()
        (tmp_path / "damaged.pt").write_bytes(weights.read_bytes()[:1000])
        with pytest.raises(RuntimeError, match="damaged.pt cannot be loaded"):
            DicomNode(  # a relative ckpt_path: in the bundle root
                inference_overrides={"ckpt_path": "damaged.pt"},
                inference_config_file=str(BUNDLE / "configs" / "inference.json"),
                **{**settings, "bundle_root": str(tmp_path)},
            ).check()
        onnx_settings = {**settings, "inference_config_file": ["configs/inference.json", "configs/inference_onnx.json"]}
        onnx_node = DicomNode(
            inference_overrides={"onnx_path": str(identity_onnx(tmp_path / "m.onnx"))}, **onnx_settings
        )
        onnx_node.check()  # an ONNX graph is loaded by ONNX Runtime, not torch
        assert onnx_node.inference_overrides["onnx_threads"] == 1  # the node's threads option
        (tmp_path / "bad.onnx").write_bytes(b"not a graph")
        with pytest.raises(RuntimeError, match="bad.onnx cannot be loaded"):
            DicomNode(inference_overrides={"onnx_path": str(tmp_path / "bad.onnx")}, **onnx_settings).check()
        with caplog.at_level(logging.INFO, logger="scripts.dicom_node"):
            DicomNode(inference_overrides={"ckpt_path": str(weights)}, **settings).check()
    finally:
        destination.shutdown()
    assert f"destination STORESCP@127.0.0.1:{destination.port} answers C-ECHO" in caplog.text
    assert re.search(rf"network weights {weights}: sha256 [0-9a-f]{{64}}$", caplog.text, re.M)
    (tmp_path / "model.pt.sha256").write_text("0" * 64 + "  model.pt\n")  # a recorded digest that differs
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="scripts.dicom_node"):
        DicomNode(inference_overrides={"ckpt_path": str(weights)}, **settings).check()  # the PACS is down: a warning
    assert [r.levelname for r in caplog.records if "does not answer C-ECHO" in r.message] == ["WARNING"]
    assert [r.levelname for r in caplog.records if f"not the {'0' * 64} recorded" in r.message] == ["WARNING"]


def test_audit_log_rotates_and_pynetdicom_chatter_is_off_by_default(tmp_path):
    package, network = logging.getLogger("scripts.dicom_node"), logging.getLogger("pynetdicom")
    handlers, level = list(package.handlers), network.level
    destination = {"host": "127.0.0.1", "port": free_port(), "ae_title": "PACS"}
    try:
        quiet = DicomNode(bundle_root=str(BUNDLE), spool_dir=str(tmp_path / "a"), destination=destination)
        path = quiet.open_audit_log()
        assert network.level == logging.WARNING and path == tmp_path / "a" / AUDIT_LOG
        [added] = set(package.handlers) - set(handlers)
        assert (added.maxBytes, added.backupCount) == (10_000_000, 5)
        quiet.open_audit_log()
        assert len(package.handlers) == len(handlers) + 1  # opened once
        chatty = DicomNode(
            bundle_root=str(BUNDLE), spool_dir=str(tmp_path / "b"), network_log=True, destination=destination
        )
        chatty.open_audit_log()
        assert network.level == logging.DEBUG
    finally:
        for handler in set(package.handlers) - set(handlers):
            package.removeHandler(handler)
            handler.close()
        network.setLevel(level)
