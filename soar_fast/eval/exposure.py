"""Exposure bias, measured: how far the model's own CFG Euler rollout leaves the true ray, and how much
worse its velocity is there than on the ray (docs/eval.md, "Exposure-bias diagnostics").

Notation of docs/objective.md: `z_σ = (1−σ)·z0 + σ·z1`, target velocity `d = z1 − z0`. For each start
sigma σs and sample b, with ‖·‖ the L2 norm over one sample's C·h·w values:
- teacher-forced velocity error at a true state: `‖v(z_σ, σ) − d‖² / ‖d‖²`;
- self-rollout: n Euler steps `z ← z + v_cfg·(σ_{k+1} − σ_k)` from `z_σs` along the path σs = σ_0 > … > σ_n = σe
  reach `ẑ`; its drift is `‖ẑ − z_σe‖ / ‖d‖` (the ray from z0 to z1 has length ‖d‖, so drift 0.01 is a
  hundredth of it), and its velocity error is the same formula at `(ẑ, σe)`;
- correction error at a state: `‖v(z, σ) − (z − z0)/σ‖² / ‖d‖²`, against SOAR's auxiliary target (the
  velocity whose x0-prediction is z0 exactly); on the ray `(z_σ − z0)/σ = d`, so it is the velocity error
  there, and off the ray it asks whether the model steers back to z0;
- x0-prediction norm drift at a state: `‖z − σ·v‖ / ‖z0‖ − 1` (0 when the predicted clean latent has the
  norm of the real one; negative = washed-out, positive = over-saturated).
Each is reported for the conditional velocity `v_c` (what training fits) and the guided one
`v_cfg = v_u + w·(v_c − v_u)` (what the sampler steps with; equal to `v_c` when w ≤ 1; the correction
error only for `v_c`), then averaged over samples. A velocity exactly `d` everywhere gives zero for every number; a constant bias `b` gives drift
`(σs − σe)·‖b‖/‖d‖` (tests/test_diagnose.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import torch

from soar_fast.soar.grid import SigmaGrid
from soar_fast.soar.rollout import cfg_combine

# velocity(z [m·B, C, h, w] float32, sigma [m·B] float32) -> (v_cond, v_uncond or None), each [m·B, C, h, w].
# Rows come in m whole copies of the batch (row g·B + b is sample b), so the caller repeats the condition.
GuidedVelocity = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]

STATES = ("teacher_forced", "teacher_forced_end", "self_rollout")
"""The three states measured per start: the true `z_σs`, the true `z_σe`, and the reached `ẑ` (at σe)."""


@dataclass
class StateErrors:
    """Per-sample numbers at one state, each float64 (G, B): G start sigmas, B samples."""

    velocity_error: torch.Tensor
    """‖v_c − d‖² / ‖d‖²."""
    velocity_error_cfg: torch.Tensor
    """‖v_cfg − d‖² / ‖d‖²."""
    correction_error: torch.Tensor
    """‖v_c − (z − z0)/σ‖² / ‖d‖²."""
    x0_norm_drift: torch.Tensor
    """‖z − σ·v_c‖ / ‖z0‖ − 1."""
    x0_norm_drift_cfg: torch.Tensor
    """‖z − σ·v_cfg‖ / ‖z0‖ − 1."""


@dataclass
class ExposureBias:
    """Everything measured for G start sigmas and B samples (CPU tensors)."""

    sigma_start: torch.Tensor
    """(G,) float32 σs."""
    sigma_end: torch.Tensor
    """(G,) float32 σe, where the rollout ends."""
    steps: torch.Tensor
    """(G,) int64: Euler steps of non-zero length between σs and σe."""
    drift: torch.Tensor
    """(G, B) float64 ‖ẑ − z_σe‖ / ‖d‖."""
    teacher_forced: StateErrors
    """At the true start state z_σs."""
    teacher_forced_end: StateErrors
    """At the true state z_σe at the rollout's end sigma."""
    self_rollout: StateErrors
    """At the reached state ẑ, sigma σe."""

    @property
    def num_samples(self) -> int:
        return int(self.drift.shape[1])

    def summary(self) -> list[dict[str, float | int | dict[str, float]]]:
        """One dict per start sigma: sigmas, steps, the mean drift, and each state's means over samples."""
        out = []
        for g in range(self.sigma_start.shape[0]):
            row: dict[str, float | int | dict[str, float]] = {
                "sigma_start": float(self.sigma_start[g]), "sigma_end": float(self.sigma_end[g]),
                "steps": int(self.steps[g]), "drift": float(self.drift[g].mean())}
            for state in STATES:
                errors = getattr(self, state)
                row[state] = {f.name: float(getattr(errors, f.name)[g].mean()) for f in fields(StateErrors)}
            out.append(row)
        return out


def merge(parts: Sequence[ExposureBias]) -> ExposureBias:
    """The batches of one run (same start sigmas) as one result over all their samples."""
    assert parts, "merge: nothing to merge"
    first = parts[0]
    for p in parts[1:]:
        assert torch.equal(p.sigma_start, first.sigma_start) and torch.equal(p.sigma_end, first.sigma_end), (
            "merge: the parts were measured on different sigma paths")

    def cat_states(name: str) -> StateErrors:
        return StateErrors(**{f.name: torch.cat([getattr(getattr(p, name), f.name) for p in parts], dim=1)
                              for f in fields(StateErrors)})

    return ExposureBias(first.sigma_start, first.sigma_end, first.steps, torch.cat([p.drift for p in parts], dim=1),
                        *(cat_states(s) for s in STATES))


def rollout_paths(grid: SigmaGrid, start_sigmas: Sequence[float], *, num_sampling_steps: int,
                  rollout_steps: int) -> torch.Tensor:
    """(G, n + 1) float32 sigma paths on the training grid, by the rule of SOAR's rollout step.

    Start g: σ_0 = the first grid sigma at or below the requested one (index j), `t_0 = 1 − j/N`; then
    `t_k = max(t_0 − k/S, 0)` and `σ_k = grid.at(t_k)` for k = 1..n, S = `num_sampling_steps`: each step
    is the step `t1 = t0 − 1/S` SOAR trains on (with its float32 index rule). Paths stop at the grid's
    last sigma (never 0); a path that reaches it early repeats it (zero-length steps, which move nothing)."""
    if rollout_steps < 1:
        raise ValueError(f"rollout_steps must be >= 1, got {rollout_steps}")
    if num_sampling_steps < 1:
        raise ValueError(f"num_sampling_steps must be >= 1, got {num_sampling_steps}")
    bad = [s for s in start_sigmas if not 0.0 < float(s) <= 1.0]
    if not start_sigmas or bad:
        raise ValueError(f"start sigmas must be a non-empty list of values in (0, 1], got {list(start_sigmas)}")
    sigmas, _, neg = grid.tables(torch.device("cpu"))
    wanted = torch.tensor([float(s) for s in start_sigmas], dtype=torch.float32)
    # Directly by index, not `grid.at(grid.t_of(σ))`: that float32 round trip lands one grid point
    # above the requested sigma for ~8% of values.
    j = torch.searchsorted(neg, -wanted, side="left").clamp(max=grid.num_train_timesteps - 1)
    t0 = 1.0 - j.to(torch.float32) / grid.num_train_timesteps
    k = torch.arange(1, rollout_steps + 1, dtype=torch.float32)
    later, _ = grid.at(torch.clamp(t0[:, None] - k[None, :] / num_sampling_steps, min=0.0))
    return torch.cat([sigmas[j][:, None], torch.minimum(later, sigmas[j][:, None])], dim=1)


@torch.no_grad()
def exposure_bias(velocity: GuidedVelocity, z0: torch.Tensor, z1: torch.Tensor, sigma_paths: torch.Tensor, *,
                  cfg_scale: float, starts_per_forward: int | None = None) -> ExposureBias:
    """Measure teacher-forced and self-rollout errors for one batch (module docstring for the formulas).

    z0, z1: (B, C, h, w) clean latents and their fixed noise. sigma_paths: (G, n + 1) non-increasing
    sigmas, column 0 the start, column n the end (`rollout_paths`). The rollout steps with
    `cfg_combine(v_u, v_c, cfg_scale)` when `cfg_scale > 1` (the sampler's rule), else with v_c alone;
    `velocity` may then return None for v_u. Starts run `starts_per_forward` at a time (default all), each
    forward on that many copies of the batch. Per start: n forwards along the rollout (the first is the
    teacher-forced one at σs) and two at σe (the reached and the true state).
    """
    assert z0.ndim == 4 and z0.shape == z1.shape, (
        f"z0 {tuple(z0.shape)} and z1 {tuple(z1.shape)} must be the same (B, C, h, w)")
    assert sigma_paths.ndim == 2 and sigma_paths.shape[1] >= 2, (
        f"sigma_paths must be (G, n + 1) with n >= 1, got {tuple(sigma_paths.shape)}")
    paths = sigma_paths.to(torch.float32).cpu()
    assert bool((paths[:, 1:] <= paths[:, :-1]).all()), f"sigma paths must not increase: {paths.tolist()}"
    per = starts_per_forward or paths.shape[0]
    parts = [_measure(velocity, z0.float(), z1.float(), paths[g:g + per], cfg_scale)
             for g in range(0, paths.shape[0], per)]
    return ExposureBias(paths[:, 0].clone(), paths[:, -1].clone(), (paths[:, 1:] < paths[:, :-1]).sum(1),
                        torch.cat([p[0] for p in parts]),
                        *(StateErrors(*(torch.cat([p[1 + i][j] for p in parts]) for j in range(5)))
                          for i in range(3)))


def _measure(velocity: GuidedVelocity, z0: torch.Tensor, z1: torch.Tensor, paths: torch.Tensor,
             cfg_scale: float) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    g, b = paths.shape[0], z0.shape[0]
    device = z0.device
    # Rows start-major: row i·B + j is sample j on path i.
    sig = paths.to(device).repeat_interleave(b, dim=0)  # (G·B, n + 1)
    x0, x1 = z0.repeat(g, 1, 1, 1), z1.repeat(g, 1, 1, 1)
    d = x1 - x0

    def on_ray(sigma: torch.Tensor) -> torch.Tensor:
        s = sigma.view(-1, 1, 1, 1)
        return (1 - s) * x0 + s * x1

    def step_velocities(z: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v_c, v_u = velocity(z, sigma)
        assert v_c.shape == z.shape, f"velocity returned {tuple(v_c.shape)} for z {tuple(z.shape)}"
        v_c = v_c.to(torch.float32)
        if cfg_scale > 1.0:
            assert v_u is not None, "cfg_scale > 1 needs the unconditional velocity"
            return v_c, cfg_combine(v_u, v_c, cfg_scale)
        return v_c, v_c

    def errors(z: torch.Tensor, sigma: torch.Tensor, v_c: torch.Tensor, v_cfg: torch.Tensor) -> list[torch.Tensor]:
        s = sigma.view(-1, 1, 1, 1)
        return [_rel_sq(v_c - d, d), _rel_sq(v_cfg - d, d), _rel_sq(v_c - (z - x0) / s, d),
                _norm(z - s * v_c) / _norm(x0) - 1, _norm(z - s * v_cfg) / _norm(x0) - 1]

    z = on_ray(sig[:, 0])
    start = None
    for k in range(sig.shape[1] - 1):
        v_c, v_cfg = step_velocities(z, sig[:, k])
        if k == 0:
            start = errors(z, sig[:, 0], v_c, v_cfg)
        z = z + v_cfg * (sig[:, k + 1] - sig[:, k]).view(-1, 1, 1, 1)
    end_sigma = sig[:, -1]
    z_true = on_ray(end_sigma)
    reached = errors(z, end_sigma, *step_velocities(z, end_sigma))
    true_end = errors(z_true, end_sigma, *step_velocities(z_true, end_sigma))
    drift = _norm(z - z_true) / _norm(d)

    def shaped(x: torch.Tensor) -> torch.Tensor:
        return x.view(g, b).cpu()

    return shaped(drift), [shaped(x) for x in start], [shaped(x) for x in true_end], [shaped(x) for x in reached]


def _norm(x: torch.Tensor) -> torch.Tensor:
    """Per-row L2 norm in float64, (R,)."""
    return x.to(torch.float64).flatten(1).norm(dim=1)


def _rel_sq(err: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return _norm(err).square() / _norm(ref).square()
