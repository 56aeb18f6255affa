"""evaluate.json scores every method through one workflow on a tiny synthetic cohort."""

from __future__ import annotations

import csv
import json
import math
import os

import pytest
import torch
from tiny_cohort import make_tiny_cohort
from workflow_testing import make_workflow, run_workflow

from scripts.baselines import search_gaussian_fwhm

FAST = {"num_inference_steps": 2, "num_threads": 1}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("cohort")
    make_tiny_cohort(str(folder))
    return str(folder)


def _save_random_network(names: list[str], runs_dir: str, run_name: str) -> None:
    """An untrained network of the config saved where evaluate.json looks for the trained one."""
    network = make_workflow(["inference"] + names).parser.get_parsed_content("network_def")
    folder = os.path.join(runs_dir, run_name, "checkpoints")
    os.makedirs(folder, exist_ok=True)
    torch.save(network.state_dict(), os.path.join(folder, "model.pt"))


def _evaluate(names: list[str], cohort: str, runs_dir: str, method: str, **overrides) -> str:
    run_workflow(
        ["inference"] + names + ["evaluate"],
        "infer",
        dataset_dir=cohort,
        runs_dir=runs_dir,
        method=method,
        **{**FAST, **overrides},
    )
    return os.path.join(runs_dir, "eval", overrides.get("eval_split", "test"), method)


def _rows(folder: str) -> list[dict]:
    with open(os.path.join(folder, "metrics.csv")) as f:
        return list(csv.DictReader(f))


def test_low_dose_outputs(cohort, tmp_path):
    folder = _evaluate(["train"], cohort, str(tmp_path), "low_dose")
    rows = _rows(folder)
    assert len(rows) == 2 * 2 * 2  # subjects x dose levels x references
    assert {r["reference"] for r in rows} == {"sd", "sd_noisefree"}
    for r in rows:  # the SUVR and its two regions' own biases, each a number (the low-dose image is noisy)
        assert all(math.isfinite(float(r[k])) for k in ("suvr_bias_pct", "meta_roi_bias_pct", "pons_bias_pct"))
        assert float(r["pons_bias_pct"]) != 0.0
    with open(os.path.join(folder, "summary.json")) as f:
        summary = json.load(f)
    table = summary["metrics"]["sd"]
    assert set(table) == {"drf4", "drf100"} and {"CN", "AD", "all"} <= set(table["drf4"])
    assert table["drf4"]["all"]["psnr"]["mean"] > table["drf100"]["all"]["psnr"]["mean"]  # more dose, better image
    assert summary["network_calls_per_slice"] == 0
    assert len(os.listdir(os.path.join(folder, "panels"))) == 4


def test_untrained_dose_level_is_scored_as_its_own_level(cohort, tmp_path):
    folder = _evaluate(["train"], cohort, str(tmp_path), "low_dose", eval_dose_reduction_factors=[100, "random"])
    random_rows = [r for r in _rows(folder) if r["dose_level"] == "random"]
    assert len(random_rows) == 2 * 2 and all(4 <= float(r["dose_reduction_factor"]) <= 100 for r in random_rows)
    with open(os.path.join(folder, "summary.json")) as f:
        assert list(json.load(f)["metrics"]["sd"]) == ["drf100", "drfrandom"]


def test_diffusion_methods_and_baselines(cohort, tmp_path):
    runs = str(tmp_path)
    _save_random_network(["train"], runs, "m2diff")
    _save_random_network(["train", "baselines/unet_regression"], runs, "unet_regression")
    _save_random_network(["train", "baselines/pet_only_diffusion"], runs, "pet_only_diffusion")
    one_dose = {"eval_dose_reduction_factors": [100], "save_panels": False}
    for names, method, calls in [
        (["train"], "m2diff", 2),
        (["train"], "m2diff_mri_free", 2),
        (["train", "baselines/unet_regression"], "unet_regression", 1),
        (["train", "baselines/pet_only_diffusion"], "pet_only_diffusion", 2),
        (["train"], "gaussian_filter", 0),
    ]:
        rows = _rows(_evaluate(names, cohort, runs, method, gaussian_fwhm_mm={100: 6.0}, **one_dose))
        assert len(rows) == 4 and all(r["method"] == method for r in rows)
        assert all(int(r["network_calls_per_slice"]) == calls for r in rows)
        cutoffs = {float(r["consistency_fwhm_mm"]) for r in rows}  # the diffusion methods' automatic cut-off
        assert all(6 <= c <= 32 for c in cutoffs) if calls == 2 else cutoffs == {0.0}
        assert all(math.isfinite(float(r["psnr"])) and math.isfinite(float(r["ssim"])) for r in rows)


def test_evaluate_properties(cohort, tmp_path):
    _save_random_network(["train"], str(tmp_path), "m2diff")  # evaluate.json checks for the model before any work
    workflow = make_workflow(["inference", "train", "evaluate"], "infer", dataset_dir=cohort, runs_dir=str(tmp_path))
    workflow.initialize()
    assert workflow.check_properties() == []


def test_gaussian_fwhm_search(cohort):
    result = search_gaussian_fwhm(os.path.join(cohort, "datalist.json"), fwhms_mm=(0, 4, 8))
    assert set(result["best_fwhm_mm"]) == {4, 100}
    assert result["best_fwhm_mm"][100] >= result["best_fwhm_mm"][4]  # noisier images want more smoothing
    with pytest.raises(ValueError, match="validation"):
        search_gaussian_fwhm(os.path.join(cohort, "datalist.json"), split="test")


def test_console_table_and_mlflow(cohort, tmp_path, capsys):
    """evaluate.json prints its summary table; with --tracking mlflow its settings and final metrics are recorded."""
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    from monai.utils import path_to_sqlite_uri

    runs = str(tmp_path)
    run_workflow(
        ["inference", "train", "evaluate"],
        "infer",
        tracking="mlflow",
        dataset_dir=cohort,
        runs_dir=runs,
        method="low_dose",
    )
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:4] == ["reference", "dose", "group", "n"])
    assert "psnr" in lines[header] and lines[header + 1].split()[:3] == ["sd", "1/4", "AD"]
    assert any(line.split()[:3] == ["sd", "1/100", "all"] for line in lines[header:])
    client = MlflowClient(tracking_uri=path_to_sqlite_uri(os.path.join(runs, "low_dose", "mlruns.db")))
    run = client.search_runs([client.get_experiment_by_name("m2diff").experiment_id])[0]
    assert run.data.params["method"] == "low_dose" and run.data.params["eval_split"] == "test"
    with open(os.path.join(runs, "eval", "test", "low_dose", "summary.json")) as f:
        psnr = json.load(f)["metrics"]["sd"]["drf100"]["all"]["psnr"]["mean"]
    assert abs(run.data.metrics["psnr_sd_drf100_all"] - psnr) < 1e-6


def test_missing_model_file_is_named_before_evaluation(cohort, tmp_path):
    with pytest.raises(RuntimeError) as error:  # MONAI wraps the config expression's error
        _evaluate(["train"], cohort, str(tmp_path), "m2diff")
    message = str(error.value.__cause__)
    assert os.path.join(str(tmp_path), "m2diff", "checkpoints", "model.pt") in message and "train first" in message
    assert not os.path.exists(os.path.join(str(tmp_path), "eval"))


def test_faithfulness_metrics_and_subset_rows():
    """A lesion the method halves, and lesion subjects summarised as a row of their own."""
    import numpy as np

    from scripts.evaluation import score_study, summarise

    shape = (24, 24, 16)
    reference = np.full(shape, 100.0)
    lesions = np.zeros(shape, np.int32)
    lesions[10:14, 10:14, 6:10] = 1
    reference[lesions == 1] = 200.0  # contrast 2.0
    enhanced = reference.copy()
    enhanced[lesions == 1] = 150.0  # contrast 1.5: 25 % lost
    labels = np.ones(shape, np.int32)
    study = {"pet_sd": reference, "brain_mask": np.ones(shape), "labels": labels, "lesion_mask": lesions}
    study.update(affine=np.eye(4))
    (row,) = score_study(enhanced, study)
    assert row["lesion_contrast_err_pct"] == pytest.approx(-25.0)
    assert not any("uncertainty" in name for name in row)
    assert row["pattern_amplitude"] < 1.0
    rows = [
        {**row, "group": "CN", "dose_reduction_factor": 20, "dose_level": "20", "has_lesions": True, "seconds": 1.0},
        {**row, "group": "AD", "dose_reduction_factor": 20, "dose_level": "20", "has_lesions": False, "seconds": 1.0},
    ]
    for r in rows:
        r.update(network_calls_per_slice=1, network_calls_per_volume=16)
    summary = summarise(rows)["sd"]["drf20"]
    assert summary["lesion"]["n"] == 1 and summary["all"]["n"] == 2 and "whole_head" not in summary


def test_gaussian_fwhm_per_dose_level_takes_the_nearest_level_for_untrained_doses():
    from scripts.inferers import GaussianFilterInferer

    study = torch.zeros((1, 2, 16, 16, 16))
    study[0, 0, 8, 8, 8] = 1.0
    inferer = GaussianFilterInferer({20: 4.0, 100: 10.0}, voxel_size_mm=2.0)
    peak = {drf: float(inferer(study, dose_reduction_factor=drf)[0, 0].max()) for drf in (20, 33, 75, 100)}
    assert peak[33] == peak[20] and peak[75] == peak[100] and peak[20] > peak[100]
    with pytest.raises(ValueError, match="dose reduction factor"):
        inferer(study)
