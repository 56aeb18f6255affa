"""How each method turns a normalised study ``[LD, MRI]`` into an enhanced volume: MONAI ``Inferer`` objects.

Every inferer takes ``inputs`` of shape ``(B, 2, H, W, D)`` (channel 0 the normalised low-dose PET, channel 1 the
normalised MRI, axial = last dim) and the network, and returns the enhanced image ``(B, 1, H, W, D)``. Training,
validation and evaluation all use them, so every method is scored by one workflow.

- ``scripts.sampler.DDIMVolumeSampler``: the diffusion methods (M2Diff, its MRI-free mode with ``use_mri=False``,
  the single-branch conditional diffusion baseline), the same inferer inference ships.
- :class:`SliceRegressionInferer`: a 2D regression network on ``[LD, MRI]`` slices (MONAI ``SliceInferer``).
- :class:`GaussianFilterInferer`: a 3D Gaussian post-filter of the low-dose image (FWHM in mm; 0: the low-dose image
  itself, the floor every method must beat).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.inferers import Inferer, SliceInferer
from monai.transforms import GaussianSmooth
from torch import nn

from scripts.constants import fwhm_to_sigma


def _check_inputs(inputs: torch.Tensor) -> None:
    if inputs.ndim != 5 or inputs.shape[1] != 2:
        raise ValueError(f"expected inputs (B, 2, H, W, D) = [low-dose PET, MRI], got {tuple(inputs.shape)}")


class SliceRegressionInferer(Inferer):
    """Enhance with a 2D regression network on axial ``[LD, MRI]`` slices (padded to ``roi_size``).

    Args:
        roi_size: (H, W) window of MONAI's ``SliceInferer``; slices smaller than it are padded (it must suit the
            network's down-sampling), larger ones are tiled.
        sw_batch_size: slices per network call.
        use_mri: give the MRI channel (``False``: the network takes the low-dose PET only).
    """

    def __init__(self, roi_size: Sequence[int] = (128, 128), sw_batch_size: int = 16, use_mri: bool = True) -> None:
        super().__init__()
        self.use_mri = use_mri
        self.network_calls_per_slice = 1
        self.slice_inferer = SliceInferer(
            roi_size=tuple(roi_size), sw_batch_size=sw_batch_size, spatial_dim=2, overlap=0.25, mode="gaussian"
        )

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args, **kwargs) -> torch.Tensor:
        _check_inputs(inputs)
        network_inputs = inputs if self.use_mri else inputs[:, :1]
        with torch.no_grad():
            pred = self.slice_inferer(network_inputs.float(), network)
        return pred.as_tensor() if hasattr(pred, "as_tensor") else pred


class GaussianFilterInferer(Inferer):
    """3D Gaussian post-filter of the low-dose PET (the network is ignored).

    Args:
        fwhm_mm: full width at half maximum of the filter in mm (0: no filtering), or one per dose reduction factor
            (``{drf: fwhm}``, e.g. chosen on validation subjects by ``scripts.baselines.search_gaussian_fwhm``); the
            dose level then comes as the ``dose_reduction_factor`` keyword of the call; a level without its own FWHM
            takes that of the nearest level on a log scale (e.g. 33 -> 20's, 75 -> 100's).
        voxel_size_mm: voxel size, in mm (one number or one per axis); the ``voxel_size_mm`` keyword of the call
            (``scripts.enhance.StudyPrepareBatch``: the grid the study was resampled to) takes precedence.
    """

    network_calls_per_slice = 0

    def __init__(self, fwhm_mm: float | dict = 4.0, voxel_size_mm: float | Sequence[float] = 2.0) -> None:
        super().__init__()
        self.fwhm_mm = {int(k): float(v) for k, v in fwhm_mm.items()} if isinstance(fwhm_mm, dict) else float(fwhm_mm)
        self.voxel_size_mm = [float(voxel_size_mm)] * 3 if isinstance(voxel_size_mm, (int, float)) else voxel_size_mm

    def __call__(
        self,
        inputs: torch.Tensor,
        network: nn.Module | None = None,
        *args,
        dose_reduction_factor=None,
        voxel_size_mm=None,
        **kwargs,
    ) -> torch.Tensor:
        _check_inputs(inputs)
        low_dose = inputs[:, :1].float()
        fwhm = self.fwhm_mm
        if isinstance(fwhm, dict):
            if dose_reduction_factor is None:
                raise ValueError(f"a FWHM per dose level {sorted(fwhm)} needs the study's dose reduction factor")
            fwhm = fwhm[min(fwhm, key=lambda level: abs(math.log(level / float(dose_reduction_factor))))]
        if fwhm <= 0:
            return low_dose
        smooth = GaussianSmooth(sigma=[fwhm_to_sigma(fwhm) / s for s in voxel_size_mm or self.voxel_size_mm])
        filtered = torch.stack([torch.as_tensor(smooth(study)) for study in low_dose])
        return filtered.to(inputs.device)
