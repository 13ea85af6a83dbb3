"""`accel.fused_kernels`: the step's elementwise work as fused kernels from `soar_fast/kernels/`.

- CFG + rollout step + all K·P aux points + their targets: one `fused_aux_points` launch (Triton or
  CUDA C++, `accel.aux_kernel`) instead of ~20 eager elementwise passes over [B, C, H, W] tensors.
- The per-row weighted MSE (main and aux): `soar_fast.kernels.flow_loss.flow_loss`, one reduction kernel
  forward and one elementwise kernel backward.
On CPU both run their float32 eager twins (the Triton interpreter only under TRITON_INTERPRET=1), so
the switch is exercised — and checked against the eager objective — without a GPU.

The row layout (`aux_layout`: σ', τ', row table) stays the eager objective's, so the fused path
feeds the model exactly the rows and timesteps the eager path does.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from soar_fast.config import SoarConfig
from soar_fast.soar import AuxPoints, SigmaGrid, SoarDraws, aux_layout


def fused_cfg_aux_fn(aux_kernel: Callable) -> Callable[..., AuxPoints]:
    """A `StepFns.cfg_aux` running `aux_kernel` (a `fused_aux_points`-compatible callable)."""

    def fused_cfg_aux(z_t0: torch.Tensor, v_uncond: torch.Tensor, v_cond: torch.Tensor, z0: torch.Tensor,
                      draws: SoarDraws, grid: SigmaGrid, soar: SoarConfig) -> AuxPoints:
        layout = aux_layout(draws.t0, grid, num_sampling_steps=soar.num_sampling_steps, fracs=draws.fracs,
                            sigma_upper_ratio=soar.sigma_upper_ratio, timestep_mode=soar.timestep_mode)
        latents, targets = aux_kernel(
            z_t0, v_uncond, v_cond, z0, draws.z1, layout.sigma0, layout.sigma1, layout.sigma_prime,
            layout.row_table, draws.path_noise, cfg_scale=soar.cfg_scale, kind=soar.rollout_kind,
            noise_scale=soar.noise_scale, sigma_hat_at_one=grid.sigma_hat_at_one)
        return AuxPoints(latents=latents, sigmas=layout.sigma_prime, timesteps=layout.timestep_prime,
                         targets=targets, sample_index=layout.sample_index, path_index=layout.path_index,
                         point_index=layout.point_index, layout=layout)

    return fused_cfg_aux


def fused_step_pieces(aux_kernel_choice: str, device: torch.device | str) -> tuple[Callable, Callable, str]:
    """(cfg_aux, flow_loss, description) for `accel.aux_kernel = aux_kernel_choice` on `device`."""
    from soar_fast.kernels.flow_loss import flow_loss
    from soar_fast.kernels.select import resolve_aux_kernel

    kernel = resolve_aux_kernel(aux_kernel_choice, device)
    name = f"{getattr(kernel, '__module__', '?').split('.')[-1]}.{getattr(kernel, '__name__', '?')}"
    return fused_cfg_aux_fn(kernel), flow_loss, name
