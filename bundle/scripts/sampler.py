"""DDIM sampling of a standard-dose PET volume, slice by slice, with x0-predicting networks.

The scheduler (MONAI's DDPM noise schedule: 1000 steps, linear betas 1e-4..0.02) knows nothing of the network; the
network knows nothing of sampling; :class:`DDIMVolumeSampler` is where they meet.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.networks.schedulers import DDPMScheduler
from torch import nn
from tqdm import tqdm

NUM_TRAIN_TIMESTEPS = 1000


def make_noise_scheduler() -> DDPMScheduler:
    """The training noise schedule of M2Diff: 1000 steps, linear betas 1e-4..0.02, x0 ("sample") prediction."""
    return DDPMScheduler(
        num_train_timesteps=NUM_TRAIN_TIMESTEPS,
        schedule="linear_beta",
        beta_start=1e-4,
        beta_end=0.02,
        prediction_type="sample",
        clip_sample=False,
    )


def _robust_mean(volume: torch.Tensor | np.ndarray, what: str) -> float:
    """Mean of the voxels above 25 % of the 99th percentile: a robust 'bright tissue' level that scales linearly."""
    values = np.asarray(volume.detach().cpu() if isinstance(volume, torch.Tensor) else volume, dtype=np.float64)
    values = values[np.isfinite(values)]
    high = np.percentile(values, 99) if values.size else 0.0
    if not high > 0:
        raise ValueError(f"cannot normalise the {what}: its 99th percentile is {high}, expected a positive image")
    return float(values[values > 0.25 * high].mean())


def pet_scale(pet_low_dose: torch.Tensor | np.ndarray, brain_mask: torch.Tensor | np.ndarray | None = None) -> float:
    """Per-volume intensity scale of a PET study (mean brain activity of the low-dose image).

    All PET images of a study (low dose, standard dose, outputs) are divided by this one number, so the original
    units are restored exactly by multiplying back. Scaling the input by ``a`` scales the result by ``a``.
    """
    if brain_mask is not None:
        values = np.asarray(pet_low_dose, dtype=np.float64)[np.asarray(brain_mask) > 0]
        mean = float(values.mean()) if values.size else 0.0
        if not mean > 0:
            raise ValueError(f"cannot normalise the PET: mean activity in the brain mask is {mean}")
        return mean
    return _robust_mean(pet_low_dose, "PET")


def mri_scale(mri_t1: torch.Tensor | np.ndarray) -> float:
    """Per-volume intensity scale of a T1 MRI (mean of its bright tissue)."""
    return _robust_mean(mri_t1, "MRI")


def ddim_timesteps(num_steps: int, start: int = NUM_TRAIN_TIMESTEPS - 1) -> list[int]:
    """Evenly spaced ("trailing") DDIM timesteps from ``start`` down, e.g. 4 steps from 999: 999, 749, 500, 250."""
    if num_steps < 1 or not 0 < start < NUM_TRAIN_TIMESTEPS:
        raise ValueError(f"need num_steps >= 1 and 0 < start < {NUM_TRAIN_TIMESTEPS}, got {num_steps}, {start}")
    return sorted({int(round(start * (num_steps - i) / num_steps)) for i in range(num_steps)}, reverse=True)


def ddim_step(x0: torch.Tensor, x_t: torch.Tensor, alpha_t: float, alpha_prev: float) -> torch.Tensor:
    """Deterministic DDIM update (Song et al. 2021, eq. 12 with sigma = 0) from an x0 prediction.

    ``eps = (x_t - sqrt(a_t) x0) / sqrt(1 - a_t)``; ``x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev) eps``,
    where ``a`` is the cumulative product of ``1 - beta``.
    """
    eps = (x_t - alpha_t**0.5 * x0) / (1 - alpha_t) ** 0.5
    return alpha_prev**0.5 * x0 + (1 - alpha_prev) ** 0.5 * eps


def slice_stack(volume: torch.Tensor, context_slices: int) -> torch.Tensor:
    """(1, 1, H, W, D) volume -> (D, 1 + 2c, H, W) axial slices with ``c`` neighbours each side (edges replicated)."""
    slices = volume[0, 0].permute(2, 0, 1)  # (D, H, W)
    depth = slices.shape[0]
    offsets = range(-context_slices, context_slices + 1)
    index = torch.stack([torch.arange(depth).add(o).clamp(0, depth - 1) for o in offsets], dim=1)
    return slices[index]


class DDIMVolumeSampler:
    """Enhance a low-dose PET volume with DDIM sampling of an x0-predicting network, one batch of slices at a time.

    The chain follows output channel 0 (M2Diff's PET head). With ``warm_start_timestep`` the chain starts from the
    low-dose image noised to that timestep instead of pure noise. ``num_samples`` chains with different noise give
    the output (their mean) and a per-voxel standard deviation (uncertainty). Noise is drawn for the whole volume
    from ``seed``, so results do not depend on ``slice_batch_size``.

    Args:
        num_inference_steps: DDIM steps per chain.
        warm_start_timestep: start timestep (< 1000) for a warm start from the low-dose image; ``None`` = from noise.
        num_samples: chains per study.
        slice_batch_size: slices per network call (bounds memory).
        seed: seed of the noise.
        context_slices: neighbouring slices each side given to the network (must match the network).
        progress: show a progress bar.
    """

    def __init__(
        self,
        num_inference_steps: int = 1,
        warm_start_timestep: int | None = None,
        num_samples: int = 1,
        slice_batch_size: int = 16,
        seed: int = 0,
        context_slices: int = 0,
        progress: bool = True,
    ) -> None:
        if num_samples < 1 or slice_batch_size < 1:
            raise ValueError(f"num_samples and slice_batch_size must be >= 1, got {num_samples}, {slice_batch_size}")
        start = NUM_TRAIN_TIMESTEPS - 1 if warm_start_timestep is None else int(warm_start_timestep)
        self.timesteps = ddim_timesteps(num_inference_steps, start)
        self.warm_start = warm_start_timestep is not None
        self.num_samples = num_samples
        self.slice_batch_size = slice_batch_size
        self.seed = seed
        self.context_slices = context_slices
        self.progress = progress
        self.alphas_cumprod = make_noise_scheduler().alphas_cumprod.double()
        self.network_calls = 0

    @property
    def network_calls_per_slice(self) -> int:
        """Network evaluations each slice receives: steps x samples (the authors' sampler: 1000)."""
        return len(self.timesteps) * self.num_samples

    def _divisor(self, network: nn.Module) -> int:
        return int(getattr(getattr(network, "module", network), "downsample_factor", 1))

    def _supports_mri_free(self, network: nn.Module) -> bool:
        return bool(getattr(getattr(network, "module", network), "supports_mri_free", False))

    @torch.inference_mode()
    def __call__(
        self, network: nn.Module, pet_low_dose: torch.Tensor, mri_t1: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample the standard-dose estimate.

        Args:
            network: x0-predicting network, ``network(x, timesteps[, mri_free])`` -> ``(B, >=1, H, W)``.
            pet_low_dose: ``(1, 1, H, W, D)`` normalised low-dose PET, axial = last dim.
            mri_t1: ``(1, 1, H, W, D)`` normalised T1 on the PET grid, or ``None`` for the MRI-free path.

        Returns:
            ``(mean, std)``, each ``(1, 1, H, W, D)`` in the normalised units of the input.
        """
        if pet_low_dose.ndim != 5 or pet_low_dose.shape[:2] != (1, 1):
            raise ValueError(f"expected pet_low_dose of shape (1, 1, H, W, D), got {tuple(pet_low_dose.shape)}")
        if mri_t1 is not None and mri_t1.shape != pet_low_dose.shape:
            raise ValueError(f"MRI shape {tuple(mri_t1.shape)} differs from PET shape {tuple(pet_low_dose.shape)}")
        mri_free = mri_t1 is None
        if mri_free and not self._supports_mri_free(network):
            raise ValueError(f"{type(network).__name__} has no MRI-free path; give an MRI")
        device = next(network.parameters()).device
        network.eval()
        _, _, height, width, depth = pet_low_dose.shape
        div = self._divisor(network)
        pad_h, pad_w = (-height) % div, (-width) % div
        pad = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)

        def prepare(volume: torch.Tensor) -> torch.Tensor:
            return nn.functional.pad(slice_stack(volume.float().cpu(), self.context_slices), pad)

        ld_slices = prepare(pet_low_dose)
        mri_slices = torch.zeros_like(ld_slices) if mri_free else prepare(mri_t1)
        centre = self.context_slices
        samples = []
        self.network_calls = 0
        batches = range(0, depth, self.slice_batch_size)
        bar = tqdm(total=self.num_samples * len(batches), desc="DDIM", disable=not self.progress, leave=False)
        for sample_index in range(self.num_samples):
            generator = torch.Generator().manual_seed(self.seed + sample_index)
            noise = torch.randn(ld_slices[:, :1].shape, generator=generator)
            result = torch.empty_like(noise)
            for start in batches:
                part = slice(start, start + self.slice_batch_size)
                ld = ld_slices[part].to(device)
                mri = mri_slices[part].to(device)
                chain_noise = noise[part].to(device)
                result[part] = self._chain(network, ld, mri, ld[:, centre : centre + 1], chain_noise, mri_free).cpu()
                bar.update()
            samples.append(result)
        bar.close()
        stacked = torch.stack(samples)[:, :, 0, pad[2] : pad[2] + height, pad[0] : pad[0] + width]  # (S, D, H, W)
        volume = stacked.permute(0, 2, 3, 1)[:, None, None]  # (S, 1, 1, H, W, D)
        mean = volume.mean(dim=0)
        std = volume.std(dim=0, unbiased=False) if self.num_samples > 1 else torch.zeros_like(mean)
        return mean, std

    def _chain(self, network, ld, mri, ld_centre, noise, mri_free: bool) -> torch.Tensor:
        """Run one DDIM chain on a batch of slices; returns the final x0 estimate ``(B, 1, H, W)``."""
        alphas = self.alphas_cumprod
        t_first = self.timesteps[0]
        if self.warm_start:
            a = float(alphas[t_first])
            x_t = a**0.5 * ld_centre + (1 - a) ** 0.5 * noise
        else:
            x_t = noise
        x0 = x_t
        for i, t in enumerate(self.timesteps):
            timesteps = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)
            inputs = torch.cat([x_t, ld, mri], dim=1)
            if mri_free:
                x0 = network(inputs, timesteps, mri_free=True)[:, :1]
            else:
                x0 = network(inputs, timesteps)[:, :1]
            self.network_calls += 1
            if i + 1 < len(self.timesteps):
                x_t = ddim_step(x0, x_t, float(alphas[t]), float(alphas[self.timesteps[i + 1]]))
        return x0
