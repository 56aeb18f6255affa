"""Export the network with ``torch.export`` (TorchScript export does not work for diffusion U-Nets)."""

from __future__ import annotations

import logging
import os

import torch
from torch import nn

logger = logging.getLogger(__name__)


def export_network(network: nn.Module, path: str, height: int = 128, width: int = 128) -> str:
    """Trace ``network(x, timesteps)`` with ``torch.export`` and save the program to ``path`` (``.pt2``).

    The batch size is dynamic; the spatial size is fixed to ``(height, width)``. Load it with
    ``torch.export.load(path).module()(x, timesteps)``.

    Args:
        network: an :class:`scripts.network.M2DiffNet` (MRI-guided path).
        path: output file (its folder is created).
        height: slice height, divisible by the network's ``downsample_factor``.
        width: slice width, divisible by the network's ``downsample_factor``.

    Returns:
        ``path``.
    """
    network = network.eval().cpu()
    channels = 1 + 2 * network.image_channels
    example = (torch.zeros(2, channels, height, width), torch.zeros(2, dtype=torch.long))
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(network, example, dynamic_shapes=({0: batch}, {0: batch}))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.export.save(program, path)
    logger.info(f"exported the network ({height}x{width} slices, dynamic batch) to {os.path.abspath(path)}")
    return path
