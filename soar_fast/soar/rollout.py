"""Classifier-free guidance and the one-step rollout kinds of docs/objective.md §4, all in float32."""

from __future__ import annotations

import math
from typing import Literal

import torch

from .grid import SigmaGrid

RolloutKind = Literal["ode", "simple", "sde", "flow_sde", "cps"]
KINDS: tuple[str, ...] = ("ode", "simple", "sde", "flow_sde", "cps")


def cfg_combine(v_uncond: torch.Tensor, v_cond: torch.Tensor, scale: float) -> torch.Tensor:
    """v_u + w·(v_c − v_u) in float32; returns float32 of the inputs' shape."""
    assert v_uncond.shape == v_cond.shape, (
        f"v_uncond {tuple(v_uncond.shape)} and v_cond {tuple(v_cond.shape)} must have the same shape")
    v_u = v_uncond.to(torch.float32)
    return v_u + scale * (v_cond.to(torch.float32) - v_u)


def per_sample(sigma: torch.Tensor | float, z: torch.Tensor, name: str) -> torch.Tensor:
    """A float32 scalar or (B,) sigma as a tensor broadcastable over z = (B, ...)."""
    s = torch.as_tensor(sigma, dtype=torch.float32, device=z.device)
    if s.ndim == 0:
        return s
    assert s.shape == (z.shape[0],), (
        f"{name} must be a scalar or (B,) = ({z.shape[0]},), got {tuple(s.shape)}")
    return s.view(-1, *([1] * (z.ndim - 1)))


def rollout_step(z: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor | float,
                 sigma_next: torch.Tensor | float, kind: RolloutKind, *, noise_scale: float = 0.5,
                 noise: torch.Tensor | None = None, grid: SigmaGrid | None = None,
                 out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """One step from `sigma` (σ0) to `sigma_next` (σ1 < σ0) along velocity `v`; returns z's shape.

    z, v: (B, ...) any float dtype; sigma, sigma_next: (B,) or scalar. The math runs in float32 and the
    result is cast to `out_dtype` (default z's dtype; pass float32 to chain without rounding).
    noise: ε ~ N(0, I) of z's shape for every kind but `ode`. When omitted it is drawn from the global
    torch RNG, a convenience for interactive use; the trainer and `aux_points` always pass it.
    grid: `flow_sde` replaces σ0 == 1 by the grid's second value in its std; without a grid that is the
    default `SigmaGrid()` (N = 1000, shift 3), i.e. SD3/SD3.5's.
    """
    if kind not in KINDS:
        raise ValueError(f"rollout kind must be one of {KINDS}, got {kind!r}")
    assert z.shape == v.shape, f"z {tuple(z.shape)} and v {tuple(v.shape)} must have the same shape"
    out_dtype = out_dtype or z.dtype
    zf, vf = z.to(torch.float32), v.to(torch.float32)
    s0, s1 = per_sample(sigma, z, "sigma"), per_sample(sigma_next, z, "sigma_next")
    delta = s1 - s0
    if kind == "ode":
        return (zf + vf * delta).to(out_dtype)
    if noise is None:
        noise = torch.randn(z.shape, dtype=torch.float32, device=z.device)
    assert noise.shape == z.shape, f"noise must have z's shape {tuple(z.shape)}, got {tuple(noise.shape)}"
    eps = noise.to(torch.float32)
    sigma_hat_at_one = (grid or _default_grid()).sigma_hat_at_one
    return _stochastic(zf, vf, s0, s1, delta, eps, kind, noise_scale, sigma_hat_at_one).to(out_dtype)


def _stochastic(z: torch.Tensor, v: torch.Tensor, s0: torch.Tensor, s1: torch.Tensor, delta: torch.Tensor,
                eps: torch.Tensor, kind: str, eta: float, sigma_hat_at_one: float) -> torch.Tensor:
    if kind == "simple":
        return z + v * delta + eta * torch.sqrt(delta.abs()) * eps
    x0_hat = z - s0 * v
    if kind == "sde":
        return (1 - s1) * x0_hat + s1 * eps
    if kind == "flow_sde":
        # At σ0 == 1 the Flow-GRPO std divides by 1 − σ0; it substitutes the next grid value instead.
        s_hat = torch.where(s0 == 1, torch.full_like(s0, sigma_hat_at_one), s0)
        std = eta * torch.sqrt(s0 / (1 - s_hat))
        var = std * std
        mean = z * (1 + var / (2 * s0) * delta) + v * (1 + var * (1 - s0) / (2 * s0)) * delta
        return mean + std * torch.sqrt(torch.clamp(-delta, min=0)) * eps
    # cps
    std = s1 * math.sin(eta * math.pi / 2)
    x1_hat = z + (1 - s0) * v
    return (1 - s1) * x0_hat + torch.sqrt(torch.clamp(s1 * s1 - std * std, min=0)) * x1_hat + std * eps


_DEFAULT_GRID: SigmaGrid | None = None


def _default_grid() -> SigmaGrid:
    global _DEFAULT_GRID
    if _DEFAULT_GRID is None:
        _DEFAULT_GRID = SigmaGrid()
    return _DEFAULT_GRID
