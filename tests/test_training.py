"""Training workflow tests: the real train.json (and baseline overrides) on a tiny synthetic cohort."""

from __future__ import annotations

import json
import math
import os

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import LoadImage
from tiny_cohort import DRFS, make_tiny_cohort
from workflow_testing import BUNDLE_ROOT, CONFIGS, TINY_TRAINING, make_workflow, run_workflow

from scripts.normalise import pet_scale
from scripts.sampler import DDIMVolumeSampler, make_noise_scheduler
from scripts.training import (
    DiffusionPrepareBatch,
    EMAUpdate,
    MultiTaskDiffusionLoss,
    PETSliceDataset,
    RegressionPrepareBatch,
    VoxelWeightedMSELoss,
    load_cohort,
)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("cohort")
    make_tiny_cohort(str(folder))
    return str(folder)


def _train(cohort: str, runs_dir: str, names=("inference", "train"), **overrides):
    settings = {**TINY_TRAINING, "dataset_dir": cohort, "runs_dir": runs_dir, **overrides}
    return run_workflow(list(names), **settings)


def test_load_cohort_paths_and_doses(cohort):
    records = load_cohort(os.path.join(cohort, "datalist.json"), "training")
    assert len(records) == 2 and all(os.path.isabs(r["pet_sd"]) and os.path.exists(r["pet_sd"]) for r in records)
    per_dose = load_cohort(os.path.join(cohort, "datalist.json"), "test", [100], per_dose=True)
    assert [r["dose_reduction_factor"] for r in per_dose] == [100, 100]
    assert per_dose[0]["pet_low_dose"].endswith("_pet_drf100.nii.gz")
    with pytest.raises(ValueError, match="dose reduction factors"):
        load_cohort(os.path.join(cohort, "datalist.json"), "test", [7])


def test_load_cohort_adds_the_untrained_dose_level(cohort):
    """'random' scores each subject's extra image at its own dose (pet_drf_random), under dose_level 'random'."""
    records = load_cohort(os.path.join(cohort, "datalist.json"), "test", [100, "random"], per_dose=True)
    assert [r["dose_level"] for r in records] == ["100", "random", "100", "random"]
    random_dose = records[1]
    assert random_dose["pet_low_dose"].endswith("_pet_drf_random.nii.gz")
    assert random_dose["dose_reduction_factor"] == random_dose["drf_random"] and random_dose["drfs"] == [100]
    with pytest.raises(ValueError, match="per_dose"):
        load_cohort(os.path.join(cohort, "datalist.json"), "test", ["random"])


def test_load_cohort_appends_extra_cohorts_training_subjects(cohort, tmp_path):
    """extra_cohort_dirs: a second cohort's records follow the first's, with paths of their own and prefixed ids."""
    second = tmp_path / "second_cohort"
    make_tiny_cohort(str(second))
    first = load_cohort(os.path.join(cohort, "datalist.json"), "training")
    both = load_cohort(os.path.join(cohort, "datalist.json"), "training", extra_cohort_dirs=[str(second)])
    assert both[: len(first)] == first and len(both) == 2 * len(first)
    assert [r["id"] for r in both[len(first) :]] == [f"second_cohort/{r['id']}" for r in first]
    assert all(r["pet_sd"].startswith(str(second)) and os.path.exists(r["pet_sd"]) for r in both[len(first) :])
    missing = str(tmp_path / "missing_cohort")
    with pytest.raises(FileNotFoundError, match="missing_cohort"):
        load_cohort(os.path.join(cohort, "datalist.json"), "training", extra_cohort_dirs=[missing])


def test_train_config_reads_extra_training_dirs(cohort, tmp_path):
    """--extra_training_dirs adds training subjects; validation stays dataset_dir's."""
    second = tmp_path / "second"
    make_tiny_cohort(str(second))
    workflow = make_workflow(["inference", "train"], dataset_dir=cohort, runs_dir=str(tmp_path / "runs"))
    workflow.parser["extra_training_dirs"] = [str(second)]
    training = workflow.parser.get_parsed_content("train#data")
    validation = workflow.parser.get_parsed_content("validate#data")
    assert len(training) == 4 and sum(r["id"].startswith("second/") for r in training) == 2
    assert validation and not any(r["id"].startswith("second/") for r in validation)


def test_slice_dataset_items(cohort):
    records = load_cohort(os.path.join(cohort, "datalist.json"), "training")
    dataset = PETSliceDataset(records, context_slices=1, patch_size=(32, 32), seed=3)
    assert len(dataset) > 0
    doses = set()
    for index in range(len(dataset)):
        item = dataset[index]
        assert item["pet_low_dose"].shape == (3, 32, 32) and item["mri_t1"].shape == (3, 32, 32)
        assert item["pet_standard_dose"].shape == (1, 32, 32)
        doses.add(item["dose_reduction_factor"])
    assert doses <= set(DRFS) and len(doses) == 2
    # SD and LD share the low-dose scale: their brain means agree (same truth, different noise)
    item = dataset[len(dataset) // 2]
    brain = item["pet_standard_dose"][0] > 0.3
    ratio = item["pet_low_dose"][1][brain].mean() / item["pet_standard_dose"][0][brain].mean()
    assert 0.7 < float(ratio) < 1.3
    whole = PETSliceDataset(records, patch_size=(48, 48))  # larger than the 40x40 image: zero-padded
    assert whole[0]["pet_low_dose"].shape == (1, 48, 48)


def test_lesions_weigh_more_and_are_drawn_more_often(cohort, tmp_path):
    """lesion_weight: lesion + shell voxels weigh 1 + w (all else, padding included, 1); lesion slices repeat."""
    record = load_cohort(os.path.join(cohort, "datalist.json"), "training")[0]
    brain = np.asarray(LoadImage(image_only=True)(record["brain_mask"])) > 0
    lesion = np.zeros(brain.shape, np.uint8)
    lesion[18:21, 18:21, 9:11] = 1  # slices 9 and 10
    path = str(tmp_path / "lesion_mask.nii.gz")
    nib.save(nib.Nifti1Image(lesion, np.eye(4)), path)
    with_lesion = dict(record, lesion_mask=path, has_lesions=True)
    plain = PETSliceDataset([with_lesion], patch_size=(48, 48))
    assert all("loss_weight" not in plain[i] for i in range(len(plain)))
    dataset = PETSliceDataset([with_lesion], patch_size=(48, 48), lesion_weight=5.0, lesion_oversampling=3)
    # the 3-voxel shell reaches slices 6 to 13: eight lesion slices, each served 3 times
    assert len(dataset) == len(plain) + 2 * 8
    slice_of = {k: i for i, (_, k) in enumerate(dataset.items)}
    weight = dataset[slice_of[9]]["loss_weight"][0]
    assert weight.shape == (48, 48) and set(np.unique(weight.numpy())) == {1.0, 6.0}
    region = weight == 6.0  # lesion (3x3) grown by 3 voxels in plane: within a 9x9 square, more than the lesion
    assert 9 < int(region.sum()) <= 81
    assert set(np.unique(dataset[slice_of[4]]["loss_weight"].numpy())) == {1.0}
    no_lesion = PETSliceDataset([record], patch_size=(48, 48), lesion_weight=5.0, lesion_oversampling=3)
    assert len(no_lesion) == len(plain)
    with pytest.raises(ValueError, match="lesion_weight"):
        PETSliceDataset([record], lesion_weight=-1.0)


def test_voxel_weights_in_batches_and_losses():
    """A loss_weight map travels as the target's second channel; both losses weight each squared error by it."""
    weight = torch.ones(2, 1, 4, 4)
    weight[:, :, :2] = 3.0  # the upper half weighs 3
    batch = {key: torch.rand(2, 1, 4, 4) for key in ("pet_low_dose", "mri_t1", "pet_standard_dose")}
    batch["loss_weight"] = weight
    _, target, _, _ = DiffusionPrepareBatch(make_noise_scheduler())(batch)
    assert target.shape == (2, 2, 4, 4) and torch.equal(target[:, 1:], weight)
    _, target = RegressionPrepareBatch()(batch)
    assert target.shape == (2, 2, 4, 4) and torch.equal(target[:, :1], batch["pet_standard_dose"])
    target = torch.cat([torch.zeros(2, 1, 4, 4), weight], 1)
    pred = torch.zeros(2, 1, 4, 4)
    pred[:, :, :2] = 1.0  # error 1 on the upper half, 0 below: weighted mean 3 * 8 / (3 * 8 + 8) = 0.75
    assert math.isclose(float(VoxelWeightedMSELoss()(pred, target)), 0.75, rel_tol=1e-6)
    assert math.isclose(float(VoxelWeightedMSELoss()(pred, target[:, :1])), 0.5, rel_tol=1e-6)
    heads = torch.cat([pred, pred], 1)
    assert math.isclose(float(MultiTaskDiffusionLoss(0.4, 0.4, 0.2)(heads, target)), 0.8 * 0.75, rel_tol=1e-6)
    with pytest.raises(ValueError, match="expected pred"):
        VoxelWeightedMSELoss()(heads, target)


def test_prepare_batch_and_loss():
    batch = {
        "pet_low_dose": torch.rand(4, 1, 16, 16),
        "mri_t1": torch.rand(4, 1, 16, 16),
        "pet_standard_dose": torch.rand(4, 1, 16, 16),
    }
    torch.manual_seed(0)
    inputs, target, (timesteps,), kwargs = DiffusionPrepareBatch(make_noise_scheduler(), mri_dropout_prob=0.5)(batch)
    assert inputs.shape == (4, 3, 16, 16) and target.shape == (4, 1, 16, 16) and timesteps.shape == (4,)
    assert kwargs["mri_free"].dtype == torch.bool and kwargs["mri_free"].shape == (4,)
    assert torch.equal(inputs[:, 1:], torch.cat([batch["pet_low_dose"], batch["mri_t1"]], 1))
    _, _, _, kwargs = DiffusionPrepareBatch(make_noise_scheduler(), mri_dropout_prob=0.0)(batch)
    assert kwargs == {}
    inputs, target = RegressionPrepareBatch()(batch)
    assert inputs.shape == (4, 2, 16, 16)

    loss = MultiTaskDiffusionLoss(0.4, 0.4, 0.2)
    assert 'mri_dropout_prob": 0.4' in open(os.path.join(CONFIGS, "train.json")).read()  # the paper's rate
    target = torch.zeros(2, 1, 4, 4)
    pred = torch.cat([torch.ones(2, 1, 4, 4), 3 * torch.ones(2, 1, 4, 4)], dim=1)
    assert math.isclose(float(loss(pred, target)), 0.4 * 1 + 0.4 * 9 + 0.2 * 4, rel_tol=1e-6)
    with pytest.raises(ValueError, match="expected pred"):
        loss(target, target)


def test_mri_dropout_rate_is_the_share_of_mri_free_samples():
    """``mri_dropout_prob=0.4``: 40 % of the samples take the MRI-free path (not 60 %)."""
    batch = {key: torch.rand(4000, 1, 2, 2) for key in ("pet_low_dose", "mri_t1", "pet_standard_dose")}
    torch.manual_seed(0)
    _, _, _, kwargs = DiffusionPrepareBatch(make_noise_scheduler(), mri_dropout_prob=0.4)(batch)
    assert 0.37 < float(kwargs["mri_free"].float().mean()) < 0.43


def test_validation_normalises_as_inference(cohort, tmp_path):
    """Validation batches are whole axial slices normalised by NormaliseStudyd, enhanced by inference's inferer with
    the shipped settings (1 DDIM step, automatic data consistency at the slab's voxel size)."""
    workflow = make_workflow(["inference", "train"], dataset_dir=cohort, runs_dir=str(tmp_path), val_num_slices=4)
    workflow.initialize()
    item = workflow.parser.get_parsed_content("validate#dataset")[0]
    record = workflow.parser.get_parsed_content("validate#data")[0]
    low_dose = LoadImage(image_only=True)(record["pet_low_dose"])
    image = item["pet_low_dose"]
    assert image.shape[1:3] == low_dose.shape[:2] and image.shape[-1] == 4  # no crop to the brain
    assert item["pet_scale"] == pytest.approx(pet_scale(low_dose), rel=1e-6)
    inferer = workflow.parser.get_parsed_content("validate#inferer")
    assert type(inferer) is DDIMVolumeSampler and inferer is workflow.parser.get_parsed_content("inferer")
    assert len(inferer.timesteps) == 1 and inferer.consistency_fwhm_mm == "auto"
    batch = {k: v[None] if hasattr(v, "shape") else [v] for k, v in item.items()}
    inputs, label, _, kwargs = workflow.parser.get_parsed_content("validate#prepare_batch")(batch)
    assert inputs.shape == (1, 2, *image.shape[1:]) and label.shape[1] == 2 and kwargs["voxel_size_mm"] == [2.0] * 3


def test_m2diff_train_validate_resume(cohort, tmp_path):
    runs = str(tmp_path)
    workflow = _train(cohort, runs)
    trainer = workflow.parser.get_parsed_content("train#trainer")
    assert trainer.state.iteration == 2 and trainer.state.epoch == 1
    evaluator = workflow.parser.get_parsed_content("validate#evaluator")
    assert np.isfinite(evaluator.state.metrics["val_psnr"]) and np.isfinite(evaluator.state.metrics["val_ssim"])
    checkpoints = os.path.join(runs, "m2diff", "checkpoints")
    assert {"model.pt", "model_final.pt", "checkpoint_final.pt"} <= set(os.listdir(checkpoints))
    network = workflow.parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(os.path.join(checkpoints, "model.pt"), weights_only=True))  # plain state_dict

    resumed = _train(cohort, runs, max_epochs=2, resume_ckpt=os.path.join(checkpoints, "checkpoint_final.pt"))
    trainer = resumed.parser.get_parsed_content("train#trainer")
    assert trainer.state.epoch == 2 and trainer.state.iteration == 4  # continued, not restarted
    saved = torch.load(os.path.join(checkpoints, "checkpoint_final.pt"), weights_only=True)
    assert saved["trainer"]["iteration"] == 4 and set(saved) == {
        "network",
        "ema",
        "optimizer",
        "lr_scheduler",
        "trainer",
        "best_model",
    }
    # the shipped-style weights are the moving average, not the last raw weights
    final = torch.load(os.path.join(checkpoints, "model_final.pt"), weights_only=True)
    averaged = {k[len("module.") :]: v for k, v in saved["ema"].items() if k.startswith("module.")}
    assert set(final) == set(averaged) and all(torch.equal(final[k], averaged[k]) for k in final)
    assert any(not torch.equal(final[k], saved["network"][k]) for k in final)


def test_ema_update_is_the_moving_average():
    """EMAUpdate: the first update copies the network, later ones move the average by (1 - decay)."""
    network = torch.nn.Linear(2, 1)
    ema = torch.optim.swa_utils.AveragedModel(
        network, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.75), use_buffers=True
    )
    with torch.no_grad():
        network.weight.fill_(4.0)
    update = EMAUpdate(ema, network)
    update()
    assert torch.equal(ema.module.weight, network.weight)
    with torch.no_grad():
        network.weight.fill_(8.0)
    update()
    assert torch.allclose(ema.module.weight, torch.full_like(network.weight, 5.0))


@pytest.mark.parametrize("baseline", ["unet_regression", "single_branch_diffusion", "pet_only_diffusion"])
def test_baseline_training(cohort, tmp_path, baseline):
    workflow = _train(cohort, str(tmp_path), names=("inference", "train", f"baselines/{baseline}"))
    assert workflow.parser.get_parsed_content("train#trainer").state.iteration == 2
    assert np.isfinite(workflow.parser.get_parsed_content("validate#evaluator").state.metrics["val_psnr"])
    assert os.path.exists(os.path.join(str(tmp_path), baseline, "checkpoints", "model.pt"))


def test_check_properties(cohort, tmp_path):
    workflow = make_workflow(["inference", "train"], dataset_dir=cohort, runs_dir=str(tmp_path))
    workflow.initialize()
    assert workflow.check_properties() == []


#: what evaluation writes besides inference's files, as its log names them
EVALUATION_FILES = {"summary": "summary.json", "metrics": "metrics.csv", "panels": "panels" + os.sep}


def test_mlflow_tracking(cohort, tmp_path, capsys):
    """Training and evaluation runs record resolved settings and checkpoints; evaluation names the training run."""
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    from monai.utils import path_to_sqlite_uri

    from scripts.enhance import file_sha256

    runs_dir = str(tmp_path)
    shipped = os.path.join(BUNDLE_ROOT, "models", "model.pt")
    _train(cohort, runs_dir, tracking="mlflow", pretrained_ckpt=shipped, dataset_dir=cohort + "/./")
    output_dir = os.path.join(runs_dir, "m2diff")
    client = MlflowClient(tracking_uri=path_to_sqlite_uri(os.path.join(output_dir, "mlruns.db")))
    experiment = client.get_experiment_by_name("m2diff")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1, "one MLflow run recorded"
    train_run = runs[0]
    params = train_run.data.params
    assert {"train_loss", "val_psnr", "val_ssim"} <= set(train_run.data.metrics)
    assert {"max_epochs", "epoch_length", "learning_rate", "seed", "network_def.base_channels"} <= set(params)
    assert params["patch_size"] == "[32, 32]" and params["mri_dropout_prob"] == "0.4"
    assert any(a.path.startswith("config_") for a in client.list_artifacts(train_run.info.run_id))
    # resolved values, never the config's expressions
    assert not [(k, v) for k, v in params.items() if "$" in v or "@" in v]
    assert params["output_dir"] == os.path.abspath(output_dir) and params["dataset_dir"] == os.path.abspath(cohort)
    assert params["num_inference_steps"] == "2" and params["network_def.context_slices"] == "1"
    assert params["pretrained_ckpt"] == shipped and params["pretrained_ckpt.sha256"] == file_sha256(shipped)
    assert params["resume_ckpt"] == "null" and "resume_ckpt.sha256" not in params and "run" not in params

    # the checkpoints name the run that saved them; evaluation records its checkpoint and that run
    model_file = os.path.join(output_dir, "checkpoints", "model.pt")
    run_workflow(
        ["inference", "train", "evaluate"],
        "infer",
        tracking="mlflow",
        dataset_dir=cohort,
        runs_dir=runs_dir,
        num_inference_steps=1,
        eval_max_studies=1,
        num_threads=1,
    )
    console = capsys.readouterr().out
    assert "m2diff, 1 DDIM step: 1 study, " in console  # the summary's title, in the singular
    eval_dir = os.path.join(runs_dir, "eval", "test", "m2diff")
    assert all(f"{name}: {os.path.join(eval_dir, file)}" in console for name, file in EVALUATION_FILES.items())
    runs = client.search_runs([experiment.experiment_id])
    eval_run = next(r for r in runs if r.info.run_id != train_run.info.run_id)
    params = eval_run.data.params
    assert not [(k, v) for k, v in params.items() if "$" in v or "@" in v]
    assert params["model_file"] == model_file and params["model_file.sha256"] == file_sha256(model_file)
    assert params["model_file.training_run_id"] == train_run.info.run_id
    assert params["model_file.training_experiment"] == "m2diff"
    assert params["eval_dir"] == eval_dir
    assert params["method"] == "m2diff" and params["num_inference_steps"] == "1"
    assert params["network_def.context_slices"] == "1"  # a reference to a plainly written value


def test_training_run_is_recorded_per_checkpoint_content(tmp_path):
    """mlflow_runs.json keeps the run that first saved a file's content; a changed file is claimed by the new run."""
    from ignite.engine import Engine, Events
    from monai.handlers import MLFlowHandler

    from scripts.tracking import RUNS_FILE, record_training_run, training_run

    def one_run(write):
        handler = MLFlowHandler(
            tracking_uri=f"sqlite:///{tmp_path}/mlruns.db",
            experiment_name="x",
            iteration_log=False,
            epoch_log=False,
            close_on_complete=True,
        )
        engine = Engine(lambda e, b: write())
        handler.attach(engine)
        assert record_training_run(engine, [handler], str(tmp_path / "checkpoints"))
        run_ids = []
        engine.add_event_handler(Events.STARTED, lambda e: run_ids.append(handler.cur_run.info.run_id))
        engine.run([0], max_epochs=1)
        return run_ids[0]

    model = tmp_path / "checkpoints" / "model.pt"
    model.parent.mkdir()
    first = one_run(lambda: model.write_bytes(b"weights 1"))
    assert training_run(model)["run_id"] == first and training_run(model)["file"] == "model.pt"
    assert one_run(lambda: None) != first and training_run(model)["run_id"] == first  # resumed, model.pt kept
    second = one_run(lambda: model.write_bytes(b"weights 2"))
    assert (
        training_run(model)["run_id"] == second
        and len(json.loads((model.parent / RUNS_FILE).read_text())["checkpoints"]) == 2
    )
    assert not record_training_run(Engine(lambda e, b: None), [], str(tmp_path))  # no MLflow: nothing recorded


def test_config_parameters_resolve_or_leave_out_expressions():
    from scripts.tracking import config_parameters

    config = {
        "_desc_": {"a": "b"},
        "imports": ["$import os"],
        "method": "m2diff",
        "runs_dir": "$@bundle_root + '/../runs'",
        "output_dir": "$@runs_dir + '/' + @method",
        "num_inference_steps": "@val_num_inference_steps",
        "val_num_inference_steps": 3,
        "num_samples": "@samples",
        "samples": 4,
        "device": "$torch.device('cpu')",
        "run": ["$@train#trainer.run()"],
        "network_def": {"_target_": "Net", "channels": [1, 2], "context_slices": "@context_slices", "x": "$1 + 1"},
    }
    params = config_parameters(config, {"runs_dir": "/r", "val_num_inference_steps": 3, "context_slices": 2})
    assert params == {
        "method": "m2diff",
        "runs_dir": "/r",
        "num_inference_steps": "3",
        "val_num_inference_steps": "3",
        "num_samples": "4",
        "samples": "4",
        "network_def.channels": "[1, 2]",
        "network_def.context_slices": "2",
        "context_slices": "2",
    }


def test_no_validation_subjects_still_leaves_model_for_evaluation(tmp_path):
    """A cohort without validation subjects: training saves its final network as model.pt; evaluate finds it."""
    cohort = str(tmp_path / "cohort")
    make_tiny_cohort(cohort, splits={"training": 1, "validation": 0, "test": 1})
    runs = str(tmp_path / "runs")
    _train(cohort, runs)
    model_file = os.path.join(runs, "m2diff", "checkpoints", "model.pt")
    final = torch.load(os.path.join(runs, "m2diff", "checkpoints", "model_final.pt"), weights_only=True)
    saved = torch.load(model_file, weights_only=True)
    assert set(saved) == set(final) and all(torch.equal(saved[k], final[k]) for k in saved)
    assert all(v.device.type == "cpu" for v in saved.values())
    # evaluate.json's defaults look for runs_dir/m2diff/checkpoints/model.pt: no --model_file needed
    run_workflow(["inference", "train", "evaluate"], "infer", dataset_dir=cohort, runs_dir=runs, num_inference_steps=1)
    assert os.path.exists(os.path.join(runs, "eval", "test", "m2diff", "metrics.csv"))


def test_model_file_is_from_this_run(cohort, tmp_path):
    """A model.pt left by an earlier run is replaced when this run saved no validated model (no validation round)."""
    runs = str(tmp_path)
    checkpoints = os.path.join(runs, "m2diff", "checkpoints")
    os.makedirs(checkpoints)
    torch.save({"stale": torch.zeros(1)}, os.path.join(checkpoints, "model.pt"))
    _train(cohort, runs, val_interval=5)
    assert "stale" not in torch.load(os.path.join(checkpoints, "model.pt"), weights_only=True)


def test_fine_tune_from_shipped_weights(cohort, tmp_path):
    """pretrained_ckpt loads the shipped plain state_dict: with a zero learning rate the network stays as shipped."""
    shipped_file = os.path.join(BUNDLE_ROOT, "models", "model.pt")
    shipped = torch.load(shipped_file, weights_only=True)
    runs = str(tmp_path)
    _train(cohort, runs, pretrained_ckpt=shipped_file, learning_rate=0.0, val_interval=5)
    final = torch.load(os.path.join(runs, "m2diff", "checkpoints", "model_final.pt"), weights_only=True)
    assert all(torch.equal(final[k], shipped[k]) for k in shipped)


def test_resume_from_bare_weights_names_pretrained_ckpt(cohort, tmp_path):
    shipped_file = os.path.join(BUNDLE_ROOT, "models", "model.pt")
    with pytest.raises(RuntimeError) as error:  # MONAI wraps the config expression's error
        _train(cohort, str(tmp_path), resume_ckpt=shipped_file)
    message = str(error.value.__cause__)
    assert shipped_file in message and "use --pretrained_ckpt" in message


def test_resume_keeps_the_best_model_until_beaten(cohort, tmp_path):
    """A resumed run remembers the best validation score: a worse validation does not replace model.pt."""
    runs = str(tmp_path)
    first = _train(cohort, runs)
    checkpoints = os.path.join(runs, "m2diff", "checkpoints")
    best = first.parser.get_parsed_content("validate#evaluator").state.best_metric
    checkpoint = torch.load(os.path.join(checkpoints, "checkpoint_final.pt"), weights_only=True)
    assert checkpoint["best_model"]["best_metric"] == pytest.approx(best)
    assert checkpoint["best_model"]["best_metric_epoch"] == 1
    assert [score for score, _ in checkpoint["best_model"]["saved"]] == [pytest.approx(best)]  # model.pt's score

    # an earlier best no validation of a tiny run can reach: model.pt must survive the resumed run untouched
    checkpoint["best_model"] = {"best_metric": 1e6, "best_metric_epoch": 1, "saved": [(1e6, "model.pt")]}
    high_bar = os.path.join(str(tmp_path), "high_bar.pt")
    torch.save(checkpoint, high_bar)
    with open(os.path.join(checkpoints, "model.pt"), "rb") as file:
        kept = file.read()
    resumed = _train(cohort, runs, max_epochs=2, resume_ckpt=high_bar)
    evaluator = resumed.parser.get_parsed_content("validate#evaluator")
    assert np.isfinite(evaluator.state.metrics["val_psnr"]) and evaluator.state.metrics["val_psnr"] < 1e6
    assert evaluator.state.best_metric == 1e6 and evaluator.state.best_metric_epoch == 1
    with open(os.path.join(checkpoints, "model.pt"), "rb") as file:
        assert file.read() == kept


def test_resume_from_a_checkpoint_without_best_score(cohort, tmp_path, capfd):
    """Checkpoints written before 0.8.2 hold no best score: they resume, with a warning, and validation saves."""
    runs = str(tmp_path)
    _train(cohort, runs)
    checkpoints = os.path.join(runs, "m2diff", "checkpoints")
    checkpoint = torch.load(os.path.join(checkpoints, "checkpoint_final.pt"), weights_only=True)
    del checkpoint["best_model"]
    older = os.path.join(str(tmp_path), "older.pt")
    torch.save(checkpoint, older)
    os.remove(os.path.join(checkpoints, "model.pt"))
    capfd.readouterr()
    resumed = _train(cohort, runs, max_epochs=2, resume_ckpt=older)
    printed = "".join(capfd.readouterr())
    assert f"resume_ckpt {older} holds no best validation score" in printed
    assert resumed.parser.get_parsed_content("train#trainer").state.epoch == 2
    assert resumed.parser.get_parsed_content("validate#evaluator").state.best_metric_epoch == 2
    assert os.path.exists(os.path.join(checkpoints, "model.pt"))
