"""DDIM sampler: MONAI's DDIM maths, determinism, network calls, warm start, MRI-free path, sample means, scales."""

import numpy as np
import pytest
import torch
from monai.networks.schedulers import DDIMScheduler
from network_testing import tiny_network

from scripts.normalise import NormaliseStudyd, pet_scale, restore_units
from scripts.sampler import DDIMVolumeSampler, ddim_step, ddim_timesteps, make_noise_scheduler, slice_stack


class LinearNet(torch.nn.Module):
    """A known x0 predictor on ``[x_t, LD, MRI]`` that records the ``mri_free`` flag of every call.

    Its MRI-guided path adds a bias even on a zero MRI (as a real MRI branch does), so running an MRI-free study
    through the MRI-guided path on a zero MRI changes the result.
    """

    supports_mri_free, downsample_factor = True, 1

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor([0.3, 0.5, 0.2]))
        self.mri_free_flags = []

    def forward(self, x, timesteps, mri_free=False):
        self.mri_free_flags.append(mri_free)
        w = self.weight
        x0 = w[0] * x[:, :1] + w[1] * x[:, 1:2] + timesteps.view(-1, 1, 1, 1) / 4000
        if not mri_free:
            x0 = x0 + w[2] * x[:, 2:3] + 0.05
        return torch.cat([x0, -x0], dim=1)


class CountingNet(torch.nn.Module):
    """Wraps a network and counts forward calls."""

    def __init__(self, net):
        super().__init__()
        self.net, self.calls = net, 0
        self.supports_mri_free, self.downsample_factor = net.supports_mri_free, net.downsample_factor

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.net(*args, **kwargs)


def _study(shape=(15, 13, 5), seed=0, channels=2):
    """``(1, C, H, W, D)`` normalised-looking study: [LD, MRI]."""
    return torch.rand((1, channels, *shape), generator=torch.Generator().manual_seed(seed)) + 0.1


def _with_mri(study, mri_seed):
    return torch.cat([study[:, :1], _study(seed=mri_seed)[:, 1:]], dim=1)


def test_sampler_follows_monais_ddim_scheduler_with_warm_start():
    """Oracle: our chain equals MONAI's DDIMScheduler (eta 0, x0 prediction) from the warm-started noisy image."""
    steps, start, seed = 3, 600, 4  # timesteps 600, 400, 200: MONAI's spacing 1000 // 5
    net = LinearNet()
    study = _study((6, 4, 3))
    pred = DDIMVolumeSampler(steps, start, seed=seed, progress=False)(study, net)

    monai = DDIMScheduler(1000, schedule="linear_beta", beta_start=1e-4, beta_end=0.02, clip_sample=False)
    monai.prediction_type = "sample"
    monai.set_timesteps(5)
    ld, mri = (study[0, c].permute(2, 0, 1)[:, None] for c in (0, 1))  # (D, 1, H, W) axial slices
    noise = torch.randn(ld.shape, generator=torch.Generator().manual_seed(seed))
    alpha = float(monai.alphas_cumprod[start])
    x_t = alpha**0.5 * ld + (1 - alpha) ** 0.5 * noise  # the low-dose image noised to the start timestep
    with torch.no_grad():
        for t in (600, 400, 200):
            x0 = net(torch.cat([x_t, ld, mri], 1), torch.full((ld.shape[0],), t))[:, :1]
            x_t, _ = monai.step(x0, t, x_t)
    expected = x0[:, 0].permute(1, 2, 0).clamp(min=0)  # the sampler's output is activity: never negative
    torch.testing.assert_close(pred[0, 0], expected, rtol=1e-5, atol=1e-6)
    assert pred.shape == (1, 1, 6, 4, 3)


def test_ddim_step_is_monais_step():
    scheduler = DDIMScheduler(1000, schedule="linear_beta", beta_start=1e-4, beta_end=0.02, clip_sample=False)
    scheduler.prediction_type = "sample"
    scheduler.set_timesteps(4)
    x0, x_t = torch.randn(8), torch.randn(8)
    alphas = make_noise_scheduler().alphas_cumprod
    torch.testing.assert_close(
        ddim_step(x0, x_t, float(alphas[750]), float(alphas[500])), scheduler.step(x0, 750, x_t)[0]
    )


def test_warm_start_starts_from_the_low_dose_image():
    """Warm start: the chain starts from the noised low-dose image; ignoring it (pure noise) changes the result."""
    net = LinearNet()
    study = _study() + 5  # bright enough that no output is clipped at zero activity
    warm = DDIMVolumeSampler(1, 300, progress=False)
    assert warm.timesteps == [300]
    ld, noise = study[0, 0], torch.randn((5, 1, 15, 13), generator=torch.Generator().manual_seed(0))[:, 0]
    alpha = float(make_noise_scheduler().alphas_cumprod[300])
    x_t = alpha**0.5 * ld + (1 - alpha) ** 0.5 * noise.permute(1, 2, 0)
    expected = 0.3 * x_t + 0.5 * ld + 0.2 * study[0, 1] + 300 / 4000 + 0.05
    torch.testing.assert_close(warm(study, net)[0, 0], expected)
    cold = DDIMVolumeSampler(1, None, progress=False)(study, net)[0, 0]
    assert not torch.allclose(cold, expected)


def test_mri_free_path_never_runs_the_mri_guided_path():
    net = LinearNet()
    free = DDIMVolumeSampler(2, progress=False)(_study(channels=1), net)
    assert net.mri_free_flags and all(flag is True for flag in net.mri_free_flags)
    net.mri_free_flags.clear()
    zero_mri = torch.cat([_study()[:, :1], torch.zeros_like(_study()[:, :1])], dim=1)
    guided_on_zero = DDIMVolumeSampler(2, progress=False)(zero_mri, net)
    assert not any(net.mri_free_flags)
    assert not torch.allclose(free, guided_on_zero)


def test_mri_free_result_does_not_depend_on_the_mri():
    net = tiny_network(std=0.1)
    sampler = DDIMVolumeSampler(2, use_mri=False, progress=False)
    a, b = sampler(_with_mri(_study(), 1), net), sampler(_with_mri(_study(), 2), net)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, DDIMVolumeSampler(2, progress=False)(_study(channels=1), net))
    guided = DDIMVolumeSampler(2, progress=False)
    assert not torch.allclose(guided(_with_mri(_study(), 1), net), guided(_with_mri(_study(), 2), net))


def test_the_dose_level_is_not_an_input():
    """The network is not conditioned on the record's drf (NormaliseStudyd scales each study by its own mean):
    a study gives the same result with any drf or none."""
    net, study = tiny_network(std=0.1), _study()
    sampler = DDIMVolumeSampler(2, progress=False)
    without = sampler(study, net)
    for drf in (10, 33, 75):
        torch.testing.assert_close(sampler(study, net, dose_reduction_factor=drf), without, rtol=0, atol=0)


def test_same_seed_same_result_and_independent_of_slice_batching():
    net, study = tiny_network(std=0.1), _study()
    a = DDIMVolumeSampler(num_inference_steps=3, seed=7, slice_batch_size=2, progress=False)(study, net)
    b = DDIMVolumeSampler(num_inference_steps=3, seed=7, slice_batch_size=5, progress=False)(study, net)
    c = DDIMVolumeSampler(num_inference_steps=3, seed=8, slice_batch_size=5, progress=False)(study, net)
    assert a.shape == (1, 1, 15, 13, 5)  # odd sizes are padded and cropped back
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("steps,samples,batch", [(1, 1, 5), (4, 1, 2), (2, 3, 2)])
def test_network_calls_follow_steps_samples_and_batches(steps, samples, batch):
    net = CountingNet(tiny_network(std=0.1))
    sampler = DDIMVolumeSampler(num_inference_steps=steps, num_samples=samples, slice_batch_size=batch, progress=False)
    sampler(_study(), net)
    batches = -(-5 // batch)
    assert net.calls == steps * samples * batches == sampler.network_calls
    assert sampler.network_calls_per_slice == steps * samples


def test_several_samples_give_their_mean_and_no_uncertainty_map():
    """No SD channel: the samples' spread did not rank the errors on validation (benchmarks/bench_uncertainty.py)."""
    net, study = LinearNet(), _study() + 5  # bright: no clipping
    pred = DDIMVolumeSampler(num_inference_steps=2, num_samples=3, progress=False)(study, net)
    chains = [DDIMVolumeSampler(num_inference_steps=2, seed=s, progress=False)(study, net)[0, 0] for s in range(3)]
    assert pred.shape == (1, 1, *study.shape[2:])
    torch.testing.assert_close(pred[0, 0], torch.stack(chains).mean(0))
    assert not torch.allclose(chains[0], chains[1])  # the chains differ: the mean is of distinct samples


def test_batch_of_studies_is_sampled_study_by_study():
    net, studies = LinearNet(), torch.cat([_study(seed=0), _study(seed=3)])
    sampler = DDIMVolumeSampler(2, progress=False)
    pred = sampler(studies, net)
    torch.testing.assert_close(pred[1:], sampler(studies[1:], net))
    with pytest.raises(ValueError, match="expected inputs"):
        sampler(torch.zeros(1, 3, 4, 4, 2), net)


def test_ddim_timesteps():
    assert ddim_timesteps(4) == [999, 749, 500, 250]
    assert ddim_timesteps(1) == [999]
    assert ddim_timesteps(2, 300) == [300, 150]
    with pytest.raises(ValueError):
        ddim_timesteps(0)


def test_slice_stack_replicates_edges():
    volume = torch.arange(3.0).reshape(1, 1, 1, 1, 3).expand(1, 1, 2, 2, 3)
    stack = slice_stack(volume, 1)
    assert stack.shape == (3, 3, 2, 2)
    assert stack[0, :, 0, 0].tolist() == [0, 0, 1] and stack[2, :, 0, 0].tolist() == [1, 2, 2]
    torch.testing.assert_close(slice_stack(volume, 1, [2, 0]), stack[[2, 0]])  # training stacks single slices


def test_pet_scale_is_linear_and_rejects_empty_images():
    volume = np.random.default_rng(0).gamma(2.0, 1.0, (20, 20, 10)).astype(np.float32)
    assert pet_scale(volume * 10) == pytest.approx(10 * pet_scale(volume), rel=1e-6)
    with pytest.raises(ValueError, match="PET"):
        pet_scale(np.zeros((4, 4, 4)))


def test_normalisation_is_inverted_exactly():
    from monai.data import MetaTensor

    pet = MetaTensor(torch.from_numpy(np.random.default_rng(1).gamma(2.0, 100.0, (1, 8, 8, 4)).astype(np.float32)))
    mri = MetaTensor(torch.rand(1, 8, 8, 4) + 1)
    normalise = NormaliseStudyd(["pet"], "pet", "mri")
    study = normalise({"pet": pet, "mri": mri})
    assert study["pet_scale"] == pytest.approx(pet_scale(pet)) and float(study["pet"].max()) < float(pet.max())
    restored = normalise.inverse(study)
    torch.testing.assert_close(restored["pet"].as_tensor(), pet.as_tensor())
    torch.testing.assert_close(restored["mri"].as_tensor(), mri.as_tensor())
    assert "mri" not in normalise({"pet": pet}) and not pet.applied_operations  # MRI optional; input untouched
    # the network's output (no trace of its own) takes the normalised PET's scale; the trace is read, not popped
    torch.testing.assert_close(restore_units(study["pet"].as_tensor(), study["pet"]), pet.as_tensor())
    assert restored["pet"].applied_operations == [] and len(study["pet"].applied_operations) == 1
    with pytest.raises(ValueError, match="not NormaliseStudyd"):
        restore_units(pet, pet)


def test_automatic_data_consistency_widens_the_cut_off_for_a_noisier_study():
    """``consistency_fwhm_mm='auto'``: each study gets the cut-off of its own measured noise, recorded per study."""
    net = LinearNet()
    clean = torch.ones(1, 2, 24, 24, 16)
    noisy = clean.clone()
    noisy[:, :1] += 0.4 * torch.randn((1, 1, 24, 24, 16), generator=torch.Generator().manual_seed(0))
    sampler = DDIMVolumeSampler(1, progress=False, consistency_fwhm_mm="auto")
    sampler(torch.cat([clean + 0.02 * (noisy - clean), noisy]), net, voxel_size_mm=[2.0, 2.0, 2.0])
    quiet, loud = sampler.consistency_cutoffs_mm
    assert quiet < loud
    fixed = DDIMVolumeSampler(1, progress=False, consistency_fwhm_mm=loud)
    torch.testing.assert_close(sampler(noisy, net, voxel_size_mm=[2.0] * 3), fixed(noisy, net, voxel_size_mm=[2.0] * 3))
    for wrong in ("wide", -8):
        with pytest.raises(ValueError, match="'auto'"):
            DDIMVolumeSampler(1, consistency_fwhm_mm=wrong)


def test_significance_consistency_keeps_a_departure_map_per_study_and_rejects_negative_values():
    net = LinearNet()
    study = torch.ones(1, 2, 24, 24, 16)
    study[:, :1] += 0.3 * torch.randn((1, 1, 24, 24, 16), generator=torch.Generator().manual_seed(1))
    plain = DDIMVolumeSampler(1, progress=False, consistency_fwhm_mm="auto")
    sampler = DDIMVolumeSampler(1, progress=False, consistency_fwhm_mm="auto", consistency_significance=3.5)
    out = sampler(torch.cat([study, study]), net, voxel_size_mm=[2.0, 2.0, 2.0])
    assert len(sampler.departure_maps) == 2 and sampler.departure_maps[0].shape == (1, 1, 24, 24, 16)
    assert out[:1].shape == plain(study, net, voxel_size_mm=[2.0] * 3).shape and plain.departure_maps == []
    with pytest.raises(ValueError, match="consistency_significance"):
        DDIMVolumeSampler(1, consistency_significance=-1)


def test_progress_given_as_a_command_line_word_means_what_it_says():
    assert DDIMVolumeSampler(1, progress="false").progress is False
    assert DDIMVolumeSampler(1, progress="yes").progress is True
    with pytest.raises(ValueError, match="progress"):
        DDIMVolumeSampler(1, progress="maybe")
