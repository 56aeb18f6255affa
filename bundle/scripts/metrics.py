"""Image-quality metrics of an enhanced PET volume against a reference, in the brain and in activity units.

Primary numbers (brain-masked, 3D, physical units): :func:`masked_psnr`, :func:`masked_ssim`, :func:`masked_nmse`,
:func:`mean_bias`, :func:`suvr_bias` (and :func:`region_bias`: it and its two regions). Beside them,
:func:`per_slice_protocol` reproduces the paper's protocol (each axial slice min-max normalised, masked by a mask
thresholded from the SD slice, PSNR/SSIM of whole slices), which inflates the numbers and is reported only for
comparison with published values.

:class:`MaskedPSNRMetric` and :class:`MaskedSSIMMetric` wrap the 3D functions for MONAI/ignite engines: their ``y``
holds the reference in channel 0 and the brain mask in channel 1; channel 0 of ``y_pred`` is scored (channel 1 may
hold a standard deviation map).
"""

from __future__ import annotations

import numpy as np
import torch
from monai.metrics import CumulativeIterationMetric, PSNRMetric, SSIMMetric
from monai.metrics.regression import compute_ssim_and_cs
from monai.utils import MetricReduction

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5


def _tensor(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x), dtype=torch.float64)


def _check(pred: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor) -> None:
    if pred.shape != ref.shape or mask.shape != ref.shape:
        raise ValueError(
            f"pred, reference and mask must share one shape, got {tuple(pred.shape)}, {tuple(ref.shape)}, "
            f"{tuple(mask.shape)}"
        )
    if not mask.any():
        raise ValueError("the brain mask is empty")


def peak(ref, mask) -> float:
    """Default data range: the reference's maximum in the mask (activity images start at 0)."""
    ref, mask = _tensor(ref), _tensor(mask) > 0
    return float(ref[mask].max())


def masked_psnr(pred, ref, mask, data_range: float | None = None) -> float:
    """PSNR (dB) over the mask voxels: ``10 log10(data_range^2 / MSE_mask)``.

    Args:
        pred: enhanced image, any shape (e.g. ``(H, W, D)``).
        ref: reference image, same shape.
        mask: brain mask, same shape (nonzero = inside).
        data_range: peak value; default the reference's maximum in the mask.
    """
    pred, ref, mask = _tensor(pred), _tensor(ref), _tensor(mask) > 0
    _check(pred, ref, mask)
    data_range = peak(ref, mask) if data_range is None else data_range
    mse = float(((pred - ref)[mask] ** 2).mean())
    return float("inf") if mse == 0 else 10.0 * np.log10(data_range**2 / mse)


def masked_nmse(pred, ref, mask) -> float:
    """Normalised MSE over the mask: ``sum((pred - ref)^2) / sum(ref^2)``."""
    pred, ref, mask = _tensor(pred), _tensor(ref), _tensor(mask) > 0
    _check(pred, ref, mask)
    return float(((pred - ref)[mask] ** 2).sum() / (ref[mask] ** 2).sum())


def mean_bias(pred, ref, mask) -> float:
    """Relative bias of the mean activity in the mask, in percent: ``100 (mean(pred) - mean(ref)) / mean(ref)``."""
    pred, ref, mask = _tensor(pred), _tensor(ref), _tensor(mask) > 0
    _check(pred, ref, mask)
    return float(100.0 * (pred[mask].mean() - ref[mask].mean()) / ref[mask].mean())


def masked_ssim(pred, ref, mask, data_range: float | None = None, win_size: int = SSIM_WINDOW) -> float:
    """Mean of the 3D (or 2D) Gaussian-window SSIM map over the mask voxels.

    MONAI's ``compute_ssim_and_cs`` gives the SSIM map of the valid windows; the mask is cropped alike and the map is
    averaged inside it. The window shrinks (odd) when a dimension is smaller than ``win_size``.

    Args:
        pred: enhanced image ``(H, W[, D])``.
        ref: reference image, same shape.
        mask: brain mask, same shape.
        data_range: dynamic range; default the reference's maximum in the mask.
        win_size: Gaussian window size (sigma 1.5).
    """
    pred, ref, mask = _tensor(pred), _tensor(ref), _tensor(mask) > 0
    _check(pred, ref, mask)
    data_range = peak(ref, mask) if data_range is None else data_range
    sizes = [min(win_size, s if s % 2 else s - 1) for s in ref.shape]
    ssim_map, _ = compute_ssim_and_cs(
        pred[None, None],
        ref[None, None],
        spatial_dims=ref.ndim,
        kernel_size=sizes,
        kernel_sigma=[SSIM_SIGMA] * ref.ndim,
        data_range=data_range,
    )
    crop = tuple(slice(k // 2, s - k // 2) for k, s in zip(sizes, ref.shape))
    inner = mask[crop]
    if not inner.any():
        raise ValueError(f"the brain mask has no voxel at least {max(sizes) // 2} voxels from the image border")
    return float(ssim_map[0, 0][inner].mean())


def suvr_bias(pred, ref, labels, affine) -> float:
    """Relative bias of the meta-ROI / pons SUVR (``scripts.regions.suvr``), in percent."""
    return region_bias(pred, ref, labels, affine)["suvr_bias_pct"]


def region_bias(pred, ref, labels, affine) -> dict[str, float]:
    """Relative biases (%) of the meta-ROI mean, of the pons mean and of their ratio (the SUVR), masks built once.

    Returns:
        ``{"meta_roi_bias_pct", "pons_bias_pct", "suvr_bias_pct"}``: which side of the SUVR moved, and the SUVR's bias
        ``(1 + meta) / (1 + pons) - 1``.
    """
    from scripts.regions import meta_roi_mask, pons_mask

    pred, ref, labels, affine = (np.asarray(_tensor(v)) for v in (pred, ref, labels, affine))
    labels = labels.astype(np.int32)
    regions = {"meta_roi": meta_roi_mask(labels), "pons": pons_mask(labels, affine)}
    empty = [name for name, region in regions.items() if not region.any()]
    if empty:
        raise ValueError(f"empty region: {', '.join(empty)}")
    ratio = {name: float(pred[r].mean() / ref[r].mean()) for name, r in regions.items()}
    return {
        "meta_roi_bias_pct": 100.0 * (ratio["meta_roi"] - 1),
        "pons_bias_pct": 100.0 * (ratio["pons"] - 1),
        "suvr_bias_pct": 100.0 * (ratio["meta_roi"] / ratio["pons"] - 1),
    }


def per_slice_protocol(pred, ref, threshold: float = 0.05) -> dict[str, float]:
    """The paper's protocol: per axial slice, min-max normalise each image, mask, score whole slices, average.

    The mask of a slice is where the standard-dose (reference) slice exceeds ``threshold`` times its maximum; slices
    without such voxels are skipped. PSNR (peak 1) and SSIM (2D, window 11) are MONAI's ``PSNRMetric``/``SSIMMetric``.

    Args:
        pred: enhanced volume ``(H, W, D)``, axial = last axis.
        ref: standard-dose volume ``(H, W, D)``.
        threshold: fraction of each reference slice's maximum that defines its mask.

    Returns:
        ``{"slice_psnr": ..., "slice_ssim": ...}`` averaged over slices.
    """
    pred, ref = _tensor(pred), _tensor(ref)
    if pred.shape != ref.shape or pred.ndim != 3:
        raise ValueError(f"expected two (H, W, D) volumes of one shape, got {tuple(pred.shape)}, {tuple(ref.shape)}")
    pred_slices, ref_slices = pred.permute(2, 0, 1)[:, None], ref.permute(2, 0, 1)[:, None]  # (D, 1, H, W)

    def minmax(x: torch.Tensor) -> torch.Tensor:
        low = x.amin(dim=(2, 3), keepdim=True)
        span = x.amax(dim=(2, 3), keepdim=True) - low
        return (x - low) / torch.where(span > 0, span, torch.ones_like(span))

    masks = ref_slices > threshold * ref_slices.amax(dim=(2, 3), keepdim=True)
    keep = masks.flatten(1).any(dim=1) & (ref_slices.flatten(1).amax(dim=1) > 0)
    if not keep.any():
        raise ValueError("no reference slice holds any activity")
    pred_n = (minmax(pred_slices) * masks)[keep].float()
    ref_n = (minmax(ref_slices) * masks)[keep].float()
    psnr = PSNRMetric(max_val=1.0, reduction=MetricReduction.NONE)(pred_n, ref_n)
    ssim = SSIMMetric(spatial_dims=2, data_range=1.0, reduction=MetricReduction.NONE)(pred_n, ref_n)
    finite = torch.isfinite(psnr)
    return {"slice_psnr": float(psnr[finite].mean()), "slice_ssim": float(ssim.mean())}


class _MaskedMetric(CumulativeIterationMetric):
    """Per-image metric of ``y_pred[:, 0]`` against ``y[:, 0]`` in the mask ``y[:, 1]``; mean over images."""

    function = staticmethod(masked_psnr)

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if y.shape[1] != 2:
            raise ValueError(f"expected y with 2 channels (reference, brain mask), got {tuple(y.shape)}")
        values = [type(self).function(p[0], r[0], r[1]) for p, r in zip(y_pred, y)]
        return torch.tensor(values, dtype=torch.float32)[:, None]

    def aggregate(self) -> torch.Tensor:  # type: ignore[override]
        data = self.get_buffer()
        return data.float().mean() if isinstance(data, torch.Tensor) else torch.tensor(float("nan"))


class MaskedPSNRMetric(_MaskedMetric):
    """Brain-masked PSNR (peak = reference maximum in the mask) for engines: ``y`` = [reference, mask]."""

    function = staticmethod(masked_psnr)


class MaskedSSIMMetric(_MaskedMetric):
    """Brain-masked SSIM (data range = reference maximum in the mask) for engines: ``y`` = [reference, mask]."""

    function = staticmethod(masked_ssim)
