"""Aux points: re-noise one rollout step's endpoint towards the same z1 and aim back at z0 (docs/objective.md §3, step 4)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .grid import SigmaGrid
from .layout import AuxLayout, TimestepMode, aux_layout
from .rollout import RolloutKind, rollout_step

__all__ = ["AuxLayout", "AuxPoints", "aux_layout", "aux_points"]


@dataclass(frozen=True)
class AuxPoints:
    """The N aux supervision rows of one step, path-major, then point, then sample.

    latents: (N, C, H, W) z', in z_t0's dtype (what the model is fed).
    sigmas: (N,) float32 σ' (continuous, used by the target and the loss weight).
    timesteps: (N,) float32 τ' fed to the model (grid or continuous, see `timestep_mode`).
    targets: (N, C, H, W) float32 v_corr = (z' − z0)/σ', from the float32 z' (before storage rounding);
        None when the fused kernels recompute them from float32 latents in the loss instead.
    sample_index, path_index, point_index: (N,) int64, the row's sample, path and point.
    layout: the `AuxLayout` these rows were built from (row_table etc.).
    """

    latents: torch.Tensor
    sigmas: torch.Tensor
    timesteps: torch.Tensor
    targets: torch.Tensor | None
    sample_index: torch.Tensor
    path_index: torch.Tensor
    point_index: torch.Tensor
    layout: AuxLayout


def aux_points(z_t0: torch.Tensor, v_cfg: torch.Tensor, z_0: torch.Tensor, z_1: torch.Tensor,
               t0: torch.Tensor, grid: SigmaGrid, *, num_sampling_steps: int, fracs: torch.Tensor,
               noise: torch.Tensor | None = None, kind: RolloutKind = "flow_sde", noise_scale: float = 0.5,
               sigma_upper_ratio: float | None = None, timestep_mode: TimestepMode = "grid") -> AuxPoints:
    """Build every aux row of one step (eager; one host sync, in `aux_layout`, to size the outputs).

    z_t0, v_cfg, z_0, z_1: (B, C, H, W), any float dtypes; all math is float32. t0: (B,) unshifted time.
    fracs: (P, K, B) U[0,1) draws. noise: (P−1, B, C, H, W) N(0,1) draws for the stochastic paths
    (required when P > 1). Path 0 is the ODE step; paths 1..P−1 use `kind`.
    """
    B = z_t0.shape[0]
    for name, x in (("v_cfg", v_cfg), ("z_0", z_0), ("z_1", z_1)):
        assert x.shape == z_t0.shape, (
            f"{name} must have z_t0's shape {tuple(z_t0.shape)}, got {tuple(x.shape)}")
    assert t0.shape == (B,), f"t0 must be (B,) = ({B},), got {tuple(t0.shape)}"
    P = fracs.shape[0] if fracs.ndim == 3 else 1
    if P > 1:
        if noise is None:
            raise ValueError(f"aux_points: {P} rollout paths need noise of shape (P-1, B, ...) = "
                             f"{(P - 1, *z_t0.shape)}, got None")
        assert noise.shape == (P - 1, *z_t0.shape), (
            f"noise must be (P-1, B, C, H, W) = {(P - 1, *z_t0.shape)}, got {tuple(noise.shape)}")
    layout = aux_layout(t0, grid, num_sampling_steps=num_sampling_steps, fracs=fracs,
                        sigma_upper_ratio=sigma_upper_ratio, timestep_mode=timestep_mode)

    z, v = z_t0.to(torch.float32), v_cfg.to(torch.float32)
    s0, s1 = layout.sigma0, layout.sigma1
    # Endpoints z1' of every path for every sample; rows of left-out samples are simply never gathered.
    ends = [rollout_step(z, v, s0, s1, "ode", out_dtype=torch.float32)]
    for path in range(1, P):
        ends.append(rollout_step(z, v, s0, s1, kind, noise_scale=noise_scale, noise=noise[path - 1],
                                 grid=grid, out_dtype=torch.float32))
    ends = torch.stack(ends)                                                  # (P, B, C, H, W)

    b, p = layout.sample_index, layout.path_index
    bcast = (-1,) + (1,) * (z_t0.ndim - 1)
    alpha = layout.alpha.view(bcast)
    z_prime = (1 - alpha) * ends[p, b] + alpha * z_1.to(torch.float32)[b]
    targets = (z_prime - z_0.to(torch.float32)[b]) / layout.sigma_prime.view(bcast)
    return AuxPoints(
        latents=z_prime.to(z_t0.dtype), sigmas=layout.sigma_prime, timesteps=layout.timestep_prime,
        targets=targets, sample_index=b, path_index=p, point_index=layout.point_index, layout=layout,
    )
