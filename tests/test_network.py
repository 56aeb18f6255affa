"""M2DiffNet: shapes, MRI-free path, per-sample MRI dropout, fusion variants, paper-scale size, baselines' size."""

import pytest
import torch
from network_testing import TINY, tiny_network

from scripts.network import M2DiffNet


def _inputs(batch=2, size=16, context=0):
    torch.manual_seed(1)
    return torch.randn(batch, 1 + 2 * (1 + 2 * context), size, size), torch.tensor([10, 900][:batch])


@pytest.mark.parametrize("fusion", ["concat", "gated"])
def test_both_heads_have_the_input_shape(fusion):
    net = M2DiffNet(fusion=fusion, **TINY)
    x, t = _inputs()
    assert net(x, t).shape == (2, 2, 16, 16)


def test_context_slices_add_input_channels():
    net = M2DiffNet(context_slices=1, **TINY)
    x, t = _inputs(context=1)
    assert x.shape[1] == 7
    assert net(x, t).shape == (2, 2, 16, 16)
    with pytest.raises(ValueError, match="expected x of shape"):
        net(x[:, :3], t)


def test_rejects_sizes_the_unet_cannot_halve():
    net = M2DiffNet(**TINY)
    with pytest.raises(ValueError, match="divisible by 2"):
        net(torch.randn(1, 3, 15, 16), torch.tensor([3]))


@pytest.mark.parametrize("early_fusion", [False, True])
def test_mri_free_pet_output_ignores_the_mri(early_fusion):
    net = tiny_network(std=0.2, early_fusion=early_fusion)
    x, t = _inputs()
    other = x.clone()
    other[:, 2:] = torch.randn_like(other[:, 2:]) * 5
    with torch.no_grad():
        free_a, free_b = net(x, t, mri_free=True), net(other, t, mri_free=True)
        guided_a, guided_b = net(x, t), net(other, t)
    assert torch.equal(free_a[:, 0], free_b[:, 0])
    assert not torch.allclose(guided_a[:, 0], guided_b[:, 0])  # with MRI, the MRI matters


@pytest.mark.parametrize("early_fusion", [False, True])
def test_per_sample_mri_dropout_matches_the_mri_free_path(early_fusion):
    net = tiny_network(std=0.2, early_fusion=early_fusion)
    x, t = _inputs()
    with torch.no_grad():
        mixed = net(x, t, mri_free=torch.tensor([True, False]))
        free = net(x, t, mri_free=True)
        guided = net(x, t)
    torch.testing.assert_close(mixed[0, 0], free[0, 0])
    torch.testing.assert_close(mixed[1], guided[1])
    if not early_fusion:  # the MRI head always sees the MRI (with early fusion, via PET skips made without it)
        torch.testing.assert_close(mixed[0, 1], guided[0, 1])


def _encoder_features_with_one_channel_changed(net, encoder_name, channel):
    """The named encoder's output for the inputs and for a copy whose ``channel`` is redrawn."""
    x, t = _inputs()
    other = x.clone()
    other[:, channel] = torch.randn_like(other[:, channel])
    seen = []
    getattr(net, encoder_name).register_forward_hook(lambda module, args, out: seen.append(out[0]))
    with torch.no_grad():
        net(x, t), net(other, t)
    return seen


def test_mri_branch_never_sees_the_low_dose_pet():
    """The MRI encoder takes [MRI, x_t]: changing only the LD PET leaves its features unchanged."""
    seen = _encoder_features_with_one_channel_changed(tiny_network(std=0.2), "mri_encoder", channel=1)
    torch.testing.assert_close(seen[0], seen[1])


@pytest.mark.parametrize("early_fusion", [False, True])
def test_only_early_fusion_gives_the_pet_branch_the_mri(early_fusion):
    """Changing only the MRI changes the PET encoder's features with ``early_fusion`` and leaves them alone without."""
    net = tiny_network(std=0.2, early_fusion=early_fusion)
    seen = _encoder_features_with_one_channel_changed(net, "pet_encoder", channel=2)
    assert torch.allclose(seen[0], seen[1]) != early_fusion


def test_paper_scale_parameter_count():
    """Base 128, multipliers (1,1,2,3,4), 2 residual blocks, attention at the two lowest levels: ~202.7 M."""
    with torch.device("meta"):
        net = M2DiffNet()
    count = sum(p.numel() for p in net.parameters())
    assert abs(count - 202.7e6) / 202.7e6 < 0.01, count


@pytest.mark.parametrize("baseline", ["unet_regression", "single_branch_diffusion", "pet_only_diffusion"])
def test_trainable_baselines_are_within_ten_percent_of_m2diffs_parameters(baseline):
    """The comparison is fair in size: each trainable baseline's network has M2Diff's parameter count +-10 %."""
    from monai.bundle import ConfigParser
    from workflow_testing import BUNDLE_ROOT, config_files

    def count(*names: str) -> int:
        parser = ConfigParser()
        parser.read_config(config_files(*names))
        parser["bundle_root"] = BUNDLE_ROOT
        with torch.device("meta"):
            network = parser.get_parsed_content("network_def")
        return sum(p.numel() for p in network.parameters())

    m2diff, other = count("inference", "train"), count("inference", "train", f"baselines/{baseline}")
    assert abs(other - m2diff) / m2diff <= 0.10, (other, m2diff)


def test_pet_only_baseline_never_sees_the_mri():
    from scripts.baselines import PetOnlyDiffusionUNet

    torch.manual_seed(0)
    net = PetOnlyDiffusionUNet(
        spatial_dims=2,
        out_channels=1,
        channels=[8, 8],
        attention_levels=[False, False],
        num_res_blocks=1,
        norm_num_groups=4,
    ).eval()
    for parameter in net.parameters():  # MONAI zero-initialises the output convolution
        torch.nn.init.normal_(parameter, std=0.1)
    x, t = _inputs()
    other_mri = torch.cat([x[:, :2], torch.randn_like(x[:, 2:])], dim=1)
    with torch.no_grad():
        out = net(x, t)
        assert out.shape == (2, 1, 16, 16) and net.supports_mri_free
        torch.testing.assert_close(net(other_mri, t), out)
        torch.testing.assert_close(net(x, t, mri_free=torch.tensor([True, False])), out)
        assert not torch.allclose(net(torch.cat([x[:, :1], -x[:, 1:]], dim=1), t), out)  # it does see the PET
