"""DDIM sampler: determinism, network calls, warm start, uncertainty, normalisation scales."""

import numpy as np
import pytest
import torch
from network_testing import tiny_network

from scripts.sampler import DDIMVolumeSampler, ddim_step, ddim_timesteps, make_noise_scheduler, pet_scale, slice_stack


class CountingNet(torch.nn.Module):
    """Wraps a network and counts forward calls."""

    def __init__(self, net):
        super().__init__()
        self.net, self.calls = net, 0
        self.supports_mri_free, self.downsample_factor = net.supports_mri_free, net.downsample_factor

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.net(*args, **kwargs)


def _net():
    return tiny_network(std=0.1)


def _volume(shape=(1, 1, 15, 13, 5), seed=0):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) + 0.1


def test_same_seed_same_result_and_independent_of_slice_batching():
    net = _net()
    ld, mri = _volume(), _volume(seed=1)
    a = DDIMVolumeSampler(num_inference_steps=3, seed=7, slice_batch_size=2, progress=False)(net, ld, mri)[0]
    b = DDIMVolumeSampler(num_inference_steps=3, seed=7, slice_batch_size=5, progress=False)(net, ld, mri)[0]
    c = DDIMVolumeSampler(num_inference_steps=3, seed=8, slice_batch_size=5, progress=False)(net, ld, mri)[0]
    assert a.shape == ld.shape  # odd sizes are padded and cropped back
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("steps,samples,batch", [(1, 1, 5), (4, 1, 2), (2, 3, 2)])
def test_network_calls_follow_steps_samples_and_batches(steps, samples, batch):
    net = CountingNet(_net())
    sampler = DDIMVolumeSampler(num_inference_steps=steps, num_samples=samples, slice_batch_size=batch, progress=False)
    sampler(net, _volume(), _volume(seed=1))
    batches = -(-5 // batch)
    assert net.calls == steps * samples * batches == sampler.network_calls
    assert sampler.network_calls_per_slice == steps * samples


def test_several_samples_give_an_uncertainty_map():
    net = _net()
    mean, std = DDIMVolumeSampler(num_inference_steps=2, num_samples=3, progress=False)(net, _volume(), _volume(seed=1))
    assert std.shape == mean.shape and (std >= 0).all() and std.max() > 0
    _, std_one = DDIMVolumeSampler(num_inference_steps=2, num_samples=1, progress=False)(
        net, _volume(), _volume(seed=1)
    )
    assert std_one.abs().max() == 0


def test_mri_free_path_ignores_the_mri_argument():
    net = _net()
    sampler = DDIMVolumeSampler(num_inference_steps=2, progress=False)
    free = sampler(net, _volume(), None)[0]
    assert free.shape == _volume().shape
    guided = sampler(net, _volume(), _volume(seed=1))[0]
    assert not torch.allclose(free, guided)


def test_warm_start_uses_the_low_dose_image():
    net = _net()
    sampler = DDIMVolumeSampler(num_inference_steps=2, warm_start_timestep=300, progress=False)
    assert sampler.timesteps == [300, 150]
    a = sampler(net, _volume(), _volume(seed=1))[0]
    b = sampler(net, _volume(seed=5), _volume(seed=1))[0]
    assert not torch.allclose(a, b)


def test_ddim_timesteps_and_step():
    assert ddim_timesteps(4) == [999, 749, 500, 250]
    assert ddim_timesteps(1) == [999]
    with pytest.raises(ValueError):
        ddim_timesteps(0)
    alphas = make_noise_scheduler().alphas_cumprod
    x0, noise = torch.randn(4), torch.randn(4)
    a_t, a_s = float(alphas[800]), float(alphas[400])
    x_t = a_t**0.5 * x0 + (1 - a_t) ** 0.5 * noise
    # with the true x0 the deterministic DDIM step lands on the same noise trajectory
    torch.testing.assert_close(ddim_step(x0, x_t, a_t, a_s), a_s**0.5 * x0 + (1 - a_s) ** 0.5 * noise)


def test_slice_stack_replicates_edges():
    volume = torch.arange(3.0).reshape(1, 1, 1, 1, 3).expand(1, 1, 2, 2, 3)
    stack = slice_stack(volume, 1)
    assert stack.shape == (3, 3, 2, 2)
    assert stack[0, :, 0, 0].tolist() == [0, 0, 1] and stack[2, :, 0, 0].tolist() == [1, 2, 2]


def test_pet_scale_is_linear_and_rejects_empty_images():
    volume = np.random.default_rng(0).gamma(2.0, 1.0, (20, 20, 10)).astype(np.float32)
    assert pet_scale(volume * 10) == pytest.approx(10 * pet_scale(volume), rel=1e-6)
    with pytest.raises(ValueError, match="PET"):
        pet_scale(np.zeros((4, 4, 4)))
