"""M2Diff: a two-branch (PET, MRI) diffusion U-Net with hierarchical decoder fusion and two x0 heads."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets.diffusion_model_unet import get_timestep_embedding
from torch import nn

from .blocks import ResAttnBlock, TimestepResBlock, conv3x3, downsample, upsample
from .fusion import make_fusion


class Encoder(nn.Module):
    """One branch's encoder and middle block. Records every intermediate feature map as a skip."""

    def __init__(self, spatial_dims, in_channels, widths, num_res_blocks, attention, temb, heads, dropout, groups, mid):
        super().__init__()
        self.stem = conv3x3(spatial_dims, in_channels, widths[0])
        self.blocks = nn.ModuleList()
        self.skip_channels = [widths[0]]
        ch = widths[0]
        for level, width in enumerate(widths):
            for _ in range(num_res_blocks):
                self.blocks.append(
                    ResAttnBlock(
                        TimestepResBlock(spatial_dims, ch, width, temb, dropout, groups), attention[level], heads
                    )
                )
                ch = width
                self.skip_channels.append(ch)
            if level < len(widths) - 1:
                self.blocks.append(downsample(spatial_dims, ch))
                self.skip_channels.append(ch)
        self.middle = nn.ModuleList([TimestepResBlock(spatial_dims, ch, ch, temb, dropout, groups)])
        if mid:  # the PET branch's middle: res, attention, res
            self.middle[0] = ResAttnBlock(TimestepResBlock(spatial_dims, ch, ch, temb, dropout, groups), True, heads)
            self.middle.append(TimestepResBlock(spatial_dims, ch, ch, temb, dropout, groups))
        self.out_channels = ch

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h = self.stem(x)
        skips = [h]
        for block in self.blocks:
            h = block(h, emb) if isinstance(block, ResAttnBlock) else block(h)
            skips.append(h)
        for block in self.middle:
            h = block(h, emb)
        return h, skips


class Decoder(nn.Module):
    """One branch's decoder; each block takes ``fusion(h, own_skip, other_skip)`` then a residual block."""

    def __init__(
        self, spatial_dims, ch, skip_channels, widths, num_res_blocks, attention, temb, heads, dropout, groups, fusion
    ):
        super().__init__()
        skip_channels = list(skip_channels)
        self.fusions, self.blocks, self.upsamplers = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for level in reversed(range(len(widths))):
            for i in range(num_res_blocks + 1):
                fuse = make_fusion(fusion, spatial_dims, ch, skip_channels.pop())
                self.fusions.append(fuse)
                self.blocks.append(
                    ResAttnBlock(
                        TimestepResBlock(spatial_dims, fuse.out_channels, widths[level], temb, dropout, groups),
                        attention[level],
                        heads,
                    )
                )
                ch = widths[level]
                last_of_level = level > 0 and i == num_res_blocks
                self.upsamplers.append(upsample(spatial_dims, ch) if last_of_level else nn.Identity())
        self.head = conv3x3(spatial_dims, ch, 1)

    def forward(self, h, emb, own_skips, other_skips):
        """Run block ``k`` on ``fusion(h, own_skips[-1-k], other_skips[-1-k])``. Returns the (B, 1, H, W) head."""
        for k, (fuse, block, up) in enumerate(zip(self.fusions, self.blocks, self.upsamplers)):
            h = up(block(fuse(h, own_skips[-1 - k], other_skips[-1 - k]), emb))
        return self.head(h)


class M2DiffNet(nn.Module):
    """Two-branch diffusion network of M2Diff (multi-modality, multi-task) for MRI-guided low-dose PET enhancement.

    The PET branch sees ``[x_t, pet_low_dose]`` (with ``early_fusion``, ``[x_t, pet_low_dose, mri_t1]``), the MRI
    branch ``[mri_t1, x_t]`` (it never sees the low-dose PET).
    Both encoders share one timestep embedding. The decoders run in lockstep and fuse both branches' skips at every
    block. Both heads predict the clean standard-dose image x0.

    Args:
        spatial_dims: 2 (axial slices).
        context_slices: neighbouring slices on each side given as extra channels (2.5D); 0 for 2D.
        base_channels: width of the first level.
        channel_mult: width multiplier per level.
        num_res_blocks: residual blocks per encoder level (decoder levels have one more).
        attention_levels: per level, whether the PET branch adds self-attention (the MRI branch never does).
        num_heads: attention heads.
        dropout: dropout in residual blocks.
        norm_num_groups: GroupNorm groups.
        fusion: "concat" (the paper's) or "gated".
        early_fusion: also give the MRI to the PET branch as input channels (zeros on the MRI-free path), as the
            single-branch baseline does; ``False`` is the paper's design.

    Input ``x``: ``(B, 1 + 2 * (1 + 2 * context_slices), H, W)`` = ``[x_t, pet_low_dose..., mri_t1...]``.
    Output: ``(B, 2, H, W)``: channel 0 the PET head, channel 1 the MRI head.
    """

    supports_mri_free = True

    def __init__(
        self,
        spatial_dims: int = 2,
        context_slices: int = 0,
        base_channels: int = 128,
        channel_mult: Sequence[int] = (1, 1, 2, 3, 4),
        num_res_blocks: int = 2,
        attention_levels: Sequence[bool] = (False, False, False, True, True),
        num_heads: int = 4,
        dropout: float = 0.2,
        norm_num_groups: int = 32,
        fusion: str = "concat",
        early_fusion: bool = False,
    ) -> None:
        super().__init__()
        if spatial_dims != 2:
            raise ValueError(f"M2DiffNet works on axial slices: spatial_dims must be 2, got {spatial_dims}")
        if len(attention_levels) != len(channel_mult):
            raise ValueError(f"attention_levels {attention_levels} needs one entry per level of {channel_mult}")
        self.context_slices = context_slices
        self.image_channels = 1 + 2 * context_slices
        self.base_channels = base_channels
        self.early_fusion = early_fusion
        self.downsample_factor = 2 ** (len(channel_mult) - 1)
        widths = [base_channels * m for m in channel_mult]
        temb = 4 * base_channels
        self.time_embed = nn.Sequential(nn.Linear(base_channels, temb), nn.SiLU(), nn.Linear(temb, temb))
        no_attention = [False] * len(widths)
        common = dict(
            num_res_blocks=num_res_blocks, temb=temb, heads=num_heads, dropout=dropout, groups=norm_num_groups
        )
        pet_in_channels = 1 + self.image_channels * (2 if early_fusion else 1)
        self.pet_encoder = Encoder(
            spatial_dims, pet_in_channels, widths, attention=attention_levels, mid=True, **common
        )
        self.mri_encoder = Encoder(
            spatial_dims, 1 + self.image_channels, widths, attention=no_attention, mid=False, **common
        )
        skips = self.pet_encoder.skip_channels
        ch = self.pet_encoder.out_channels
        self.pet_decoder = Decoder(spatial_dims, ch, skips, widths, attention=attention_levels, fusion=fusion, **common)
        self.mri_decoder = Decoder(spatial_dims, ch, skips, widths, attention=no_attention, fusion=fusion, **common)

    def forward(
        self, x: torch.Tensor, timesteps: torch.Tensor, mri_free: bool | torch.Tensor | None = None
    ) -> torch.Tensor:
        """Predict the standard-dose image from both heads.

        Args:
            x: ``(B, 1 + 2 * image_channels, H, W)`` = ``[x_t, pet_low_dose, mri_t1]``; H, W divisible by
                ``downsample_factor``.
            timesteps: ``(B,)`` or scalar diffusion timesteps.
            mri_free: ``True`` runs the MRI-free path for the whole batch (the MRI branch is skipped and both output
                channels hold the PET head); a ``(B,)`` bool tensor replaces the MRI skips by the PET skips in the PET
                decoder (and, with ``early_fusion``, zeros their MRI in the PET branch's input) for the marked samples
                (MRI dropout during training); ``None``/``False`` uses the MRI.

        Returns:
            ``(B, 2, H, W)``: PET head, MRI head.
        """
        expected = 1 + 2 * self.image_channels
        if x.ndim != 4 or x.shape[1] != expected:
            raise ValueError(f"expected x of shape (B, {expected}, H, W) = [x_t, LD PET, MRI], got {tuple(x.shape)}")
        if x.shape[2] % self.downsample_factor or x.shape[3] % self.downsample_factor:
            raise ValueError(f"H and W must be divisible by {self.downsample_factor}, got {tuple(x.shape[2:])}")
        timesteps = torch.as_tensor(timesteps, device=x.device).reshape(-1).expand(x.shape[0])
        emb = self.time_embed(get_timestep_embedding(timesteps, self.base_channels).to(x.dtype))
        x_t = x[:, :1]
        pet_low_dose = x[:, 1 : 1 + self.image_channels]
        mri_t1 = x[:, 1 + self.image_channels :]

        drop = None  # (B, 1, 1, 1) samples marked MRI-free, or None
        if mri_free is True:
            drop = torch.ones(x.shape[0], 1, 1, 1, dtype=torch.bool, device=x.device)
        elif isinstance(mri_free, torch.Tensor) and mri_free.any():
            drop = mri_free.to(device=x.device, dtype=torch.bool).reshape(-1, 1, 1, 1)

        h_pet, skips_pet = self.pet_encoder(self._pet_branch_input(x_t, pet_low_dose, mri_t1, drop), emb)
        if mri_free is True:
            pet_head = self.pet_decoder(h_pet, emb, skips_pet, skips_pet)
            return torch.cat([pet_head, pet_head], dim=1)

        h_mri, skips_mri = self.mri_encoder(torch.cat([mri_t1, x_t], dim=1), emb)
        skips_for_pet = skips_mri
        if drop is not None:
            skips_for_pet = [torch.where(drop, sp, sm) for sp, sm in zip(skips_pet, skips_mri)]
        pet_head = self.pet_decoder(h_pet, emb, skips_pet, skips_for_pet)
        mri_head = self.mri_decoder(h_mri, emb, skips_mri, skips_pet)
        return torch.cat([pet_head, mri_head], dim=1)

    def _pet_branch_input(self, x_t, pet_low_dose, mri_t1, drop) -> torch.Tensor:
        """``[x_t, pet_low_dose]``; with ``early_fusion`` also the MRI, zeroed for the samples ``drop`` marks."""
        if not self.early_fusion:
            return torch.cat([x_t, pet_low_dose], dim=1)
        if drop is not None:
            mri_t1 = torch.where(drop, torch.zeros_like(mri_t1), mri_t1)
        return torch.cat([x_t, pet_low_dose, mri_t1], dim=1)
