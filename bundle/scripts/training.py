"""Training data and batch preparation for M2Diff and its trainable baselines.

The engines are MONAI's own (``SupervisedTrainer``): this file only says what one batch is.

- :func:`load_cohort` reads a split of the cohort's ``datalist.json`` (paths made absolute, one record per study).
- :class:`PETSliceDataset` caches the training volumes once and serves random axial slices (2D or 2.5D), each with a
  dose level drawn from the record's ``drfs``, normalised by ``scripts.normalise.NormaliseStudyd`` (as at inference).
- :class:`DiffusionPrepareBatch` noises the standard-dose slice and returns ``([x_t, LD, MRI], SD, (t,), kwargs)``
  with per-sample MRI dropout; :class:`RegressionPrepareBatch` returns ``([LD, MRI], SD)``.
- :class:`MultiTaskDiffusionLoss` is the paper's ``w_pet MSE(pet, SD) + w_mri MSE(mri, SD) + w_cons MSE(pet, mri)``.
- :class:`EMAUpdate` keeps an exponential moving average of the weights (``torch.optim.swa_utils.AveragedModel``);
  validation, ``model.pt`` and the final weights use the average.
- :class:`BestModelState` carries the best validation score into training checkpoints, so that a resumed run
  replaces ``model.pt`` only with a better network; :func:`resume_load_dict` lets older checkpoints resume without it.
- :class:`ModelFileFallback` makes sure a finished training leaves ``model.pt`` (the final network when validation
  never saved a best one).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from monai.engines import PrepareBatch
from monai.networks.schedulers import Scheduler
from monai.transforms import LoadImage, RandCropByPosNegLabeld, Randomizable, SpatialPadd
from scipy import ndimage
from torch import nn

from scripts.normalise import PET_SCALE_KEY, NormaliseStudyd
from scripts.sampler import slice_stack

logger = logging.getLogger(__name__)

DOSE_KEY = "pet_drf{}"
#: dose level naming each record's extra image at its own, untrained dose (``pet_drf_random`` at ``drf_random``)
RANDOM_DOSE = "random"
PATH_SUFFIXES = (".nii", ".nii.gz", ".json", ".npy", ".npz")
#: what a resumable checkpoint (``checkpoint_final.pt``) holds besides the network
RESUME_KEYS = ("network", "ema", "optimizer", "lr_scheduler", "trainer")
#: the best validation score so far (:class:`BestModelState`); checkpoints written before 0.8.2 lack it
BEST_MODEL_KEY = "best_model"


def load_cohort(
    datalist_file: str,
    split: str,
    dose_reduction_factors: Sequence[int | str] | None = None,
    per_dose: bool = False,
    extra_cohort_dirs: Sequence[str] = (),
) -> list[dict]:
    """Records of one split of a cohort ``datalist.json`` with absolute paths.

    Args:
        datalist_file: path of ``datalist.json``; record paths are relative to its folder.
        split: "training", "validation" or "test".
        dose_reduction_factors: keep only these dose levels (``None``: all of each record's ``drfs``); with
            ``per_dose``, ``"random"`` adds each subject's image at its own untrained dose (``pet_drf_random``).
        per_dose: one record per (subject, dose level), with the low-dose image under ``pet_low_dose``, its dose
            reduction factor under ``dose_reduction_factor`` and the level's name under ``dose_level`` (evaluation);
            otherwise one record per subject (training).
        extra_cohort_dirs: more cohort folders (each with its ``datalist.json``) whose records of ``split`` follow,
            their ids prefixed with the folder's name (training on several simulated cohorts).

    Returns:
        List of record dicts.
    """
    records = _load_one_cohort(datalist_file, split, dose_reduction_factors, per_dose)
    for folder in extra_cohort_dirs:
        extra = _load_one_cohort(os.path.join(folder, "datalist.json"), split, dose_reduction_factors, per_dose)
        name = os.path.basename(os.path.normpath(folder))
        records += [dict(record, id=f"{name}/{record['id']}") for record in extra]
    return records


def _load_one_cohort(
    datalist_file: str, split: str, dose_reduction_factors: Sequence[int | str] | None, per_dose: bool
) -> list[dict]:
    with open(datalist_file) as f:
        datalist = json.load(f)
    if split not in datalist:
        raise ValueError(f"split {split!r} not in {datalist_file}; expected one of {sorted(datalist)}")
    base = os.path.dirname(os.path.abspath(datalist_file))
    records = []
    for record in datalist[split]:
        record = {k: os.path.join(base, v) if _is_relative_path(k, v) else v for k, v in record.items()}
        drfs = [int(k) for k in record.get("drfs", [])]
        levels = list(drfs if dose_reduction_factors is None else dose_reduction_factors)
        with_random = RANDOM_DOSE in levels
        if with_random and not (per_dose and "pet_drf_random" in record):
            raise ValueError(f"{record['id']}: dose level 'random' needs per_dose and the record's pet_drf_random")
        wanted = [int(k) for k in levels if k != RANDOM_DOSE]
        missing = sorted(set(wanted) - set(drfs))
        if missing:
            raise ValueError(f"{record['id']}: dose reduction factors {missing} requested, record has {drfs}")
        record["drfs"] = wanted
        if not per_dose:
            records.append(record)
            continue
        for drf in wanted:
            records.append(
                dict(record, pet_low_dose=record[DOSE_KEY.format(drf)], dose_reduction_factor=drf, dose_level=str(drf))
            )
        if with_random:
            random_dose = {"dose_reduction_factor": float(record["drf_random"]), "dose_level": RANDOM_DOSE}
            records.append(dict(record, pet_low_dose=record["pet_drf_random"], **random_dose))
    if not records:
        logger.warning(f"split {split!r} of {datalist_file} has no subjects")
    return records


def _is_relative_path(key: str, value) -> bool:
    return isinstance(value, str) and value.endswith(PATH_SUFFIXES) and not os.path.isabs(value)


class PETSliceDataset(Randomizable, torch.utils.data.Dataset):
    """Random axial training slices of cached volumes, normalised per study as at inference.

    Kept by hand: MONAI's ``PatchDataset`` draws fixed patches per volume, not each brain slice an epoch, dose redrawn.

    Every volume is loaded once. An item is one axial slice of one subject that holds enough brain; each time it is
    drawn it gets a dose level chosen at random among the subject's ``drfs`` and a random crop (centred on a random
    brain voxel of the slice, kept inside the image; zero-padded when the image is smaller than the crop: MONAI's
    ``SpatialPadd`` and ``RandCropByPosNegLabeld``). Slices are stacked with ``scripts.sampler.slice_stack``, as at
    inference.

    Args:
        data: records from :func:`load_cohort` (keys ``t1``, ``pet_sd``, ``pet_drf{K}``, ``brain_mask``, ``drfs``).
        context_slices: neighbouring slices each side (2.5D); 0 for 2D.
        patch_size: (H, W) crop; ``None`` keeps whole slices (H, W must then suit the network).
        min_brain_fraction: a slice is used when at least this fraction of its voxels is brain.
        seed: seed of the dose and crop choices.
        lesion_weight: PET-only lesions (records' ``lesion_mask``) and a ``lesion_shell_voxels`` shell around them
            weigh ``1 + lesion_weight`` in the loss (``loss_weight`` item); 0 gives no weight map.
        lesion_oversampling: slices that cut a lesion are served this many times per epoch (1 = as often as others).
        lesion_shell_voxels: thickness of the weighted shell (the lesion's contrast is relative to it).

    Each item: ``pet_low_dose`` and ``mri_t1`` ``(1 + 2c, H, W)``, ``pet_standard_dose`` ``(1, H, W)``,
    ``dose_reduction_factor`` (int), ``id`` (str); with ``lesion_weight`` > 0 also ``loss_weight`` ``(1, H, W)``.
    """

    def __init__(
        self,
        data: Sequence[dict],
        context_slices: int = 0,
        patch_size: Sequence[int] | None = (96, 96),
        min_brain_fraction: float = 0.02,
        seed: int = 0,
        lesion_weight: float = 0.0,
        lesion_oversampling: int = 1,
        lesion_shell_voxels: int = 3,
    ) -> None:
        if not data:
            raise ValueError("PETSliceDataset needs at least one training record, got none")
        self.context_slices = int(context_slices)
        self.patch_size = None if patch_size is None else tuple(int(p) for p in patch_size)
        if lesion_weight < 0 or lesion_oversampling < 1:
            raise ValueError(
                f"need lesion_weight >= 0 and lesion_oversampling >= 1, got {lesion_weight} and {lesion_oversampling}"
            )
        self.lesion_weight = float(lesion_weight)
        self.set_random_state(seed=seed)
        if self.patch_size is not None:  # a random window centred on a brain voxel, inside the (zero-padded) slice
            keys = ["pet_low_dose", "mri_t1", "pet_standard_dose", "brain_mask"]
            keys += ["lesion_region"] if self.lesion_weight > 0 else []
            self.pad = SpatialPadd(keys, self.patch_size)
            self.crop = RandCropByPosNegLabeld(keys, "brain_mask", self.patch_size, pos=1.0, neg=0.0)
            self.crop.set_random_state(state=self.R)
        loader = LoadImage(image_only=True, dtype=np.float32)
        normalise = NormaliseStudyd(["pet_low_dose"], "pet_low_dose", "mri_t1")  # as at inference
        self.studies = []
        self.items: list[tuple[int, int]] = []
        for record in data:
            mask = np.asarray(loader(record["brain_mask"])) > 0
            mri = torch.from_numpy(np.asarray(loader(record["t1"])))
            standard_dose = np.asarray(loader(record["pet_sd"]))
            doses = {drf: torch.from_numpy(np.asarray(loader(record[DOSE_KEY.format(drf)]))) for drf in record["drfs"]}
            doses = {drf: normalise({"pet_low_dose": low_dose, "mri_t1": mri}) for drf, low_dose in doses.items()}
            study = {
                "id": record.get("id", ""),
                "mri_t1": next(iter(doses.values()))["mri_t1"],  # the MRI's own scale, the same for every dose
                "pet_standard_dose": torch.from_numpy(standard_dose),
                "pet_low_dose": {drf: dose["pet_low_dose"] for drf, dose in doses.items()},
                "pet_scale": {drf: dose[PET_SCALE_KEY] for drf, dose in doses.items()},
                "brain_mask": mask,
            }
            lesion = np.zeros(mask.shape, dtype=bool)  # read only when lesions are weighted or oversampled
            if self.lesion_weight > 0 or lesion_oversampling > 1:
                lesion = _lesion_region(record, loader, lesion_shell_voxels, mask.shape)
            if self.lesion_weight > 0:
                study["lesion_region"] = torch.from_numpy(lesion.astype(np.float32))
            index = len(self.studies)
            self.studies.append(study)
            brain_fraction = mask.reshape(-1, mask.shape[-1]).mean(axis=0)
            cuts_lesion = lesion.reshape(-1, lesion.shape[-1]).any(axis=0)
            for k in np.flatnonzero(brain_fraction >= min_brain_fraction):
                self.items += [(index, int(k))] * (int(lesion_oversampling) if cuts_lesion[k] else 1)
        if not self.items:
            raise ValueError(f"no axial slice holds a brain fraction >= {min_brain_fraction}")

    def __len__(self) -> int:
        return len(self.items)

    def randomize(self, data=None) -> None:
        pass

    def __getitem__(self, index: int) -> dict:
        study_index, k = self.items[index]
        study = self.studies[study_index]
        drf = int(self.R.choice(list(study["pet_low_dose"])))
        scale = study["pet_scale"][drf]
        item = {
            "pet_low_dose": slice_stack(study["pet_low_dose"][drf][None, None], self.context_slices, [k])[0],
            "mri_t1": slice_stack(study["mri_t1"][None, None], self.context_slices, [k])[0],
            "pet_standard_dose": study["pet_standard_dose"][..., k][None] / scale,
        }
        if "lesion_region" in study:
            item["lesion_region"] = study["lesion_region"][..., k][None]
        if self.patch_size is not None:
            item["brain_mask"] = torch.from_numpy(study["brain_mask"][..., k][None])
            item = self.crop(self.pad(item))[0]
            item.pop("brain_mask")
        if "lesion_region" in item:  # weight 1 everywhere (padding included), 1 + lesion_weight on lesions and shells
            item["loss_weight"] = 1.0 + self.lesion_weight * item.pop("lesion_region")
        item = {key: _as_tensor(v, None, False).float().contiguous() for key, v in item.items()}
        item.update(dose_reduction_factor=drf, id=study["id"])
        return item


def _lesion_region(record: dict, loader: LoadImage, shell_voxels: int, shape: tuple) -> np.ndarray:
    """The record's PET-only lesions grown by ``shell_voxels`` (all False when it has none)."""
    if not record.get("has_lesions") or "lesion_mask" not in record:
        return np.zeros(shape, dtype=bool)
    lesion = np.asarray(loader(record["lesion_mask"])) > 0
    return ndimage.binary_dilation(lesion, iterations=shell_voxels) if shell_voxels > 0 else lesion


class DiffusionPrepareBatch(PrepareBatch):
    """Noise the standard-dose slices for an x0-predicting conditional diffusion network.

    Returns ``(inputs, targets, (timesteps,), kwargs)`` for ``SupervisedTrainer`` with a ``SimpleInferer``, i.e. the
    network is called as ``network(cat([x_t, LD, MRI]), timesteps, **kwargs)`` and the loss as ``loss(pred, SD)``
    (``loss(pred, cat([SD, loss_weight]))`` when the batch carries a voxel weight map, see :class:`PETSliceDataset`).

    Args:
        scheduler: noise scheduler (``add_noise`` and ``num_train_timesteps``).
        mri_dropout_prob: per-sample probability of M2Diff's MRI-free path (``kwargs["mri_free"]``, a ``(B,)`` bool
            tensor); 0 passes no ``mri_free`` (networks without an MRI-free path).
        use_mri: give the MRI channels (``False``: PET-only conditioning, the MRI channels are left out).
    """

    def __init__(self, scheduler: Scheduler, mri_dropout_prob: float = 0.0, use_mri: bool = True) -> None:
        if not 0.0 <= mri_dropout_prob <= 1.0:
            raise ValueError(f"mri_dropout_prob must be in [0, 1], got {mri_dropout_prob}")
        self.scheduler = scheduler
        self.mri_dropout_prob = float(mri_dropout_prob)
        self.use_mri = use_mri

    def __call__(
        self, batchdata: dict, device: str | torch.device | None = None, non_blocking: bool = False, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict]:
        standard_dose = _as_tensor(batchdata["pet_standard_dose"], device, non_blocking, **kwargs)
        conditions = [_as_tensor(batchdata["pet_low_dose"], device, non_blocking, **kwargs)]
        if self.use_mri:
            conditions.append(_as_tensor(batchdata["mri_t1"], device, non_blocking, **kwargs))
        batch_size = standard_dose.shape[0]
        noise = torch.randn_like(standard_dose)
        timesteps = torch.randint(0, self.scheduler.num_train_timesteps, (batch_size,), device=standard_dose.device)
        noisy = self.scheduler.add_noise(original_samples=standard_dose, noise=noise, timesteps=timesteps)
        network_kwargs = {}
        if self.mri_dropout_prob > 0:
            network_kwargs["mri_free"] = torch.rand(batch_size, device=standard_dose.device) < self.mri_dropout_prob
        target = standard_dose
        if "loss_weight" in batchdata:
            target = torch.cat([standard_dose, _as_tensor(batchdata["loss_weight"], device, non_blocking, **kwargs)], 1)
        return torch.cat([noisy, *conditions], dim=1), target, (timesteps,), network_kwargs


class RegressionPrepareBatch(PrepareBatch):
    """``([LD, MRI], SD)`` slices for a direct regression network (``use_mri=False``: ``(LD, SD)``); the target gets
    the batch's ``loss_weight`` as a second channel when it has one (:class:`VoxelWeightedMSELoss`)."""

    def __init__(self, use_mri: bool = True) -> None:
        self.use_mri = use_mri

    def __call__(
        self, batchdata: dict, device: str | torch.device | None = None, non_blocking: bool = False, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keys = ["pet_low_dose", "mri_t1"] if self.use_mri else ["pet_low_dose"]
        inputs = torch.cat([_as_tensor(batchdata[k], device, non_blocking, **kwargs) for k in keys], dim=1)
        targets = ["pet_standard_dose"] + (["loss_weight"] if "loss_weight" in batchdata else [])
        return inputs, torch.cat([_as_tensor(batchdata[k], device, non_blocking, **kwargs) for k in targets], dim=1)


def _as_tensor(value, device, non_blocking: bool, **kwargs) -> torch.Tensor:
    value = value.as_tensor() if isinstance(value, MetaTensor) else torch.as_tensor(value)
    return value.to(device=device, non_blocking=non_blocking, **kwargs)


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error; with a non-empty ``weight`` (broadcast to ``pred``) each squared error is weighted by it
    and the sum normalised by the weights' sum."""
    if weight is None or weight.numel() == 0:
        return nn.functional.mse_loss(pred, target)
    weight = weight.expand_as(pred)
    return torch.sum(weight * (pred - target) ** 2) / torch.sum(weight)


class VoxelWeightedMSELoss(nn.Module):
    """MSE of a one-channel prediction; a target ``(B, 2, ...)`` holds the SD and the voxel weights (see
    :func:`weighted_mse`), a target ``(B, 1, ...)`` the SD alone."""

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.ndim != target.ndim or pred.shape[1] != 1 or target.shape[1] not in (1, 2):
            raise ValueError(
                f"expected pred (B, 1, ...) and target (B, 1 or 2, ...), "
                f"got {tuple(pred.shape)} and {tuple(target.shape)}"
            )
        return weighted_mse(pred, target[:, :1], target[:, 1:])


class MultiTaskDiffusionLoss(nn.Module):
    """M2Diff's multi-task loss on the two heads' x0 predictions.

    ``pet_weight * MSE(pred[:, 0], SD) + mri_weight * MSE(pred[:, 1], SD) + consistency_weight * MSE(pred[:, 0],
    pred[:, 1])``; the paper uses 0.4, 0.4, 0.2. A target with a second channel holds voxel weights: each squared
    error is then weighted by it (normalised by the weights' sum), e.g. to give PET-only lesions more weight.

    Args:
        pet_weight: weight of the PET head's error.
        mri_weight: weight of the MRI head's error.
        consistency_weight: weight of the disagreement between the heads.
    """

    def __init__(self, pet_weight: float = 0.4, mri_weight: float = 0.4, consistency_weight: float = 0.2) -> None:
        super().__init__()
        self.pet_weight = pet_weight
        self.mri_weight = mri_weight
        self.consistency_weight = consistency_weight

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Args: pred ``(B, 2, H, W)`` (PET head, MRI head); target ``(B, 1 or 2, H, W)`` (SD, optional voxel weight).

        Returns a scalar.
        """
        if pred.ndim != target.ndim or pred.shape[1] != 2 or target.shape[1] not in (1, 2):
            raise ValueError(
                f"expected pred (B, 2, ...) and target (B, 1 or 2, ...), "
                f"got {tuple(pred.shape)} and {tuple(target.shape)}"
            )
        pet_head, mri_head = pred[:, :1], pred[:, 1:]
        target, weight = target[:, :1], target[:, 1:]
        return (
            self.pet_weight * weighted_mse(pet_head, target, weight)
            + self.mri_weight * weighted_mse(mri_head, target, weight)
            + self.consistency_weight * weighted_mse(pet_head, mri_head, weight)
        )


class EMAUpdate:
    """Update an exponential moving average of ``network``'s weights after every training iteration.

    Kept by hand: ignite's ``EMAHandler`` has no ``module.``/``n_averaged`` keys: checkpoints' ``ema`` would not load.

    The average is torch's ``AveragedModel`` (built in the config with ``get_ema_multi_avg_fn(decay)``); its first
    update copies the network, so weights loaded at start (``pretrained_ckpt``) are where the average begins.

    Args:
        ema: the ``torch.optim.swa_utils.AveragedModel`` holding the average.
        network: the trained network (not its ``DistributedDataParallel`` wrapper: the parameters are the same).
    """

    def __init__(self, ema: torch.optim.swa_utils.AveragedModel, network: nn.Module) -> None:
        self.ema, self.network = ema, network

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine=None) -> None:
        self.ema.update_parameters(self.network)


def check_resume_checkpoint(path: str | None) -> str | None:
    """Check that ``path`` (``resume_ckpt``) is a resumable training checkpoint, not bare network weights; log the
    epoch it resumes after (ignite's own "resuming from iteration 0, epoch 0" comes before the checkpoint is loaded).

    Raises:
        ValueError: naming the file and pointing to ``pretrained_ckpt`` when it holds only network weights.
    """
    if not path:
        return path
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    missing = [key for key in RESUME_KEYS if key not in checkpoint]
    if missing:
        raise ValueError(
            f"resume_ckpt {path} is not a training checkpoint (no {', '.join(missing)}): to fine-tune from network "
            "weights such as models/model.pt use --pretrained_ckpt instead"
        )
    trainer = checkpoint.get("trainer") or {}
    iteration, epoch_length = int(trainer.get("iteration", 0)), int(trainer.get("epoch_length") or 1)
    epoch = int(trainer.get("epoch", iteration // epoch_length))
    logger.info(f"resume_ckpt {path}: training resumes after epoch {epoch} (iteration {iteration})")
    return path


def resume_load_dict(parts: dict, path: str | None) -> dict:
    """The parts of ``train#checkpoint`` to restore from ``path``: all of them, or without the best validation score
    when ``path`` was written before checkpoints held it (a warning says the resumed run starts that score afresh)."""
    if not path or BEST_MODEL_KEY not in parts:
        return parts
    if BEST_MODEL_KEY in torch.load(path, map_location="cpu", weights_only=True, mmap=True):
        return parts
    logger.warning(
        f"resume_ckpt {path} holds no best validation score (written before 0.8.2): the first validation of the "
        "resumed run will replace model.pt whatever its score"
    )
    return {key: value for key, value in parts.items() if key != BEST_MODEL_KEY}


class BestModelState:
    """The best validation score so far and the saver of ``model.pt``, as one part of a training checkpoint.

    Without it a resumed run forgets its best score: its first validation would replace ``model.pt`` (the best network
    so far) whatever that validation scored. Saved with the checkpoint, the evaluator's ``best_metric`` and the key
    metric saver's record of ``model.pt``'s score come back on resume. The saver exports no record, so it is written
    from the evaluator's best score: both keep a score only when it beats the last (the saver keeps one model).

    Args:
        evaluator: the validation engine (its ``state.best_metric`` and ``state.best_metric_epoch``).
        saver: the ``CheckpointSaver`` that writes ``model.pt`` by the key metric; ``None`` on ranks that do not save.
    """

    def __init__(self, evaluator, saver=None) -> None:
        self.evaluator = evaluator
        self.saver = saver

    def state_dict(self) -> dict:
        state = self.evaluator.state
        saved = self.saver is not None and self.has_best()
        return {
            "best_metric": float(state.best_metric),
            "best_metric_epoch": int(state.best_metric_epoch),
            "saved": [(float(state.best_metric), "model.pt")] if saved else [],  # the saver's fixed file name
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self.evaluator.state.best_metric = state_dict["best_metric"]
        self.evaluator.state.best_metric_epoch = state_dict["best_metric_epoch"]
        if self.saver is not None:
            self.saver.load_state_dict({"_saved": [tuple(item) for item in state_dict["saved"]]})

    def has_best(self) -> bool:
        """Whether a validation round (of this run or of the run it resumes) has scored a network."""
        return int(self.evaluator.state.best_metric_epoch) > 0


def require_model_file(path: str | None) -> str | None:
    """Check, before evaluation starts, that the trained network ``path`` exists (``None``: no network needed).

    Raises:
        FileNotFoundError: naming the file and how to get it.
    """
    if path and not os.path.isfile(path):
        raise FileNotFoundError(
            f"model file {path} not found: train first (configs/train.json with the same --runs_dir leaves "
            "<runs_dir>/<method>/checkpoints/model.pt) or pass --model_file /path/to/model.pt"
        )
    return path


class ModelFileFallback:
    """Save the network's final weights as ``model.pt`` when this training run did not write one.

    ``model.pt`` is normally the best network by the validation key metric (a ``CheckpointSaver`` of the validation
    handlers); a run without validation subjects (or without a validation round) would otherwise leave no
    ``model.pt``, or a stale one from an earlier run, for evaluation and inference. The weights are a plain CPU
    state_dict (unwrapped from ``DistributedDataParallel``). A resumed run whose validations did not beat the run
    it resumes keeps that run's ``model.pt`` (``best_model`` knows its score). Attach it on rank 0 only.

    Args:
        network: the trained network (or its ``DistributedDataParallel`` wrapper).
        path: the model file, e.g. ``<ckpt_dir>/model.pt``.
        best_model: the best validation score so far, restored on resume; ``None`` = only this run's saves count.
    """

    def __init__(self, network: nn.Module, path: str, best_model: BestModelState | None = None) -> None:
        self.network = network
        self.path = path
        self.best_model = best_model
        self._mtime_at_start: int | None = None

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def _mtime(self) -> int | None:
        return os.stat(self.path).st_mtime_ns if os.path.exists(self.path) else None

    def started(self, engine=None) -> None:
        self._mtime_at_start = self._mtime()

    def completed(self, engine=None) -> None:
        mtime = self._mtime()
        if mtime is not None and mtime != self._mtime_at_start:
            return  # validation saved this run's best network
        if mtime is not None and self.best_model is not None and self.best_model.has_best():
            return  # the resumed run's best network stands: nothing since has beaten it
        network = getattr(self.network, "module", self.network)
        state = {key: value.detach().cpu() for key, value in network.state_dict().items()}
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        torch.save(state, self.path)
        logger.warning(f"validation saved no model in this run: saved the final network as {self.path}")
