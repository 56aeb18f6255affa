"""DDIM sampling of a standard-dose PET volume, slice by slice, with x0-predicting networks: one MONAI ``Inferer``.

The scheduler (MONAI's DDPM noise schedule: 1000 steps, linear betas 1e-4..0.02) knows nothing of the network; the
network knows nothing of sampling; :class:`DDIMVolumeSampler` is where they meet. Inference, validation, evaluation
and benchmarks call it alike, ``sampler(inputs, network)``, on studies normalised by ``NormaliseStudyd``.

Why the DDIM update is ours and not ``monai.networks.schedulers.DDIMScheduler``: MONAI's scheduler fixes its
timesteps to the multiples of ``1000 // steps`` ending at 0 (plus a constant offset): no warm start from an arbitrary
timestep, and not the trailing spacing from 999 that the shipped model's step settings were chosen with. The update
itself is the same equation (tests/test_sampler.py checks our chain against MONAI's ``DDIMScheduler.step``). Why
the slicing is ours and not ``SliceInferer``: a chain of several network calls runs on each batch of slices, with
noise drawn per volume.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.inferers import Inferer
from monai.networks.schedulers import DDPMScheduler
from torch import nn
from tqdm import tqdm

from scripts.consistency import consistent_with_measurement, physical_activity, restore_significant_residual
from scripts.io.options import flag

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


def slice_stack(volume: torch.Tensor, context_slices: int, slices: list[int] | None = None) -> torch.Tensor:
    """(1, 1, H, W, D) volume -> (N, 1 + 2c, H, W) axial slices with ``c`` neighbours each side (edges replicated).

    ``slices``: the axial indices to stack (``None``: all ``D``). Training and sampling stack slices with it.
    """
    planes = volume[0, 0].permute(2, 0, 1)  # (D, H, W)
    depth = planes.shape[0]
    centres = torch.arange(depth) if slices is None else torch.as_tensor(slices)
    index = torch.stack([(centres + o).clamp(0, depth - 1) for o in range(-context_slices, context_slices + 1)], 1)
    return planes[index]


class DDIMVolumeSampler(Inferer):
    """Enhance low-dose PET volumes with DDIM sampling of an x0-predicting network, one batch of slices at a time.

    The chain follows output channel 0 (M2Diff's PET head). With ``warm_start_timestep`` the chain starts from the
    low-dose image noised to that timestep instead of pure noise. ``num_samples`` chains with different noise give
    the output (their mean; no uncertainty map: the samples' spread did not rank the errors, see docs/README.md).
    Noise is drawn for the whole volume from ``seed``, so results do not depend on ``slice_batch_size``.

    Args:
        num_inference_steps: DDIM steps per chain.
        warm_start_timestep: start timestep (< 1000) for a warm start from the low-dose image; ``None`` = from noise.
        num_samples: chains per study.
        slice_batch_size: slices per network call (bounds memory).
        seed: seed of the noise.
        context_slices: neighbouring slices each side given to the network (must match the network).
        progress: show a progress bar.
        use_mri: ``False`` ignores an MRI channel and runs the network's MRI-free path.
        consistency_fwhm_mm: FWHM (mm) of the low-frequency data consistency with the low-dose image
            (``scripts.consistency``); ``"auto"``: chosen per study from its measured noise (``consistency_noise_pct``);
            ``None`` or 0: off. Needs the study's voxel size (``voxel_size_mm`` keyword). The cut-off each study of the
            last call got is in :attr:`consistency_cutoffs_mm`.
        consistency_noise_pct: with ``"auto"``, the low-dose noise (% of the activity, white-noise model) that the
            data consistency may bring back.
        consistency_significance: after the low-frequency consistency, give back what the low-dose image shows
            beyond this many noise SDs at any scale from 4 to 16 mm
            (``scripts.consistency.restore_significant_residual``; each study's departure map is kept in
            :attr:`departure_maps`); None or 0: off.
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
        use_mri: bool = True,
        consistency_fwhm_mm: float | str | None = None,
        consistency_noise_pct: float = 0.6,
        consistency_significance: float | None = None,
    ) -> None:
        super().__init__()
        if num_samples < 1 or slice_batch_size < 1:
            raise ValueError(f"num_samples and slice_batch_size must be >= 1, got {num_samples}, {slice_batch_size}")
        start = NUM_TRAIN_TIMESTEPS - 1 if warm_start_timestep is None else int(warm_start_timestep)
        self.timesteps = ddim_timesteps(num_inference_steps, start)
        self.warm_start_timestep = None if warm_start_timestep is None else start
        self.num_samples = num_samples
        self.slice_batch_size = slice_batch_size
        self.seed = seed
        self.context_slices = context_slices
        self.progress = flag(progress, "progress")
        self.use_mri = use_mri
        if consistency_fwhm_mm != "auto" and (isinstance(consistency_fwhm_mm, str) or (consistency_fwhm_mm or 0) < 0):
            raise ValueError(
                f"consistency_fwhm_mm must be a number >= 0 (mm), 'auto' or null, got {consistency_fwhm_mm!r}"
            )
        self.consistency_fwhm_mm = (
            consistency_fwhm_mm if consistency_fwhm_mm == "auto" else float(consistency_fwhm_mm or 0)
        )
        if consistency_noise_pct <= 0:
            raise ValueError(f"consistency_noise_pct must be > 0, got {consistency_noise_pct}")
        self.consistency_noise_pct = float(consistency_noise_pct)
        self.consistency_cutoffs_mm: list[float] = []
        if consistency_significance is not None and float(consistency_significance) < 0:
            raise ValueError(
                f"consistency_significance must be a number of noise SDs > 0 or null, got {consistency_significance}"
            )
        self.consistency_significance = float(consistency_significance or 0)
        self.departure_maps: list[torch.Tensor] = []
        self.alphas_cumprod = make_noise_scheduler().alphas_cumprod.double()
        self.network_calls = 0

    @property
    def network_calls_per_slice(self) -> int:
        """Network evaluations each slice receives: steps x samples (the authors' sampler: 1000)."""
        return len(self.timesteps) * self.num_samples

    @torch.inference_mode()
    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Sample the standard-dose estimate of each study of a batch.

        Args:
            inputs: ``(B, C, H, W, D)`` normalised studies, axial = last dim: channel 0 the low-dose PET, channel 1
                (when ``C == 2``) the T1 MRI on the PET grid; ``C == 1`` (or ``use_mri=False``): the MRI-free path.
            network: x0-predicting network, ``network(x, timesteps[, mri_free=True])`` -> ``(B, >=1, H, W)``.
            kwargs: passed to :meth:`sample_study` (e.g. ``dose_reduction_factor``).

        Returns:
            ``(B, 1, H, W, D)``: the enhanced PET (mean of the samples), in the normalised units of the input.
        """
        if inputs.ndim != 5 or inputs.shape[1] not in (1, 2):
            raise ValueError(f"expected inputs (B, 1 or 2, H, W, D) = [low-dose PET, MRI], got {tuple(inputs.shape)}")
        self.network_calls = 0
        self.consistency_cutoffs_mm = []
        self.departure_maps = []
        with_mri = self.use_mri and inputs.shape[1] == 2
        studies = [
            self.sample_study(network, study[None, :1], study[None, 1:2] if with_mri else None, **kwargs)
            for study in inputs
        ]
        return torch.cat(studies).to(inputs.device)

    def sample_study(
        self,
        network: nn.Module,
        pet_low_dose: torch.Tensor,
        mri_t1: torch.Tensor | None = None,
        voxel_size_mm: Sequence[float] | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """One study: ``(1, 1, H, W, D)`` normalised PET (and MRI, or ``None``) -> ``(1, 1, H, W, D)`` enhanced PET.

        The mean of the samples takes the low-dose image's low frequencies (when ``consistency_fwhm_mm`` is set; the
        consistency is linear, so this is the mean of the corrected samples) and is clipped at zero activity.
        """
        enhanced = self._sample(network, pet_low_dose, mri_t1).mean(dim=0)  # (1, 1, H, W, D)
        cutoff_mm = 0.0
        if self.consistency_fwhm_mm:
            if voxel_size_mm is None:
                raise ValueError("the low-frequency consistency needs the study's voxel size (voxel_size_mm)")
            low_dose = pet_low_dose[0].float().cpu()
            corrected, cutoff_mm = consistent_with_measurement(
                enhanced[0], low_dose, voxel_size_mm, self.consistency_fwhm_mm, self.consistency_noise_pct
            )
            enhanced = corrected[None]
        self.consistency_cutoffs_mm.append(float(cutoff_mm))
        if self.consistency_significance:
            if voxel_size_mm is None:
                raise ValueError("the significance consistency needs the study's voxel size (voxel_size_mm)")
            restored, departure = restore_significant_residual(
                enhanced[0], pet_low_dose[0].float().cpu(), voxel_size_mm, self.consistency_significance
            )
            enhanced = restored[None]
            self.departure_maps.append(departure[None])
        return physical_activity(enhanced)

    def _sample(self, network: nn.Module, pet_low_dose: torch.Tensor, mri_t1: torch.Tensor | None) -> torch.Tensor:
        """The ``num_samples`` chains' final x0 estimates, ``(S, 1, 1, H, W, D)``."""
        module = getattr(network, "module", network)  # DDP / DataParallel wrap the network
        mri_free = mri_t1 is None
        if mri_free and not getattr(module, "supports_mri_free", False):
            raise ValueError(f"{type(module).__name__} has no MRI-free path; give an MRI")
        device = next(network.parameters()).device
        _, _, height, width, depth = pet_low_dose.shape
        div = int(getattr(module, "downsample_factor", 1))
        pad_h, pad_w = (-height) % div, (-width) % div
        pad = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)

        def prepare(volume: torch.Tensor) -> torch.Tensor:
            return nn.functional.pad(slice_stack(volume.float().cpu(), self.context_slices), pad)

        ld_slices = prepare(pet_low_dose)
        # the MRI-free network skips its MRI branch; zeros only fill the input's MRI channels
        mri_slices = torch.zeros_like(ld_slices) if mri_free else prepare(mri_t1)
        centre = self.context_slices
        samples = []
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
        return stacked.permute(0, 2, 3, 1)[:, None, None]  # (S, 1, 1, H, W, D)

    def _chain(self, network, ld, mri, ld_centre, noise, mri_free: bool) -> torch.Tensor:
        """Run one DDIM chain on a batch of slices; returns the final x0 estimate ``(B, 1, H, W)``."""
        alphas = self.alphas_cumprod
        if self.warm_start_timestep is not None:
            a = float(alphas[self.timesteps[0]])
            x_t = a**0.5 * ld_centre + (1 - a) ** 0.5 * noise
        else:
            x_t = noise
        x0 = x_t
        path = {"mri_free": True} if mri_free else {}
        for i, t in enumerate(self.timesteps):
            timesteps = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)
            x0 = network(torch.cat([x_t, ld, mri], dim=1), timesteps, **path)[:, :1]
            self.network_calls += 1
            if i + 1 < len(self.timesteps):
                x_t = ddim_step(x0, x_t, float(alphas[t]), float(alphas[self.timesteps[i + 1]]))
        return x0
