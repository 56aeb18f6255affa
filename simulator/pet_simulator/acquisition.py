"""PET acquisition model: PSF, attenuation, scatter, randoms, calibration and Poisson noise at several doses.

The "true" system (simulation) and the reconstruction system differ on purpose (no inverse crime): the simulation
uses a PSF with a wide tail and a per-subject FWHM, sub-ray (bin-width) sampling, and optionally a 1 mm image grid,
while reconstruction uses a single-ray Joseph projector on the 2 mm grid and a pure Gaussian PSF.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage

from .constants import fwhm_to_sigma
from .projector import GaussianPSF, ParallelBeamProjector
from .reconstruction import osem, post_filter

__all__ = ["ScannerConfig", "Scanner", "axial_downsample", "downsample_2x"]


@dataclass
class ScannerConfig:
    """Scanner and reconstruction settings.

    Attributes:
        n_angles: projection angles over 180 degrees.
        n_subsets: OSEM subsets.
        n_iterations: OSEM iterations.
        post_filter_mm: Gaussian post-filter FWHM (mm).
        scatter_fraction: scatter / (trues + scatter).
        randoms_fraction: randoms / prompts.
        scatter_fwhm_mm: radial FWHM of the scatter kernel (mm).
        sim_ray_offsets: sub-rays per detector bin in the simulation projector (fractions of a bin).
        psf_tail_fraction: weight of the wide PSF tail in the simulation.
        recon_psf_ratio: reconstruction PSF FWHM relative to the true core FWHM (under-modelled, as in practice).
    """

    n_angles: int = 168
    n_subsets: int = 21
    n_iterations: int = 4
    post_filter_mm: float = 3.0
    scatter_fraction: float = 0.35
    randoms_fraction: float = 0.15
    scatter_fwhm_mm: float = 120.0
    sim_ray_offsets: tuple[float, ...] = (-1.0 / 3.0, 0.0, 1.0 / 3.0)
    psf_tail_fraction: float = 0.08
    recon_psf_ratio: float = 0.9
    extra: dict = field(default_factory=dict)


def _smooth_weights() -> np.ndarray:
    return np.array([0.25, 0.5, 0.25], dtype=np.float32)


def axial_downsample(sino: np.ndarray | torch.Tensor, n_out: int):
    """Combine 1 mm planes into 2 mm planes (plane j = 0.25 * [2j-1] + 0.5 * [2j] + 0.25 * [2j+1]) on the last axis."""
    arr = torch.as_tensor(sino)
    w = torch.as_tensor(_smooth_weights())
    pad = torch.nn.functional.pad(arr.reshape(-1, 1, arr.shape[-1]), (1, 1), mode="replicate")
    out = torch.nn.functional.conv1d(pad, w.view(1, 1, 3))[..., ::2][..., :n_out]
    return out.reshape(*arr.shape[:-1], n_out)


def downsample_2x(image: np.ndarray, out_shape: tuple[int, int, int]) -> np.ndarray:
    """Average a 1 mm image onto the 2 mm grid whose voxel centres are the even 1 mm voxels."""
    w = _smooth_weights()
    out = image.astype(np.float32)
    for ax in range(3):
        out = ndimage.convolve1d(out, w, axis=ax, mode="nearest")
    return np.ascontiguousarray(out[::2, ::2, ::2][: out_shape[0], : out_shape[1], : out_shape[2]])


class Scanner:
    """Forward model and OSEM reconstruction for one simulation grid and the 2 mm reconstruction grid.

    Args:
        recon_shape: reconstruction grid shape (X, Y, Z) (2 mm).
        sim_voxel_mm: 2 (simulate on the reconstruction grid) or 1 (simulate on the 1 mm grid, recommended).
        config: scanner settings.
    """

    def __init__(self, recon_shape: tuple[int, int, int], sim_voxel_mm: int = 2, config: ScannerConfig | None = None):
        self.config = config or ScannerConfig()
        self.recon_shape = tuple(int(n) for n in recon_shape)
        self.recon_voxel_mm = 2.0
        self.sim_voxel_mm = int(sim_voxel_mm)
        c = self.config
        self.recon_projector = ParallelBeamProjector(
            self.recon_shape[:2], self.recon_voxel_mm, c.n_angles, n_subsets=c.n_subsets
        )
        if self.sim_voxel_mm == 2:
            self.sim_shape = self.recon_shape
            offsets = c.sim_ray_offsets
        elif self.sim_voxel_mm == 1:
            self.sim_shape = tuple(2 * n - 1 for n in self.recon_shape)
            offsets = (0.0,)
        else:
            raise ValueError(f"sim_voxel_mm must be 1 or 2, got {sim_voxel_mm}")
        self.sim_projector = ParallelBeamProjector(
            self.sim_shape[:2],
            float(self.sim_voxel_mm),
            c.n_angles,
            bin_mm=self.recon_voxel_mm,
            n_bins=self.recon_projector.n_bins,
            n_subsets=1,
            ray_offsets=offsets,
        )

    def _sim_to_recon_planes(self, sino: torch.Tensor) -> torch.Tensor:
        if self.sim_voxel_mm == 2:
            return sino
        return axial_downsample(sino, self.recon_shape[2])

    @torch.no_grad()
    def expected_data(
        self, activity_sim: np.ndarray, mu_sim: np.ndarray, mu_recon: np.ndarray, psf_fwhm_mm, total_trues: float
    ) -> dict:
        """Noise-free prompts and the known system terms.

        Args:
            activity_sim: true activity (Bq/ml) on the simulation grid.
            mu_sim: mu-map (1/mm) on the simulation grid.
            mu_recon: mu-map (1/mm) on the 2 mm grid (used by reconstruction).
            psf_fwhm_mm: true PSF FWHM (x, y, z) in mm.
            total_trues: expected true coincidences at standard dose.

        Returns:
            dict of torch tensors on the reconstruction sinogram grid: ``prompts`` (expected), ``additive``
            (scatter + randoms), ``multiplicative`` (calibration x attenuation), and floats ``calibration``,
            ``scatter_counts``, ``randoms_counts``.
        """
        c = self.config
        psf = GaussianPSF(self.sim_shape, psf_fwhm_mm, self.sim_voxel_mm, tail_fraction=c.psf_tail_fraction)
        x = torch.from_numpy(np.ascontiguousarray(activity_sim, dtype=np.float32))
        att_sim = torch.exp(-self.sim_projector.forward(torch.from_numpy(np.ascontiguousarray(mu_sim))))
        trues = self._sim_to_recon_planes(att_sim * self.sim_projector.forward(psf.forward(x)))
        calibration = float(total_trues) / float(trues.sum())
        trues = trues * calibration
        # scatter: heavily blurred trues (radially and axially), scaled to the scatter fraction
        sig_bins = fwhm_to_sigma(c.scatter_fwhm_mm) / self.recon_voxel_mm
        scat = ndimage.gaussian_filter(trues.numpy(), (0, sig_bins, 2.0), mode="constant")
        scat = torch.from_numpy(scat.astype(np.float32))
        scat_total = c.scatter_fraction / (1 - c.scatter_fraction) * float(total_trues)
        scat = scat * (scat_total / float(scat.sum()))
        rand_total = c.randoms_fraction / (1 - c.randoms_fraction) * (float(total_trues) + scat_total)
        randoms = torch.full_like(trues, rand_total / trues.numel())
        att_recon = torch.exp(-self.recon_projector.forward(torch.from_numpy(np.ascontiguousarray(mu_recon))))
        # calibration in the reconstruction: the same global factor, applied to the 2 mm system
        return {
            "prompts": trues + scat + randoms,
            "additive": scat + randoms,
            "multiplicative": att_recon * calibration,
            "calibration": calibration,
            "scatter_counts": scat_total,
            "randoms_counts": rand_total,
        }

    @torch.no_grad()
    def reconstruct(
        self, prompts: torch.Tensor, data: dict, recon_psf_fwhm_mm: float, dose_reduction_factor: float = 1.0
    ) -> np.ndarray:
        """OSEM + post-filter; ``dose_reduction_factor`` scales the system model so units stay Bq/ml."""
        c = self.config
        psf = GaussianPSF(self.recon_shape, recon_psf_fwhm_mm, self.recon_voxel_mm)
        img = osem(
            prompts,
            self.recon_projector,
            psf,
            data["multiplicative"] / dose_reduction_factor,
            data["additive"] / dose_reduction_factor,
            n_iterations=c.n_iterations,
        )
        return post_filter(img.numpy(), c.post_filter_mm, self.recon_voxel_mm)

    @staticmethod
    def poisson(expected: torch.Tensor, rng: np.random.Generator, dose_reduction_factor: float = 1.0) -> torch.Tensor:
        """Poisson counts at a reduced dose (``expected / DRF``), equivalent to list-mode thinning."""
        lam = expected.numpy().astype(np.float64) / dose_reduction_factor
        return torch.from_numpy(rng.poisson(lam).astype(np.float32))


def log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    """Draw from a log-uniform distribution on [low, high]."""
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))
