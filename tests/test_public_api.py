"""The public contract of docs/objective.md §6, called exactly as written there: every kind, P ∈ {1,2,3}, K ∈ {1..6}."""

import inspect

import pytest
import torch

from soar_fast.soar import AuxPoints, SigmaGrid, aux_points, rollout_step
from tests.tolerances import assert_close

KINDS = ["ode", "simple", "sde", "flow_sde", "cps"]
B, C, H, W = 5, 3, 6, 5


def test_signatures_keep_the_spec_keywords():
    rs = inspect.signature(rollout_step).parameters
    assert list(rs)[:5] == ["z", "v", "sigma", "sigma_next", "kind"]
    assert {k: rs[k].default for k in ("noise_scale", "noise", "grid")} == {"noise_scale": 0.5, "noise": None,
                                                                           "grid": None}
    ap = inspect.signature(aux_points).parameters
    assert list(ap)[:6] == ["z_t0", "v_cfg", "z_0", "z_1", "t0", "grid"]
    defaults = {"noise": None, "kind": "flow_sde", "noise_scale": 0.5, "sigma_upper_ratio": None,
                "timestep_mode": "grid"}
    assert {k: ap[k].default for k in defaults} == defaults
    assert all(ap[k].kind is inspect.Parameter.KEYWORD_ONLY for k in ("num_sampling_steps", "fracs", "noise"))


def test_grid_contract():
    grid = SigmaGrid(num_train_timesteps=1000, shift=3.0)
    assert grid.sigmas.shape == grid.timesteps.shape == (1000,) and grid.sigmas.dtype == torch.float32
    t = torch.rand(B, generator=torch.Generator().manual_seed(0))
    sigma, timestep = grid.at(t)
    assert sigma.shape == timestep.shape == (B,)
    assert grid.t_of(sigma).shape == (B,) and torch.equal(timestep, 1000 * sigma)


@pytest.mark.parametrize("kind", KINDS)
def test_rollout_step_contract(kind):
    g = torch.Generator().manual_seed(1)
    z, v, eps = (torch.randn(B, C, H, W, generator=g) for _ in range(3))
    grid = SigmaGrid()
    sigma, _ = grid.at(torch.rand(B, generator=g) * 0.8 + 0.1)
    sigma_next, _ = grid.at(torch.rand(B, generator=g) * 0.05)
    out = rollout_step(z, v, sigma, sigma_next, kind, noise_scale=0.5, noise=eps, grid=grid)
    assert out.shape == z.shape and out.dtype == z.dtype and bool(torch.isfinite(out).all())
    assert not torch.equal(out, z)


def make(seed, P, K):
    g = torch.Generator().manual_seed(seed)
    grid = SigmaGrid(num_train_timesteps=1000, shift=3.0)
    z_0, z_1 = torch.randn(B, C, H, W, generator=g), torch.randn(B, C, H, W, generator=g)
    t0 = torch.rand(B, generator=g) * 0.9 + 0.1
    t0[1] = 0.013                                                   # a sample with t1 <= 0
    s0 = grid.at(t0)[0].view(-1, 1, 1, 1)
    z_t0 = (1 - s0) * z_0 + s0 * z_1
    fracs = torch.rand(P, K, B, generator=g)
    noise = torch.randn(P - 1, B, C, H, W, generator=g) if P > 1 else None
    return grid, z_0, z_1, t0, z_t0, fracs, noise


@pytest.mark.parametrize("K", range(1, 7))
@pytest.mark.parametrize("P", [1, 2, 3])
@pytest.mark.parametrize("kind", KINDS)
def test_aux_points_contract(kind, P, K):
    grid, z_0, z_1, t0, z_t0, fracs, noise = make(10 * P + K, P, K)
    v_cfg = z_1 - z_0                                              # a perfect velocity
    pts = aux_points(z_t0, v_cfg, z_0, z_1, t0, grid, num_sampling_steps=40, fracs=fracs, noise=noise,
                     kind=kind, noise_scale=0.5, sigma_upper_ratio=None, timestep_mode="grid")
    assert isinstance(pts, AuxPoints)
    n = K * B + (P - 1) * K * (B - 1)
    assert pts.latents.shape == pts.targets.shape == (n, C, H, W)
    assert pts.sigmas.shape == pts.timesteps.shape == pts.sample_index.shape == (n,)
    assert pts.sample_index.dtype == torch.int64
    # Path-major, then point, then sample; sample 1 only in path 0.
    want = [b for p in range(P) for _ in range(K) for b in range(B) if p == 0 or b != 1]
    assert pts.sample_index.tolist() == want
    assert bool(torch.isin(pts.timesteps, grid.timesteps).all())
    assert bool(torch.isfinite(pts.targets).all())
    ode_rows = slice(0, K * B)
    assert_close(pts.targets[ode_rows], (z_1 - z_0)[pts.sample_index[ode_rows]])
    if kind != "ode" and P > 1:
        assert not torch.allclose(pts.targets[K * B:], (z_1 - z_0)[pts.sample_index[K * B:]])
