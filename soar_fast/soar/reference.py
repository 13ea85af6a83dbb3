"""The whole SOAR step's loss, computed the plainest way in the reference's order: the oracle.

Every fast step is checked against this function, and benchmarks time it as the baseline semantics.
Order: main forward; CFG forward over [uncond; cond] (autograd on, then detached, like the reference);
aux points; one forward per (path, point); normalisation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from .aux import aux_points
from .draws import SoarDraws
from .grid import SigmaGrid
from .layout import TimestepMode
from .loss import Count, LossParts, normaliser, soar_loss, weighted_mse
from .rollout import RolloutKind, cfg_combine
from .timesteps import Scheme, loss_weight

# model(latents [N,C,H,W], timesteps [N] float32, prompt_embeds [N,L,D], pooled [N,P]) -> velocity [N,C,H,W]
Model = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def reference_loss(model: Model, z0: torch.Tensor, prompt_embeds: torch.Tensor, pooled: torch.Tensor,
                   null_embeds: torch.Tensor, null_pooled: torch.Tensor, grid: SigmaGrid, draws: SoarDraws, *,
                   cfg_scale: float = 4.5, num_sampling_steps: int = 40, lambda_aux: float = 1.0,
                   weighting_scheme: Scheme = "logit_normal", kind: RolloutKind = "flow_sde",
                   noise_scale: float = 0.5, sigma_upper_ratio: float | None = None,
                   timestep_mode: TimestepMode = "grid", rollout_grad: bool = True,
                   model_dtype: torch.dtype | None = None,
                   global_counts: tuple[Count, Count] | None = None) -> LossParts:
    """SOAR loss of one batch. z0: (B, C, H, W); prompt_embeds: (B, L, D); pooled: (B, Pd);
    null_embeds: (1 or B, L, D) and null_pooled: (1 or B, Pd), the empty prompt's embeddings.

    rollout_grad: run the CFG forward with autograd enabled (the reference's behaviour and cost); False
    runs it under no_grad, same numbers. model_dtype: dtype of the latents fed to the model (default:
    the model's first parameter's, else z0's). global_counts: (N_main, N_aux) over all ranks; default
    this batch's (B, N). The aux rows are built from z_t0 as fed to the model (model_dtype).
    """
    B = z0.shape[0]
    assert draws.t0.shape == (B,) and draws.z1.shape == z0.shape, (
        f"draws must match z0 {tuple(z0.shape)}: t0 {tuple(draws.t0.shape)}, z1 {tuple(draws.z1.shape)}")
    assert prompt_embeds.ndim == 3 and pooled.ndim == 2 and prompt_embeds.shape[0] == pooled.shape[0] == B, (
        f"prompt_embeds must be (B={B}, L, D) and pooled (B, P), got {tuple(prompt_embeds.shape)}, "
        f"{tuple(pooled.shape)}")
    dtype = model_dtype or _model_dtype(model, z0.dtype)

    sigma0, tau0 = grid.at(draws.t0)
    s0 = sigma0.view(-1, *([1] * (z0.ndim - 1)))
    z0f, z1f = z0.to(torch.float32), draws.z1.to(torch.float32)
    z_t0 = ((1 - s0) * z0f + s0 * z1f).to(dtype)

    v0 = model(z_t0, tau0, prompt_embeds, pooled)
    main = weighted_mse(v0, z1f - z0f, loss_weight(sigma0, weighting_scheme))

    null_e = null_embeds.expand(B, *null_embeds.shape[1:])
    null_p = null_pooled.expand(B, *null_pooled.shape[1:])
    with contextlib.nullcontext() if rollout_grad else torch.no_grad():
        v_both = model(torch.cat([z_t0, z_t0]), torch.cat([tau0, tau0]), torch.cat([null_e, prompt_embeds]),
                       torch.cat([null_p, pooled]))
    v_uncond, v_cond = v_both.detach().chunk(2)
    v_cfg = cfg_combine(v_uncond, v_cond, cfg_scale)

    pts = aux_points(z_t0, v_cfg, z0, draws.z1, draws.t0, grid, num_sampling_steps=num_sampling_steps,
                     fracs=draws.fracs, noise=draws.path_noise, kind=kind, noise_scale=noise_scale,
                     sigma_upper_ratio=sigma_upper_ratio, timestep_mode=timestep_mode)
    aux_sum = main.new_zeros(())
    start = 0
    for rows in pts.layout.rows_per_path:
        for _ in range(pts.layout.num_points):
            sl, start = slice(start, start + rows), start + rows
            if rows == 0:
                continue
            b = pts.sample_index[sl]
            pred = model(pts.latents[sl].to(dtype), pts.timesteps[sl], prompt_embeds[b], pooled[b])
            weight = loss_weight(pts.sigmas[sl], weighting_scheme)
            aux_sum = aux_sum + weighted_mse(pred, pts.targets[sl], weight).sum()

    n_main, n_aux = global_counts if global_counts is not None else (B, pts.layout.num_rows)
    main_sum = main.sum()
    return LossParts(
        loss=soar_loss(main_sum, aux_sum, n_main, n_aux, lambda_aux),
        loss_main=main_sum.detach() / normaliser(n_main, 0, 0.0),
        loss_aux=aux_sum.detach() / normaliser(0, n_aux, 1.0),
        n_main=n_main, n_aux=n_aux,
    )


def _model_dtype(model: Model, default: torch.dtype) -> torch.dtype:
    params = getattr(model, "parameters", None)
    if params is None:
        return default
    first = next(iter(params()), None)
    return default if first is None else first.dtype
