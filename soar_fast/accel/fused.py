"""`accel.fused_kernels`: the step's elementwise work as fused kernels from `soar_fast/kernels/`.

- CFG + rollout step + all K·P aux points + their targets: one `fused_aux_points` launch (Triton or
  CUDA C++, `accel.aux_kernel`) instead of ~20 eager elementwise passes over [B, C, H, W] tensors.
- The per-row weighted MSE: `soar_fast.kernels.flow_loss`, one reduction kernel forward and one
  elementwise kernel backward. The aux rows use `flow_loss_from_latents`, which recomputes each target
  (z' − z0)/σ' from the latents the model already read, so the aux kernel skips writing the (N,C,H,W)
  float32 targets and the loss never reads them back (3·N·C·H·W·4 bytes less per step). That is exact
  where the latents are stored in float32 (the step's z_t0 is float32: the recomputed target is the
  kernel's own, bit for bit) and the aux kernel can skip its targets (Triton and its eager twin; the
  CUDA C++ kernel always writes them, so its rows keep the stored targets).
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


def fused_cfg_aux_fn(aux_kernel: Callable, *, targets_from_latents: bool = False) -> Callable[..., AuxPoints]:
    """A `StepFns.cfg_aux` running `aux_kernel` (a `fused_aux_points`-compatible callable).

    `targets_from_latents`: the kernel takes `with_targets` and the aux loss recomputes the targets
    (`latent_target_loss`); the returned `AuxPoints.targets` is then None for float32 latents."""

    def fused_cfg_aux(z_t0: torch.Tensor, v_uncond: torch.Tensor, v_cond: torch.Tensor, z0: torch.Tensor,
                      draws: SoarDraws, grid: SigmaGrid, soar: SoarConfig) -> AuxPoints:
        layout = aux_layout(draws.t0, grid, num_sampling_steps=soar.num_sampling_steps, fracs=draws.fracs,
                            sigma_upper_ratio=soar.sigma_upper_ratio, timestep_mode=soar.timestep_mode)
        skip = {"with_targets": False} if targets_from_latents and z_t0.dtype == torch.float32 else {}
        latents, targets = aux_kernel(
            z_t0, v_uncond, v_cond, z0, draws.z1, layout.sigma0, layout.sigma1, layout.sigma_prime,
            layout.row_table, draws.path_noise, cfg_scale=soar.cfg_scale, kind=soar.rollout_kind,
            noise_scale=soar.noise_scale, sigma_hat_at_one=grid.sigma_hat_at_one, **skip)
        return AuxPoints(latents=latents, sigmas=layout.sigma_prime, timesteps=layout.timestep_prime,
                         targets=targets, sample_index=layout.sample_index, path_index=layout.path_index,
                         point_index=layout.point_index, layout=layout)

    return fused_cfg_aux


def latent_target_loss(pred: torch.Tensor, pts: AuxPoints, rows: slice, z0: torch.Tensor,
                       weight: torch.Tensor) -> torch.Tensor:
    """`StepFns.aux_loss` on the fused kernel: targets recomputed from the latents when the aux kernel
    skipped them (`pts.targets is None`), else the stored ones."""
    from soar_fast.kernels.flow_loss import flow_loss, flow_loss_from_latents

    if pts.targets is not None:
        return flow_loss(pred, pts.targets[rows], weight)
    return flow_loss_from_latents(pred, pts.latents[rows], z0, pts.sigmas[rows], pts.sample_index[rows], weight)


def fused_step_pieces(aux_kernel_choice: str, device: torch.device | str) -> dict[str, Callable]:
    """The `StepFns` pieces (cfg_aux, flow_loss, aux_loss) for `accel.aux_kernel = aux_kernel_choice`."""
    from soar_fast.kernels import aux_points
    from soar_fast.kernels.flow_loss import flow_loss
    from soar_fast.kernels.select import resolve_aux_kernel

    kernel = resolve_aux_kernel(aux_kernel_choice, device)
    skips_targets = kernel in (aux_points.fused_aux_points, aux_points.fused_aux_points_reference)
    return {"cfg_aux": fused_cfg_aux_fn(kernel, targets_from_latents=skips_targets), "flow_loss": flow_loss,
            "aux_loss": latent_target_loss}


def kernel_name(aux_kernel_choice: str, device: torch.device | str) -> str:
    """"<module>.<function>" of the aux kernel `accel.aux_kernel = aux_kernel_choice` resolves to."""
    from soar_fast.kernels.select import resolve_aux_kernel

    kernel = resolve_aux_kernel(aux_kernel_choice, device)
    return f"{getattr(kernel, '__module__', '?').split('.')[-1]}.{getattr(kernel, '__name__', '?')}"
