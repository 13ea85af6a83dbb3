"""Shared inputs of the kernel tests: latents, sigmas on the real SD3 grid, an aux layout."""

from __future__ import annotations

import torch

from soar_fast.soar import SigmaGrid, aux_layout

GRID = SigmaGrid(num_train_timesteps=1000, shift=3.0)
CFG_SCALE = 4.5
NOISE_SCALE = 0.5
SAMPLING_STEPS = 40
KINDS = ("ode", "simple", "sde", "flow_sde", "cps")

# σ0 == 1 (flow_sde's ŝ substitution), an interior time, and a clean-boundary sample (t1 = 0, so
# σ1 = grid σ_999 and the stochastic paths leave it out).
T0 = torch.tensor([1.0, 0.55, 0.02, 0.8, 0.3], dtype=torch.float32)


def t0_for(batch: int) -> torch.Tensor:
    return T0[:batch].clone()


def step_sigmas(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    t0 = t0_for(batch)
    sigma0, _ = GRID.at(t0)
    sigma1, _ = GRID.at(torch.clamp(t0 - 1.0 / SAMPLING_STEPS, min=0.0))
    return sigma0, sigma1


def latents(shape, dtype: torch.dtype, device, *, count: int, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen).to(device=device, dtype=dtype) for _ in range(count)]


def fracs(P: int, K: int, B: int, seed: int = 1) -> torch.Tensor:
    """U[0,1) draws with both ends of α's range pinned (U = 0: the endpoint; U → 1: pure z1)."""
    u = torch.rand((P, K, B), generator=torch.Generator().manual_seed(seed))
    u.view(-1)[0] = 0.0
    u.view(-1)[-1] = 0.999999
    return u


def layout(P: int, K: int, B: int, device):
    return aux_layout(t0_for(B).to(device), GRID.to(device), num_sampling_steps=SAMPLING_STEPS,
                      fracs=fracs(P, K, B).to(device))
