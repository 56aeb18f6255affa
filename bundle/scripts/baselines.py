"""Baselines M2Diff is compared with, beside MONAI's own networks used as they are.

- :class:`SingleBranchDiffusionUNet`: MONAI's ``DiffusionModelUNet`` on ``[x_t, LD, MRI]`` stacked as input channels
  ("early fusion", the design M2Diff argues against), predicting x0; it tells the sampler its down-sampling factor.
- :class:`PetOnlyDiffusionUNet`: the same network on ``[x_t, LD]`` alone (it drops the MRI channels): the PET-only
  network trained with M2Diff's budget that M2Diff's MRI-free mode is compared with.
- :func:`search_gaussian_fwhm`: choose the Gaussian post-filter's FWHM per dose level on validation subjects
  (brain-masked PSNR against the standard-dose image), never on test subjects.

The U-Net regression baseline is ``monai.networks.nets.UNet`` itself (configs/baselines/unet_regression.json).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

import numpy as np
import torch
from monai.networks.nets import DiffusionModelUNet
from monai.transforms import LoadImage

from scripts.cli import quiet_notices
from scripts.inferers import GaussianFilterInferer
from scripts.metrics import masked_psnr
from scripts.training import load_cohort


class SingleBranchDiffusionUNet(DiffusionModelUNet):
    """``DiffusionModelUNet`` whose ``downsample_factor`` (2 ** number of down-samplings) the sampler pads to.

    Takes the same arguments as ``DiffusionModelUNet``; input ``(B, 1 + 2 (1 + 2c), H, W)`` = ``[x_t, LD, MRI]``,
    output ``(B, 1, H, W)``: the x0 estimate. It has no MRI-free path.
    """

    supports_mri_free = False

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


class PetOnlyDiffusionUNet(SingleBranchDiffusionUNet):
    """The single-branch baseline without the MRI: it sees ``[x_t, LD]`` and drops the input's MRI channels.

    Input ``(B, 1 + 2 (1 + 2c), H, W)`` = ``[x_t, LD, MRI]`` as for every network of the bundle (the MRI channels may
    be zeros), output ``(B, 1, H, W)``: the x0 estimate. It ignores the MRI whatever it is given (``mri_free`` too).

    Args:
        context_slices: neighbouring slices each side (2.5D), as in ``train.json``.
        kwargs: ``DiffusionModelUNet``'s arguments except ``in_channels`` (``1 + (1 + 2c)``).
    """

    supports_mri_free = True

    def __init__(self, context_slices: int = 0, **kwargs) -> None:
        super().__init__(in_channels=2 + 2 * context_slices, **kwargs)
        self.pet_channels = 2 + 2 * context_slices

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, mri_free: object = None, **kwargs) -> torch.Tensor:
        return super().forward(x[:, : self.pet_channels], timesteps, **kwargs)


def search_gaussian_fwhm(
    datalist_file: str,
    fwhms_mm: Sequence[float] = (0, 2, 3, 4, 5, 6, 8, 10),
    split: str = "validation",
    dose_reduction_factors: Sequence[int] | None = None,
    voxel_size_mm: float = 2.0,
) -> dict:
    """Brain-masked PSNR (vs the standard-dose image) of the filtered low-dose PET for each FWHM and dose level.

    Args:
        datalist_file: cohort ``datalist.json``.
        fwhms_mm: candidate FWHMs in mm (0 = no filter).
        split: split to search on ("validation"; never "test").
        dose_reduction_factors: dose levels (``None``: all of the records').
        voxel_size_mm: voxel size of the cohort grid.

    Returns:
        ``{"best_fwhm_mm": {drf: fwhm}, "psnr": {drf: {fwhm: mean PSNR}}}``.
    """
    if split == "test":
        raise ValueError("choose the filter on validation subjects, not on the test split")
    loader = LoadImage(image_only=True, dtype=np.float32)
    scores: dict[int, dict[float, list[float]]] = {}
    for record in load_cohort(datalist_file, split, dose_reduction_factors, per_dose=True):
        low_dose = torch.as_tensor(np.asarray(loader(record["pet_low_dose"])))[None, None]
        standard_dose = np.asarray(loader(record["pet_sd"]))
        mask = np.asarray(loader(record["brain_mask"])) > 0
        inputs = torch.cat([low_dose, torch.zeros_like(low_dose)], dim=1)
        for fwhm in fwhms_mm:
            filtered = GaussianFilterInferer(fwhm, voxel_size_mm)(inputs)[0, 0].numpy()
            drf_scores = scores.setdefault(int(record["dose_reduction_factor"]), {})
            drf_scores.setdefault(float(fwhm), []).append(masked_psnr(filtered, standard_dose, mask))
    psnr = {drf: {fwhm: float(np.mean(v)) for fwhm, v in table.items()} for drf, table in scores.items()}
    best = {drf: max(table, key=table.get) for drf, table in psnr.items()}
    return {"best_fwhm_mm": best, "psnr": psnr}


def main() -> None:
    parser = argparse.ArgumentParser(description="Choose the Gaussian post-filter FWHM on validation subjects.")
    parser.add_argument("--datalist", required=True, help="cohort datalist.json")
    parser.add_argument("--fwhms_mm", type=float, nargs="+", default=[0, 2, 3, 4, 5, 6, 8, 10])
    parser.add_argument("--output", default=None, help="write the result as JSON here")
    args = parser.parse_args()
    quiet_notices()
    result = search_gaussian_fwhm(args.datalist, args.fwhms_mm)
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
