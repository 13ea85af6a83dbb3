"""Which aux rows exist, in which order, at which σ' and τ' — shared by the eager path and the kernels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from .grid import SigmaGrid

TimestepMode = Literal["grid", "continuous"]


@dataclass(frozen=True)
class AuxLayout:
    """Per-sample and per-row metadata of one step's aux points (float32 unless noted, on t0's device).

    Rows are path-major, then point, then sample; path 0 (ODE) holds every sample, paths 1..P−1 only
    the samples with `t1 > 0`. N = `num_rows`.

    sigma0, timestep0: (B,) the main grid point `at(t0)`.
    t1: (B,) `max(t0 − 1/S, 0)`.  sigma1: (B,) `at(t1).sigma`.  sigma_upper: (B,) σ_up (1 or min(r·σ0, 1)).
    keep: (B,) bool, `t1 > 0`: the sample is in the stochastic paths.
    sample_index, path_index, point_index: (N,) int64, the row's sample b, path p and point k.
    sigma_prime: (N,) σ'.  timestep_prime: (N,) the model timestep τ'.  alpha: (N,) interpolation weight α.
    row_table: (B, P, K) int32, the output row of (b, p, k) or −1 where left out.
    rows_per_path: (P,) Python ints, rows of one point of each path (B for path 0, #keep for the others).
    """

    sigma0: torch.Tensor
    timestep0: torch.Tensor
    t1: torch.Tensor
    sigma1: torch.Tensor
    sigma_upper: torch.Tensor
    keep: torch.Tensor
    sample_index: torch.Tensor
    path_index: torch.Tensor
    point_index: torch.Tensor
    sigma_prime: torch.Tensor
    timestep_prime: torch.Tensor
    alpha: torch.Tensor
    row_table: torch.Tensor
    num_paths: int
    num_points: int
    num_rows: int
    rows_per_path: tuple[int, ...]


def aux_layout(t0: torch.Tensor, grid: SigmaGrid, *, num_sampling_steps: int, fracs: torch.Tensor,
               sigma_upper_ratio: float | None = None, timestep_mode: TimestepMode = "grid") -> AuxLayout:
    """Lay out the aux rows for times `t0` (B,) and uniform draws `fracs` (P, K, B).

    With P > 1, one host sync (`nonzero`): the number of rows depends on how many samples have
    `t1 > 0`, and the per-row tensors are sized by it. With P = 1 there is none. Everything else stays
    on t0's device.
    """
    assert t0.ndim == 1, f"t0 must be (B,), got {tuple(t0.shape)}"
    B = t0.shape[0]
    assert fracs.ndim == 3 and fracs.shape[2] == B and fracs.shape[0] >= 1 and fracs.shape[1] >= 1, (
        f"fracs must be (P, K, B) with B = {B}, got {tuple(fracs.shape)}")
    assert num_sampling_steps >= 1, f"num_sampling_steps must be >= 1, got {num_sampling_steps}"
    if timestep_mode not in ("grid", "continuous"):
        raise ValueError(f"timestep_mode must be 'grid' or 'continuous', got {timestep_mode!r}")
    P, K = fracs.shape[0], fracs.shape[1]
    t0 = t0.to(torch.float32)
    sigma0, timestep0 = grid.at(t0)
    t1 = torch.clamp(t0 - 1.0 / num_sampling_steps, min=0.0)
    sigma1, _ = grid.at(t1)
    keep = t1 > 0
    if sigma_upper_ratio is None:
        sigma_upper = torch.ones_like(sigma0)
    else:
        sigma_upper = torch.clamp(sigma_upper_ratio * sigma0, max=1.0)

    u = fracs.to(device=t0.device, dtype=torch.float32)
    sp_all = sigma1 + u * (sigma_upper - sigma1)                               # (P, K, B)
    alpha_all = torch.clamp((sp_all - sigma1) / torch.clamp(1 - sigma1, min=1e-8), 0.0, 1.0)

    path_ids = torch.arange(P, device=t0.device).view(P, 1, 1)
    include = ((path_ids == 0) | keep.view(1, 1, B)).expand(P, K, B).reshape(-1)
    if P == 1:
        # Every row exists: the default configuration lays out without touching the host.
        rows = torch.arange(K * B, device=t0.device)
    else:
        rows = torch.nonzero(include).squeeze(1)                              # the one host sync
    n_rows = rows.numel()
    row_table = torch.where(include, torch.cumsum(include.to(torch.int32), 0, dtype=torch.int32) - 1, -1)
    row_table = row_table.view(P, K, B).permute(2, 0, 1).contiguous()

    sigma_prime = sp_all.reshape(-1)[rows]
    if timestep_mode == "grid":
        # The reference's σ' → t → τ round trip, float32 quirk included (docs/objective.md §2).
        _, timestep_prime = grid.at(grid.t_of(sigma_prime))
    else:
        timestep_prime = sigma_prime * grid.num_train_timesteps
    n_keep = (n_rows - K * B) // (K * (P - 1)) if P > 1 else 0
    return AuxLayout(
        sigma0=sigma0, timestep0=timestep0, t1=t1, sigma1=sigma1, sigma_upper=sigma_upper, keep=keep,
        sample_index=rows % B, path_index=rows // (K * B), point_index=(rows // B) % K,
        sigma_prime=sigma_prime, timestep_prime=timestep_prime, alpha=alpha_all.reshape(-1)[rows],
        row_table=row_table, num_paths=P, num_points=K, num_rows=n_rows,
        rows_per_path=(B,) + (n_keep,) * (P - 1),
    )
