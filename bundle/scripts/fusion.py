"""Hierarchical feature fusion: how one decoder takes in its own skip and the other branch's skip."""

from __future__ import annotations

import torch
from monai.networks.blocks import Convolution
from torch import nn


class ConcatFusion(nn.Module):
    """The paper's fusion: ``concat(h, own_skip, other_skip)``; the following residual block does the mixing."""

    def __init__(self, spatial_dims: int, channels: int, skip_channels: int) -> None:
        super().__init__()
        self.out_channels = channels + 2 * skip_channels

    def forward(self, h: torch.Tensor, own_skip: torch.Tensor, other_skip: torch.Tensor) -> torch.Tensor:
        """Args: h (B, C, H, W), own_skip and other_skip (B, S, H, W). Returns (B, C + 2S, H, W)."""
        return torch.cat([h, own_skip, other_skip], dim=1)


class GatedFusion(nn.Module):
    """Concatenation in which the other branch's skip is weighted by a learned per-pixel, per-channel gate.

    ``gate = sigmoid(conv1x1(concat(own_skip, other_skip)))``, output ``concat(h, own_skip, gate * other_skip)``.
    The gate starts near 1 (bias +2), so training starts from the concatenation fusion.
    """

    def __init__(self, spatial_dims: int, channels: int, skip_channels: int) -> None:
        super().__init__()
        self.out_channels = channels + 2 * skip_channels
        self.gate = Convolution(spatial_dims, 2 * skip_channels, skip_channels, kernel_size=1, conv_only=True)
        nn.init.zeros_(self.gate.conv.weight)
        nn.init.constant_(self.gate.conv.bias, 2.0)

    def forward(self, h: torch.Tensor, own_skip: torch.Tensor, other_skip: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.gate(torch.cat([own_skip, other_skip], dim=1)))
        return torch.cat([h, own_skip, gate * other_skip], dim=1)


FUSIONS = {"concat": ConcatFusion, "gated": GatedFusion}


def make_fusion(kind: str, spatial_dims: int, channels: int, skip_channels: int) -> nn.Module:
    """Build a fusion block by name ("concat" or "gated")."""
    if kind not in FUSIONS:
        raise ValueError(f"unknown fusion '{kind}', expected one of {sorted(FUSIONS)}")
    return FUSIONS[kind](spatial_dims, channels, skip_channels)
