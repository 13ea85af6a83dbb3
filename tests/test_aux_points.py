"""aux_points / aux_layout: invariants, counts and order, the boundary, and the σ'/τ' rules."""

import pytest
import torch

from soar_fast.soar import SigmaGrid, aux_layout, aux_points, rollout_step
from tests.tolerances import assert_close

B, C, H, W = 7, 3, 5, 6
S = 40


def case(seed, t0=None, P=1, K=4, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    grid = SigmaGrid()
    z0, z1 = torch.randn(B, C, H, W, generator=g), torch.randn(B, C, H, W, generator=g)
    t0 = torch.rand(B, generator=g) * 0.8 + 0.2 if t0 is None else t0
    s0 = grid.at(t0)[0].view(-1, 1, 1, 1)
    z_t0 = ((1 - s0) * z0 + s0 * z1).to(dtype)
    v_cfg = z1 - z0 + 0.3 * torch.randn(B, C, H, W, generator=g)
    fracs = torch.rand(P, K, B, generator=g)
    noise = torch.randn(P - 1, B, C, H, W, generator=g) if P > 1 else None
    return grid, z0, z1, t0, z_t0, v_cfg, fracs, noise


def boundary_t0():
    # 1/S exactly gives t1 == 0 (left out); its float32 neighbour above gives t1 > 0 (kept).
    t0 = torch.tensor([0.025, 0.6, 0.0, 0.91, 0.01, 0.37, 0.025])
    t0[6] = torch.nextafter(t0[6], torch.tensor(1.0))
    return t0, torch.tensor([False, True, False, True, False, True, True])


def test_perfect_velocity_makes_every_ode_target_the_sft_target():
    grid, z0, z1, t0, z_t0, _, fracs, noise = case(1, P=3)
    pts = aux_points(z_t0, z1 - z0, z0, z1, t0, grid, num_sampling_steps=S, fracs=fracs, noise=noise,
                     kind="ode")
    assert_close(pts.targets, (z1 - z0)[pts.sample_index])


def test_u_one_gives_pure_noise_and_u_zero_gives_the_rollout_endpoint():
    grid, z0, z1, t0, z_t0, v_cfg, _, noise = case(2, P=2, K=3)
    kw = {"num_sampling_steps": S, "noise": noise, "kind": "sde"}
    ones = aux_points(z_t0, v_cfg, z0, z1, t0, grid, fracs=torch.ones(2, 3, B), **kw)
    assert_close(ones.latents, z1[ones.sample_index])
    assert_close(ones.targets, (z1 - z0)[ones.sample_index])
    zeros = aux_points(z_t0, v_cfg, z0, z1, t0, grid, fracs=torch.zeros(2, 3, B), **kw)
    s0, s1 = zeros.layout.sigma0, zeros.layout.sigma1
    ends = torch.stack([rollout_step(z_t0, v_cfg, s0, s1, "ode"),
                        rollout_step(z_t0, v_cfg, s0, s1, "sde", noise=noise[0], noise_scale=0.5)])
    assert_close(zeros.latents, ends[zeros.path_index, zeros.sample_index])
    assert torch.equal(zeros.sigmas, s1[zeros.sample_index])


def test_counts_order_and_row_table_with_boundary_samples():
    t0, keep = boundary_t0()
    P, K = 3, 4
    grid, z0, z1, _, z_t0, v_cfg, fracs, noise = case(3, t0=t0, P=P, K=K)
    pts = aux_points(z_t0, v_cfg, z0, z1, t0, grid, num_sampling_steps=S, fracs=fracs, noise=noise)
    lay = pts.layout
    assert torch.equal(lay.keep, keep)
    rows = [(p, k, b) for p in range(P) for k in range(K) for b in range(B) if p == 0 or keep[b]]
    n_keep = int(keep.sum())
    assert lay.num_rows == len(rows) == K * B + (P - 1) * K * n_keep
    assert lay.rows_per_path == (B, n_keep, n_keep)
    assert pts.latents.shape == pts.targets.shape == (len(rows), C, H, W)
    assert pts.sample_index.dtype == torch.int64
    assert pts.path_index.tolist() == [r[0] for r in rows]
    assert pts.point_index.tolist() == [r[1] for r in rows]
    assert pts.sample_index.tolist() == [r[2] for r in rows]
    table = torch.full((B, P, K), -1, dtype=torch.int32)
    for i, (p, k, b) in enumerate(rows):
        table[b, p, k] = i
    assert lay.row_table.dtype == torch.int32 and torch.equal(lay.row_table, table)
    # Boundary samples still sit on the clamped last grid point, not at σ = 0.
    assert torch.equal(lay.sigma1[~keep], grid.sigmas[-1].expand(int((~keep).sum())))


def test_each_row_matches_a_per_row_float64_recomputation():
    t0, _ = boundary_t0()
    P, K = 3, 2
    grid, z0, z1, _, z_t0, v_cfg, fracs, noise = case(4, t0=t0, P=P, K=K)
    pts = aux_points(z_t0, v_cfg, z0, z1, t0, grid, num_sampling_steps=S, fracs=fracs, noise=noise,
                     kind="simple", noise_scale=0.4)
    s0, s1 = pts.layout.sigma0.double(), pts.layout.sigma1.double()
    for i in range(pts.layout.num_rows):
        p, k, b = int(pts.path_index[i]), int(pts.point_index[i]), int(pts.sample_index[i])
        d = s1[b] - s0[b]
        end = z_t0[b].double() + v_cfg[b].double() * d
        if p > 0:
            end = end + 0.4 * d.abs().sqrt() * noise[p - 1, b].double()
        sp = s1[b] + fracs[p, k, b].double() * (1 - s1[b])
        a = (sp - s1[b]) / (1 - s1[b])
        zp = (1 - a) * end + a * z1[b].double()
        assert_close(pts.sigmas[i:i + 1], sp.view(1))
        assert_close(pts.latents[i], zp)
        assert_close(pts.targets[i], (zp - z0[b].double()) / sp)


def test_timestep_modes():
    grid, z0, z1, t0, z_t0, v_cfg, fracs, _ = case(5, K=6)
    kw = {"num_sampling_steps": S, "fracs": fracs}
    cont = aux_points(z_t0, v_cfg, z0, z1, t0, grid, timestep_mode="continuous", **kw)
    assert torch.equal(cont.timesteps, cont.sigmas * 1000)
    on_grid = aux_points(z_t0, v_cfg, z0, z1, t0, grid, **kw)
    assert torch.equal(on_grid.sigmas, cont.sigmas) and torch.equal(on_grid.latents, cont.latents)
    assert torch.equal(on_grid.timesteps, grid.at(grid.t_of(on_grid.sigmas))[1])
    assert bool(torch.isin(on_grid.timesteps, grid.timesteps).all())
    assert float((on_grid.timesteps - cont.timesteps).abs().max()) < 1000 * 0.004
    with pytest.raises(ValueError, match="continuous"):
        aux_points(z_t0, v_cfg, z0, z1, t0, grid, timestep_mode="nearest", **kw)


def test_sigma_upper_ratio_caps_sigma_prime():
    grid, z0, z1, t0, z_t0, v_cfg, fracs, _ = case(6, t0=torch.linspace(0.08, 0.93, B), K=5)
    r = 1.3
    pts = aux_points(z_t0, v_cfg, z0, z1, t0, grid, num_sampling_steps=S, fracs=fracs, sigma_upper_ratio=r)
    s0, s1 = pts.layout.sigma0, pts.layout.sigma1
    up = torch.clamp(r * s0, max=1.0)
    assert bool((up < 1).any()), "the case must exercise a cap below 1"
    b = pts.sample_index
    assert bool((pts.sigmas >= s1[b]).all() and (pts.sigmas <= up[b]).all())
    top = aux_points(z_t0, v_cfg, z0, z1, t0, grid, num_sampling_steps=S, fracs=torch.ones_like(fracs),
                     sigma_upper_ratio=r)
    assert_close(top.sigmas, up[top.sample_index])
    # α stays (σ' − σ1)/(1 − σ1), so a cap below 1 keeps part of the rollout endpoint.
    assert_close(top.layout.alpha, ((up - s1) / (1 - s1))[top.sample_index])


def test_storage_dtype_and_float32_targets():
    grid, z0, z1, t0, z_t0, v_cfg, fracs, noise = case(7, P=2, dtype=torch.bfloat16)
    kw = {"num_sampling_steps": S, "fracs": fracs, "noise": noise, "kind": "cps"}
    pts = aux_points(z_t0, v_cfg, z0, z1, t0, grid, **kw)
    assert pts.latents.dtype == torch.bfloat16
    assert pts.targets.dtype == pts.sigmas.dtype == pts.timesteps.dtype == torch.float32
    ref = aux_points(z_t0.float(), v_cfg, z0, z1, t0, grid, **kw)
    assert torch.equal(pts.targets, ref.targets)               # targets come from the float32 z'
    assert torch.equal(pts.latents, ref.latents.bfloat16())


def test_noise_is_required_for_stochastic_paths_and_shapes_are_named():
    grid, z0, z1, t0, z_t0, v_cfg, fracs, noise = case(8, P=3)
    with pytest.raises(ValueError, match=r"\(2, 7, 3, 5, 6\)"):
        aux_points(z_t0, v_cfg, z0, z1, t0, grid, num_sampling_steps=S, fracs=fracs)
    with pytest.raises(AssertionError, match=r"\(1, 7, 3, 5, 6\)"):
        aux_points(z_t0, v_cfg, z0, z1, t0, grid, num_sampling_steps=S, fracs=fracs, noise=noise[:1])
    with pytest.raises(AssertionError, match=r"\(3, 4, 6\)"):
        aux_layout(t0, grid, num_sampling_steps=S, fracs=fracs[..., :6])
