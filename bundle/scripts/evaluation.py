"""Score the studies inference wrote against the standard-dose images, per study, and summarise per method and dose.

configs/evaluate.json runs inference's own workflow (configs/inference.json: preprocessing, inferer, restore,
writer) on a split of a cohort: :func:`study_records` turns the split's records into inference studies, and
:class:`StudyEvaluationHandler`, attached to inference's engine, reads each written ``<id>_enhanced.nii.gz`` and
scores it against the standard-dose (SD) and the noise-free SD images (``scripts.metrics``), draws a panel
(``scripts.plotting``), and at the end writes ``metrics.csv`` and ``summary.json``. The numbers are those of the
files inference writes, by construction.
"""

from __future__ import annotations

import csv
import logging
import os
from collections import defaultdict

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.transforms import Compose, LoadImaged, Orientationd

from scripts import metrics
from scripts.faithfulness import lesion_contrast, pattern_retention
from scripts.io.options import flag
from scripts.io.writers import atomic_path, write_json
from scripts.plotting import evaluation_figure, save_figure, slice_position

logger = logging.getLogger(__name__)

REFERENCES = {"sd": "pet_sd", "sd_noisefree": "pet_sd_noisefree"}
#: columns of the console table (mean +- SD over studies)
TABLE_METRICS = ("psnr", "ssim", "nmse", "mean_bias_pct", "suvr_bias_pct")
METRIC_NAMES = ("psnr", "ssim", "nmse", "mean_bias_pct", "suvr_bias_pct", "slice_psnr", "slice_ssim")
#: the SUVR's two regions: which one moved (a small reference region such as the pons is the noisier)
REGION_METRICS = ("meta_roi_bias_pct", "pons_bias_pct")
METRIC_NAMES += REGION_METRICS
#: faithfulness (scripts.faithfulness): worst lesion-contrast error, within-region uptake pattern kept
FAITHFULNESS_METRICS = ("lesion_contrast_err_pct", "pattern_amplitude", "pattern_correlation")
METRIC_NAMES += FAITHFULNESS_METRICS
#: study subsets reported as rows of their own besides the CN/AD groups (record flag -> row name)
SUBSETS = {"has_lesions": "lesion", "t1_whole_head": "whole_head"}


def _array(x) -> np.ndarray:
    return np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64)


def _faithfulness(enhanced: np.ndarray, ref: np.ndarray, study: dict) -> dict:
    """Lesion contrast and uptake pattern metrics of one study (NaN where they do not apply)."""
    row = {name: float("nan") for name in FAITHFULNESS_METRICS}
    lesions = study.get("lesion_mask")
    if lesions is not None and lesions.any():
        errors = []
        for index in np.unique(lesions[lesions > 0]):
            lesion = lesions == index
            errors.append(lesion_contrast(enhanced, lesion) / lesion_contrast(ref, lesion) - 1)
        row["lesion_contrast_err_pct"] = 100 * float(max(errors, key=abs))
    if "labels" in study:
        kept = pattern_retention(enhanced, ref, study["labels"])
        row.update(pattern_amplitude=kept["amplitude"], pattern_correlation=kept["correlation"])
    return row


def score_study(enhanced, study: dict, per_slice_threshold: float = 0.05) -> list[dict]:
    """All metrics of one enhanced study against each reference image.

    Args:
        enhanced: ``(H, W, D)`` enhanced PET in activity units.
        study: ``pet_sd``, ``pet_sd_noisefree`` (``(H, W, D)``, activity units), ``brain_mask``, ``labels``,
            ``affine`` (4x4 of the labels' grid); optional ``lesion_mask`` (one integer per lesion).
        per_slice_threshold: mask threshold of the paper's per-slice protocol.

    Returns:
        One dict per reference present: ``{"reference": name, "psnr": ..., ...}``.
    """
    enhanced = _array(enhanced)
    mask = _array(study["brain_mask"]) > 0
    rows = []
    for name, key in REFERENCES.items():
        if key not in study:
            continue
        ref = _array(study[key])
        row = {
            "reference": name,
            "psnr": metrics.masked_psnr(enhanced, ref, mask),
            "ssim": metrics.masked_ssim(enhanced, ref, mask),
            "nmse": metrics.masked_nmse(enhanced, ref, mask),
            "mean_bias_pct": metrics.mean_bias(enhanced, ref, mask),
            "suvr_bias_pct": float("nan"),
            **{name: float("nan") for name in REGION_METRICS},
        }
        if "labels" in study:
            try:
                row.update(metrics.region_bias(enhanced, ref, study["labels"], study["affine"]))
            except ValueError:  # no meta-ROI or pons voxel in this field of view
                pass
        row.update(metrics.per_slice_protocol(enhanced, ref, per_slice_threshold))
        row.update(_faithfulness(enhanced, ref, study))
        rows.append(row)
    return rows


def _summary_order(item: tuple) -> tuple:
    """Dose levels in numeric order, the untrained-dose level (``random``) last."""
    (reference, level, group), _ = item
    return reference, not level.isdigit(), int(level) if level.isdigit() else 0, group


#: per-study facts of the run summarised beside the metrics
RUN_FIELDS = ("seconds", "network_calls_per_slice", "network_calls_per_volume", "consistency_fwhm_mm")


def summarise(rows: list[dict]) -> dict:
    """Mean and standard deviation of each metric per (reference, dose level, group) and per (reference, dose)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        subsets = [name for flag, name in SUBSETS.items() if row.get(flag)]
        for group in (row["group"], *subsets, "all"):
            groups[(row["reference"], str(row["dose_level"]), group)].append(row)
    summary: dict = {}
    for (reference, level, group), members in sorted(groups.items(), key=_summary_order):
        entry = {"n": len(members)}
        for name in METRIC_NAMES + RUN_FIELDS:
            values = np.array([m.get(name, np.nan) for m in members], dtype=float)
            values = values[np.isfinite(values)]
            entry[name] = {"mean": float(values.mean()), "std": float(values.std())} if values.size else None
        summary.setdefault(reference, {}).setdefault(f"drf{level}", {})[group] = entry
    return summary


def summary_table(summary: dict) -> str:
    """The summary's metrics as a text table: one row per (reference, dose level, group), mean +- SD."""
    header = ["reference", "dose", "group", "n"] + list(TABLE_METRICS)
    rows = []
    for reference, doses in summary.items():
        for dose, groups in doses.items():
            for group, entry in groups.items():
                cells = [reference, dose.replace("drf", "1/"), group, str(entry["n"])]
                for name in TABLE_METRICS:
                    value = entry.get(name)
                    cells.append("-" if value is None else f"{value['mean']:.4g} +- {value['std']:.2g}")
                rows.append(cells)
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header] + rows)


def final_metrics(summary: dict) -> dict[str, float]:
    """Flat ``{"<metric>_<reference>_<drfK>_<group>": mean}`` of a summary (for experiment trackers)."""
    flat = {}
    for reference, doses in summary.items():
        for dose, groups in doses.items():
            for group, entry in groups.items():
                for name in TABLE_METRICS:
                    if entry.get(name) is not None:
                        flat[f"{name}_{reference}_{dose}_{group}"] = entry[name]["mean"]
    return flat


def study_records(records: list[dict], with_mri: bool = True) -> list[dict]:
    """Inference studies (``id``, ``pet``, ``mri``, ``drf``) of per-dose records (``scripts.training.load_cohort``).

    Args:
        records: one record per (subject, dose level), with ``pet_low_dose``, ``t1``, ``dose_reduction_factor``.
        with_mri: give the T1 (``False``: the MRI-free path, as a study without MRI).
    """
    studies = []
    for record in records:
        study = {"id": study_id(record), "pet": record["pet_low_dose"], "drf": record["dose_reduction_factor"]}
        studies.append({**study, "mri": record["t1"]} if with_mri else study)
    return studies


def study_id(record: dict) -> str:
    """The inference study id of a per-dose cohort record: ``<subject>_drf<level>`` (a subject folder becomes ``-``)."""
    return f"{record['id']}_drf{record['dose_level']}".replace("/", "-")


#: images of a cohort record the scorer reads besides the enhanced file (those present)
IMAGE_KEYS = ("t1", "pet_low_dose", "pet_sd", "pet_sd_noisefree", "brain_mask", "labels", "lesion_mask")


def load_images(paths: dict) -> dict:
    """``{key: (H, W, D) float64}`` of NIfTI files in RAS, plus ``affine`` (of the last image: one grid)."""
    load = Compose(
        [
            LoadImaged(list(paths), image_only=True, ensure_channel_first=True, dtype=np.float32),
            Orientationd(list(paths), axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        ]
    )
    images = load(dict(paths))
    arrays = {key: _array(image)[0] for key, image in images.items()}
    arrays["affine"] = _array(images[list(paths)[-1]].affine)
    return arrays


def _count(number: int, noun: str) -> str:
    """``1 DDIM step``, ``4 DDIM steps``, ``1 study``, ``2 studies``."""
    plural = noun[:-1] + "ies" if noun.endswith("y") else noun + "s"
    return f"{number} {noun if number == 1 else plural}"


class StudyEvaluationHandler:
    """Score each study inference wrote; write ``metrics.csv``, ``summary.json`` and panels.

    Attached to inference's engine (``scripts.enhance.StudyEnhancer``), whose iteration output is the study's
    record: its status, the written ``outputs["enhanced"]``, ``seconds``, ``network_calls_per_slice``,
    ``consistency_fwhm_mm`` and ``network_grid``.

    Args:
        records: the per-dose cohort records enhanced (references, ``group``, dose, subset flags).
        output_dir: folder of the outputs.
        method: method name written in every row.
        save_panels: draw a PNG panel per study.
        per_slice_threshold: mask threshold of the paper's per-slice protocol.
    """

    def __init__(
        self,
        records: list[dict],
        output_dir: str,
        method: str,
        save_panels: bool = True,
        per_slice_threshold: float = 0.05,
    ) -> None:
        self.records = {study_id(record): record for record in records}
        self.output_dir = output_dir
        self.method = method
        self.save_panels = flag(save_panels, "save_panels")
        self.per_slice_threshold = per_slice_threshold
        self.num_inference_steps = 0
        self.rows: list[dict] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._score)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)  # before a tracker's epoch-end logging

    def _reset(self, engine: Engine) -> None:
        self.rows = []
        self.num_inference_steps = len(getattr(engine.inferer, "timesteps", ()))  # 0: not a diffusion method
        os.makedirs(self.output_dir, exist_ok=True)

    def _score(self, engine: Engine) -> None:
        result = engine.state.output
        if result.get("status") != "ok":  # inference recorded the failure; the run ends with it
            return
        record = self.records[result["id"]]
        paths = {key: record[key] for key in IMAGE_KEYS if record.get(key)}
        study = load_images({"pred": result["outputs"]["enhanced"], **paths})
        for key in ("labels", "lesion_mask"):
            if key in study:
                study[key] = study[key].astype(np.int32)
        calls = int(result.get("network_calls_per_slice") or 0)
        info = {
            "id": str(record["id"]),
            "group": str(record["group"]),
            "dose_reduction_factor": float(record["dose_reduction_factor"]),
            "dose_level": str(record["dose_level"]),
            "method": self.method,
            "num_inference_steps": self.num_inference_steps,
            "seconds": float(result["seconds"]),
            "network_calls_per_slice": calls,
            "network_calls_per_volume": calls * int(result["network_grid"]["shape"][-1]),
            "consistency_fwhm_mm": float(result.get("consistency_fwhm_mm") or 0.0),
            **{flag: bool(record.get(flag)) for flag in SUBSETS},
        }
        for row in score_study(study["pred"], study, self.per_slice_threshold):
            self.rows.append({**info, **row})
        if self.save_panels:
            self._panel(study, info)

    def _panel(self, study: dict, info: dict) -> None:
        mask = study["brain_mask"] > 0
        k = int(np.argmax(mask.sum(axis=(0, 1))))
        images = {
            "MRI": study["t1"][..., k],
            "low dose": study["pet_low_dose"][..., k],
            "enhanced": study["pred"][..., k],
            "standard dose": study["pet_sd"][..., k],
            "|error|": np.abs(study["pred"] - study["pet_sd"])[..., k],
        }
        os.makedirs(os.path.join(self.output_dir, "panels"), exist_ok=True)
        name = f"{info['id']}_drf{info['dose_level']}"
        title = f"{self.method}: {info['id']} ({info['group']}), dose 1/{info['dose_reduction_factor']:.3g}"
        position = slice_position(study["affine"], 2, k, mask.shape)
        figure = evaluation_figure(images, title, units="Bq/ml", affine=study["affine"], position=position)
        save_figure(figure, os.path.join(self.output_dir, "panels", f"{name}.png"))

    def _write(self, engine: Engine) -> None:
        """Write ``metrics.csv`` and ``summary.json``, log the table, put the means in ``engine.state.metrics``."""
        if not self.rows:
            logger.warning(f"{self.method}: no study was scored")
            return
        with atomic_path(os.path.join(self.output_dir, "metrics.csv")) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(self.rows[0]))
            writer.writeheader()
            writer.writerows(self.rows)
        summary = {
            "method": self.method,
            "num_inference_steps": self.num_inference_steps,
            "num_studies": len({(r["id"], r["dose_reduction_factor"]) for r in self.rows}),
            "seconds_per_volume": float(np.mean([r["seconds"] for r in self.rows])),
            "network_calls_per_slice": float(np.mean([r["network_calls_per_slice"] for r in self.rows])),
            "network_calls_per_volume": float(np.mean([r["network_calls_per_volume"] for r in self.rows])),
            "metrics": summarise(self.rows),
        }
        path = write_json(summary, os.path.join(self.output_dir, "summary.json"))
        engine.state.metrics.update(final_metrics(summary["metrics"]))
        steps = f", {_count(self.num_inference_steps, 'DDIM step')}" if self.num_inference_steps else ""
        title = f"{self.method}{steps}: {_count(summary['num_studies'], 'study')}, "
        title += f"{summary['seconds_per_volume']:.1f} s/volume"
        panels = os.path.join(self.output_dir, "panels")
        written = f"summary: {path}\nmetrics: {os.path.join(self.output_dir, 'metrics.csv')}"
        written += f"\npanels: {panels}{os.sep}<study>.png" if self.save_panels else ""
        logger.info(f"{title}\n{summary_table(summary['metrics'])}\n{written}")
