"""Unknown ``--key`` options of ``python -m monai.bundle run`` stop the run with one line naming the closest key."""

from __future__ import annotations

import os
import subprocess
import sys

from workflow_testing import BUNDLE_ROOT, config_files

from scripts.cli import unknown_keys


def _argv(configs: list[str], *options: str) -> list[str]:
    return ["monai/bundle/__main__.py", "run", "--config_file", str(config_files(*configs)), *options]


def test_unknown_keys_name_the_closest_known_key():
    messages = unknown_keys(_argv(["inference"], "--num_sample", "4", "--bundle_root", "bundle", "--seed=1"))
    assert len(messages) == 1 and "--num_sample;" in messages[0] and "--num_samples?" in messages[0]
    messages = unknown_keys(
        _argv(["inference", "train", "evaluate"], "--max_epoch", "3", "--validate#dataset#cache_rate", "0")
    )
    assert len(messages) == 1 and "--max_epochs?" in messages[0]  # nested ids of the configs are known too
    assert (
        unknown_keys(_argv(["inference", "train"], "--eval_split", "test")) != []
    )  # evaluate.json's keys only with it
    assert (
        unknown_keys(_argv(["inference", "train", "evaluate"], "--eval_split", "test", "--meta_file", "m.json")) == []
    )
    (removed,) = unknown_keys(_argv(["inference"], "--save_uncertainty", "true"))
    assert removed.startswith("option --save_uncertainty removed in 0.4.0") and "No uncertainty map" in removed


def test_typo_stops_inference_before_any_work(tmp_path):
    output_dir = tmp_path / "out"
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json"]
    command += ["--bundle_root", ".", "--output_dir", str(output_dir), "--num_sample", "4"]
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(command, cwd=BUNDLE_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if "num_sample" in line]
    assert errors == [
        "unknown option --num_sample; did you mean --num_samples? (see the config's _desc_ for the options)"
    ]
    assert "Traceback" not in result.stderr + result.stdout
    assert not output_dir.exists()  # stopped before any work


def test_inference_console_names_every_file_written_and_no_codec_notice(tmp_path):
    """The documented command (QC PNG on): the console names each file written; MONAI's nvImageCodec notice (nothing
    a user can act on) is not printed, its config-security warning once."""
    output_dir = tmp_path / "out"
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json"]
    command += ["--bundle_root", ".", "--output_dir", str(output_dir), "--save_qc_png", "true"]
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(command, cwd=BUNDLE_ROOT, env=env, capture_output=True, text=True, timeout=600)
    console = result.stdout + result.stderr
    assert result.returncode == 0, console
    written = sorted(str(path) for path in output_dir.rglob("*") if path.is_file())
    assert written and all(path in console for path in written), (written, console)
    assert {os.path.basename(path) for path in written} >= {"sample_qc.png", "sample_enhanced.nii.gz", "summary.json"}
    assert "nvImageCodec" not in console
    assert console.count("Only proceed if this config is from a source you trust") == 1
    assert not [line for line in console.splitlines() if "Warning" in line or " - WARNING - " in line], console


def test_quiet_notices_silence_only_the_codec_notice(caplog):
    import logging
    import warnings

    from monai.data.image_reader import NvImgCodecPydicomReader

    from scripts.cli import quiet_notices

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_notices()
        NvImgCodecPydicomReader()  # says nvImageCodec is missing, as a log record and as a warning
        warnings.warn("another warning", UserWarning)
        logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").warning("another message")
    assert [str(w.message) for w in caught] == ["another warning"]
    assert "nvImageCodec" not in caplog.text and "another message" in caplog.text
