"""VAE posterior with SD3's shift and scaling factors; the tiny VAE's shape contract."""

from __future__ import annotations

import torch

from soar_fast.models.vae import build_tiny_vae, decode, encode_posterior, scale_factor
from tests.tolerances import assert_close


def test_posterior_is_scaled_and_shifted() -> None:
    vae = build_tiny_vae(16, seed=1)
    x = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(0)) * 2 - 1
    mean, std = encode_posterior(vae, x)
    assert mean.shape == std.shape == (2, 16, 32 // scale_factor(vae), 48 // scale_factor(vae))
    with torch.no_grad():
        dist = vae.encode(x).latent_dist
    s, b = vae.config.scaling_factor, vae.config.shift_factor
    assert_close(mean, (dist.mean - b) * s)
    assert_close(std, dist.std * s)
    # z0 = scaling·(sample − shift) with sample = mean + std·ε is the trainer's mean' + std'·ε.
    eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(1))
    assert_close(mean + std * eps, ((dist.mean + dist.std * eps) - b) * s)


def test_tiny_posterior_std_is_small_and_decode_shape() -> None:
    vae = build_tiny_vae(16, posterior_std=0.05)
    _, std = encode_posterior(vae, torch.zeros(1, 3, 16, 16))
    assert_close(std, torch.full_like(std, 0.05 * vae.config.scaling_factor))
    pixels = decode(vae, torch.zeros(1, 16, 2, 2))
    assert pixels.shape == (1, 3, 16, 16) and pixels.min() >= 0 and pixels.max() <= 1
