"""Keep the enhanced PET faithful to what the study itself measured.

The low-dose image is noisy voxel by voxel but unbiased over large regions: its low spatial frequencies are as
trustworthy as the standard dose's. A network that shrinks uncertain regions toward its training cohort's average
brain moves exactly those frequencies (regional means, SUVR). :func:`low_frequency_consistency` gives them back to
the measurement: the enhanced image keeps its own detail above the cut-off and takes the low-dose image's content
below it (``enhanced + G * (low_dose - enhanced)``, with ``G`` a Gaussian low-pass), so means over regions much
larger than the cut-off are the low-dose image's, whatever the network did. Activity is then clipped at zero.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.transforms import GaussianSmooth

from scripts.constants import FWHM_PER_SIGMA


def low_frequency_consistency(
    enhanced: torch.Tensor, low_dose: torch.Tensor, fwhm_voxels: Sequence[float] | None
) -> torch.Tensor:
    """Replace the enhanced image's content below a Gaussian cut-off by the low-dose image's.

    Args:
        enhanced: ``(C, H, W, D)`` enhanced PET.
        low_dose: ``(C, H, W, D)`` low-dose PET in the same units and grid.
        fwhm_voxels: FWHM of the Gaussian low-pass along each spatial axis, in voxels; ``None`` or all zero:
            the enhanced image is returned unchanged.

    Returns:
        ``(C, H, W, D)``: ``enhanced + G * (low_dose - enhanced)``.
    """
    if enhanced.shape != low_dose.shape:
        raise ValueError(f"enhanced {tuple(enhanced.shape)} and low-dose {tuple(low_dose.shape)} shapes differ")
    if not fwhm_voxels or not any(f > 0 for f in fwhm_voxels):
        return enhanced
    low_pass = GaussianSmooth(sigma=[float(f) / FWHM_PER_SIGMA for f in fwhm_voxels])
    return enhanced + torch.as_tensor(low_pass(low_dose - enhanced))


def physical_activity(image: torch.Tensor) -> torch.Tensor:
    """Activity cannot be negative: clip at zero."""
    return image.clamp(min=0)
