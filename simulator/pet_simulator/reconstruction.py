"""OSEM reconstruction with resolution modelling and known additive (scatter + randoms) terms."""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from .constants import fwhm_to_sigma
from .projector import GaussianPSF, ParallelBeamProjector

__all__ = ["osem", "post_filter"]


def post_filter(image: np.ndarray, fwhm_mm: float, voxel_mm: float) -> np.ndarray:
    """Isotropic Gaussian post-filter (FWHM in mm)."""
    if fwhm_mm <= 0:
        return image
    sigma = fwhm_to_sigma(fwhm_mm) / voxel_mm
    return ndimage.gaussian_filter(image, sigma, mode="constant").astype(np.float32)


@torch.no_grad()
def osem(
    sinogram: torch.Tensor,
    projector: ParallelBeamProjector,
    psf: GaussianPSF | None,
    multiplicative: torch.Tensor,
    additive: torch.Tensor,
    n_iterations: int = 4,
    initial: torch.Tensor | None = None,
) -> torch.Tensor:
    """Ordered-subsets expectation maximisation for ``y ~ Poisson(m * A H x + r)``.

    Args:
        sinogram: measured counts (n_angles, n_bins, Z).
        projector: the reconstruction projector (its ``n_subsets`` sets the subsets).
        psf: resolution model ``H`` (None: no resolution modelling).
        multiplicative: per-bin factor ``m`` (n_angles, n_bins, Z): calibration x attenuation (/ dose reduction).
        additive: expected scatter + randoms ``r`` (n_angles, n_bins, Z), in counts.
        n_iterations: full passes over the subsets.
        initial: optional start image (X, Y, Z); default is a uniform image matched to the net counts.

    Returns:
        image (X, Y, Z) in the units implied by ``multiplicative`` (Bq/ml when m includes the calibration).
    """
    blur = psf.forward if psf is not None else (lambda v: v)
    blur_t = psf.adjoint if psf is not None else (lambda v: v)
    subsets = projector.subset_angles
    sens = [blur_t(projector.back(multiplicative[ang], subset=k)) for k, ang in enumerate(subsets)]
    if initial is None:
        total_sens = float(sum(s.sum() for s in sens))
        net = float(torch.clamp(sinogram - additive, min=0).sum())
        x = torch.full(sens[0].shape, max(net, 1.0) / max(total_sens, 1e-12), dtype=torch.float32)
    else:
        x = initial.clone().float()
    eps = 1e-12
    inv_sens = [torch.where(s > eps * float(s.max()), 1.0 / s.clamp_min(1e-30), torch.zeros_like(s)) for s in sens]
    for _ in range(n_iterations):
        for k, ang in enumerate(subsets):
            m_k = multiplicative[ang]
            ybar = m_k * projector.forward(blur(x), subset=k) + additive[ang]
            ratio = m_k * sinogram[ang] / ybar.clamp_min(1e-12)
            x = x * inv_sens[k] * blur_t(projector.back(ratio, subset=k))
    return x
