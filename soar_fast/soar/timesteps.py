"""Timestep densities and per-sample loss weights of SD3 training (diffusers' training_utils).

One `weighting_scheme` selects both, exactly as diffusers and the reference use a single flag:
`logit_normal` and `mode` shape the density of t with weight 1; `sigma_sqrt` and `cosmap` draw t
uniformly and weight the loss instead; `uniform` is uniform with weight 1. Reimplemented rather than
imported so `soar/` does not load diffusers.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

Scheme = Literal["logit_normal", "mode", "cosmap", "uniform", "sigma_sqrt"]
SCHEMES: tuple[str, ...] = ("logit_normal", "mode", "cosmap", "uniform", "sigma_sqrt")


def sample_t(batch: int, scheme: Scheme, *, generator: torch.Generator | None = None,
             device: torch.device | str | None = None, logit_mean: float = 0.0, logit_std: float = 1.0,
             mode_scale: float = 1.29) -> torch.Tensor:
    """(B,) float32 unshifted times t, 1 = noise; the reference feeds this straight to `SigmaGrid.at`.

    Same draws, same ops as `compute_density_for_timestep_sampling`, so one generator state gives the
    same numbers as diffusers. Like the reference, those numbers are used as t directly; diffusers'
    scripts read them as a grid-index fraction (0 = noise), so a non-zero `logit_mean` or the `mode`
    density is mirrored relative to diffusers' examples. `mode` can leave [0, 1] for large
    `mode_scale`; `SigmaGrid.at` clamps.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"weighting_scheme must be one of {SCHEMES}, got {scheme!r}")
    if device is None:
        device = generator.device if generator is not None else "cpu"
    if scheme == "logit_normal":
        u = torch.normal(mean=logit_mean, std=logit_std, size=(batch,), device=device, generator=generator)
        return torch.sigmoid(u)
    u = torch.rand(size=(batch,), device=device, generator=generator)
    if scheme == "mode":
        u = 1 - u - mode_scale * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)
    return u


def loss_weight(sigma: torch.Tensor, scheme: Scheme) -> torch.Tensor:
    """Per-sample weight w(σ), float32, sigma's shape: 1/σ² (sigma_sqrt), 2/(π(1−2σ+2σ²)) (cosmap), else 1."""
    if scheme not in SCHEMES:
        raise ValueError(f"weighting_scheme must be one of {SCHEMES}, got {scheme!r}")
    sigma = sigma.to(torch.float32)
    if scheme == "sigma_sqrt":
        return sigma**-2.0
    if scheme == "cosmap":
        return 2 / (math.pi * (1 - 2 * sigma + 2 * sigma**2))
    return torch.ones_like(sigma)
