"""Building blocks of the M2Diff branches: timestep-conditioned residual block, attention, resampling."""

from __future__ import annotations

import torch
from monai.networks.blocks import Convolution, UpSample
from monai.networks.nets.diffusion_model_unet import DiffusionUnetDownsample, SpatialAttentionBlock, zero_module
from torch import nn


def conv3x3(spatial_dims: int, in_channels: int, out_channels: int) -> nn.Module:
    """A plain 3x3 convolution with padding 1 (no norm, no activation)."""
    return Convolution(spatial_dims, in_channels, out_channels, strides=1, kernel_size=3, padding=1, conv_only=True)


class TimestepResBlock(nn.Module):
    """Residual block whose second normalisation is modulated by the timestep embedding (AdaGN).

    ``h = conv2(dropout(silu(GroupNorm(conv1(silu(GroupNorm(x)))) * (1 + scale) + shift)))``, ``out = skip(x) + h``,
    where ``scale, shift`` come from a linear projection of the embedding. The last convolution starts at zero, so
    every block starts as an identity (or a 1x1 projection when the width changes).

    Args:
        spatial_dims: number of spatial dimensions.
        in_channels: input channels.
        out_channels: output channels.
        temb_channels: width of the timestep embedding.
        dropout: dropout probability before the last convolution.
        norm_num_groups: groups of the GroupNorm layers.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        dropout: float = 0.0,
        norm_num_groups: int = 32,
    ) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.norm1 = nn.GroupNorm(norm_num_groups, in_channels, eps=1e-6)
        self.conv1 = conv3x3(spatial_dims, in_channels, out_channels)
        self.emb_proj = nn.Linear(temb_channels, 2 * out_channels)
        self.norm2 = nn.GroupNorm(norm_num_groups, out_channels, eps=1e-6)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_module(conv3x3(spatial_dims, out_channels, out_channels))
        if in_channels == out_channels:
            self.skip: nn.Module = nn.Identity()
        else:
            self.skip = Convolution(spatial_dims, in_channels, out_channels, kernel_size=1, conv_only=True)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """Args: x (B, C_in, H, W); emb (B, temb_channels). Returns (B, C_out, H, W)."""
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        scale_shift = self.emb_proj(nn.functional.silu(emb))
        scale_shift = scale_shift.reshape(*scale_shift.shape, *([1] * (h.ndim - 2)))
        scale, shift = scale_shift.chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(nn.functional.silu(h)))
        return self.skip(x) + h


class ResAttnBlock(nn.Module):
    """A :class:`TimestepResBlock` optionally followed by multi-head spatial self-attention (MONAI's block).

    Args:
        res: the residual block (its output width and GroupNorm groups set the attention's).
        with_attention: add the attention block.
        num_heads: attention heads (the width must divide by it).
    """

    def __init__(self, res: TimestepResBlock, with_attention: bool, num_heads: int = 4) -> None:
        super().__init__()
        self.res = res
        self.attn: nn.Module | None = None
        if with_attention:
            channels, groups = res.norm2.num_channels, res.norm2.num_groups
            if channels % num_heads:
                raise ValueError(f"attention needs channels divisible by num_heads, got {channels}/{num_heads}")
            self.attn = SpatialAttentionBlock(
                res.spatial_dims, channels, num_head_channels=channels // num_heads, norm_num_groups=groups
            )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.res(x, emb)
        return h if self.attn is None else self.attn(h)


def downsample(spatial_dims: int, channels: int) -> nn.Module:
    """Strided 3x3 convolution that halves the resolution."""
    return DiffusionUnetDownsample(spatial_dims, channels, use_conv=True)


def upsample(spatial_dims: int, channels: int) -> nn.Module:
    """Nearest-neighbour x2 upsampling followed by a 3x3 convolution."""
    return UpSample(
        spatial_dims,
        channels,
        channels,
        scale_factor=2,
        mode="nontrainable",
        pre_conv=None,
        post_conv=conv3x3(spatial_dims, channels, channels),
        interp_mode="nearest",
        align_corners=None,
    )
