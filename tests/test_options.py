"""Every option of inference.json, train.json and evaluate.json with a bad value stops the run before any study is
read, with one line naming the option, the value and what is expected."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from workflow_testing import BUNDLE_ROOT, config_files, make_workflow

from scripts.cli import user_error
from scripts.option_checks import (
    EXPECTED,
    Choice,
    Flag,
    Number,
    Numbers,
    Path,
    Paths,
    PerDoseLevel,
    Text,
    option_problems,
)

#: the workflows tested, by the configs they merge
WORKFLOWS = {
    "inference": (["inference"], "infer"),
    "train": (["inference", "train"], "train"),
    "evaluate": (["inference", "train", "evaluate"], "eval"),
}
#: config keys that are not options a user sets
NOT_OPTIONS = {"bundle_root", "imports", "image_keys", "checkpoint_runs", "handlers", "run", "initialize", "finalize"}
NOT_OPTIONS |= {"option_check"}
NOT_OPTIONS |= {"what", "network_def", "preprocessing", "postprocessing", "diffusion_sampler"}
#: options checked by a later step of the config, naming them
CHECKED_ELSEWHERE = {"model_file": "scripts.training.require_model_file, once method is known"}


def _merged_config(name: str) -> dict:
    config: dict = {}
    for file in config_files(*WORKFLOWS[name][0]):
        with open(file) as f:
            config.update(json.load(f))
    return config


def _checked_options(config: dict) -> dict:
    entries = config.get("initialize", []) + config.get("run", [])
    entries = [config.get(item[1:], item) if isinstance(item, str) and item[:1] == "@" else item for item in entries]
    checks = [item for item in entries if isinstance(item, dict) and item["_target_"].endswith("check_options")]
    return {name: value for check in checks for name, value in check["options"].items()}


def _is_plain(value) -> bool:
    if isinstance(value, list):
        return all(_is_plain(item) for item in value)
    return not isinstance(value, dict) and not (isinstance(value, str) and value[:1] in "$@%")


def _options(name: str) -> list[str]:
    """The config's knobs: its ``_desc_`` names, its top-level plain values and the options it checks (evaluate.json:
    its own and the training ones it uses)."""
    with open(config_files(name)[0]) as f:
        config = json.load(f)
    described = {knob.strip() for names in config["_desc_"] for knob in names.split(",")}
    plain = {key for key, value in config.items() if _is_plain(value)}
    return sorted((described | plain | set(_checked_options(_merged_config(name)))) - NOT_OPTIONS - {"_desc_"})


CASES = [(name, option) for name in WORKFLOWS for option in _options(name)]


def _bad_value(option: str):
    expected = EXPECTED.get(option)
    if isinstance(expected, (Number, Numbers, PerDoseLevel)):
        return "four"
    if isinstance(expected, Flag):
        return "maybe"
    if isinstance(expected, Choice):
        return "nonsense"
    if isinstance(expected, Text) or (isinstance(expected, Path) and not expected.exists):
        return 5  # Fire reads --method 5 as a number
    if isinstance(expected, Paths):
        return ["/no/such/cohort"]
    return "/no/such/file.json"


@pytest.mark.parametrize("config_name, option", CASES, ids=[f"{name}-{option}" for name, option in CASES])
def test_bad_value_stops_with_one_line_naming_it(config_name, option, tmp_path):
    names, workflow_type = WORKFLOWS[config_name]
    overrides = {"dataset_dir": str(tmp_path)} if config_name != "inference" else {}
    (tmp_path / "datalist.json").write_text("{}")
    overrides[option] = _bad_value(option)
    workflow = make_workflow(names, workflow_type, **overrides)
    with pytest.raises(Exception) as raised:
        workflow.initialize()
        workflow.run()
    lines = str(user_error(raised.value)).splitlines()
    assert len([line for line in lines if option in line]) == 1, lines
    if option not in CHECKED_ELSEWHERE:
        assert lines == [f"option {option}: got {overrides[option]!r}, expected {EXPECTED.get(option)}"] or (
            config_name == "evaluate" and lines[0].startswith("option method: got 5, expected 'm2diff', ")
        )


def test_every_checked_option_is_described():
    for name in WORKFLOWS:
        config = _merged_config(name)
        assert set(_checked_options(config)) <= set(EXPECTED), name
        assert set(_options(name)) - set(_checked_options(config)) <= set(CHECKED_ELSEWHERE), name


def test_values_the_defaults_and_the_docs_use_pass():
    good = {"num_samples": 4, "warm_start_timestep": "none", "consistency_fwhm_mm": "auto", "save_dicom": "false"}
    good |= {
        "output_units": "SUV",
        "eval_dose_reduction_factors": [20, "random"],
        "gaussian_fwhm_mm": {100: 6.0, "20": 4},
    }
    good |= {"patch_size": [32, 32], "ema_decay": 0, "resume_ckpt": None, "eval_max_studies": None}
    assert option_problems(good) == []
    assert option_problems({"warm_start_timestep": "500"}) == []  # the config reads it with int()
    assert "bundle/configs/simulate.json" in str(EXPECTED["dataset_dir"])  # a missing cohort says how to make one
    bad = {"num_inference_steps": 0, "seed": True, "ema_decay": 1.0, "warm_start_timestep": "x", "patch_size": [4]}
    assert [line.split(":")[0] for line in option_problems(bad)] == [f"option {name}" for name in bad]
    assert option_problems({"method": "m2diff"}, {"method": ["low_dose"]}) == [
        "option method: got 'm2diff', expected 'low_dose'"
    ]


def test_bad_values_on_the_command_line_print_one_line_each(tmp_path):
    output_dir = tmp_path / "out"
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json"]
    command += ["--bundle_root", ".", "--output_dir", str(output_dir), "--num_samples", "four", "--seed", "x"]
    command += ["--num_inference_steps", "0", "--sede", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(command, cwd=BUNDLE_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert [line for line in result.stderr.splitlines() if line.startswith(("option ", "unknown option"))] == [
        "unknown option --sede; did you mean --seed? (see the config's _desc_ for the options)",
        "option num_inference_steps: got 0, expected an integer >= 1",
        "option num_samples: got 'four', expected an integer >= 1",
        "option seed: got 'x', expected an integer >= 0",
    ]
    assert "Traceback" not in result.stderr + result.stdout
    assert not output_dir.exists()  # stopped before any work


def test_data_parallel_training_checks_the_options_first():
    """multi_gpu_train.json keeps train.json's initialize: the options are checked before the process group starts."""
    config: dict = {}
    for file in config_files("inference", "train", "multi_gpu_train"):
        with open(file) as f:
            config.update(json.load(f))
    initialize = [item for item in config["initialize"] if "sys.path" not in str(item)]  # the bundle on the path
    assert initialize[0] == "@option_check" and "check_options" in config["option_check"]["_target_"]
    starts = [i for i, item in enumerate(initialize) if "@process_group" in str(item)]
    assert starts and starts[0] > 0 and config["process_group"]["_target_"].endswith("start_process_group")
