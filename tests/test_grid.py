"""SigmaGrid: diffusers' tables bit for bit, and the reference's float32 index rules at their edges."""

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from soar_fast.soar import SigmaGrid


def f32_after(x: float, direction: float) -> float:
    return float(np.nextafter(np.float32(x), np.float32(direction)))


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("n", [1000, 997])
def test_tables_equal_diffusers(shift, n):
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=n, shift=shift)
    grid = SigmaGrid(num_train_timesteps=n, shift=shift)
    assert grid.sigmas.dtype == torch.float32 and grid.timesteps.dtype == torch.float32
    assert grid.sigmas.shape == (n,)
    assert torch.equal(grid.sigmas, sched.sigmas)
    assert torch.equal(grid.timesteps, sched.timesteps)
    assert grid.sigmas[0] == 1 and grid.sigmas[-1] > 0
    assert bool((grid.sigmas[1:] < grid.sigmas[:-1]).all())
    assert grid.sigma_hat_at_one == float(sched.sigmas[1])


def test_from_scheduler_config():
    config = dict(FlowMatchEulerDiscreteScheduler(shift=3.0).config)
    grid = SigmaGrid.from_scheduler_config(config)
    assert torch.equal(grid.sigmas, SigmaGrid(shift=3.0).sigmas)
    # diffusers' own default shift is 1.0; a config without the key must follow it.
    assert torch.equal(SigmaGrid.from_scheduler_config({}).sigmas, SigmaGrid(shift=1.0).sigmas)
    with pytest.raises(ValueError, match="use_dynamic_shifting"):
        SigmaGrid.from_scheduler_config({**config, "use_dynamic_shifting": True})


def test_at_matches_float32_rule_on_random_t():
    grid = SigmaGrid()
    t = torch.rand(1237, generator=torch.Generator().manual_seed(3))
    k = np.clip(np.floor((np.float32(1) - t.numpy()) * np.float32(1000)), 0, 999).astype(np.int64)
    sigma, timestep = grid.at(t)
    assert torch.equal(sigma, grid.sigmas[torch.from_numpy(k)])
    assert torch.equal(timestep, grid.timesteps[torch.from_numpy(k)])
    assert sigma.dtype == torch.float32 and timestep.shape == t.shape


def test_at_edges():
    grid = SigmaGrid()
    # t values whose (1 − t)·N is an exact float32 integer, and their float32 neighbours.
    # Just above 0.25, 1 − t rounds back to 0.75 in float32: the rule is float32, not exact arithmetic.
    t = torch.tensor([1.0, 0.0, 0.5, f32_after(0.5, 1), f32_after(0.5, 0), 0.75, f32_after(0.75, 1),
                      f32_after(0.25, 1), f32_after(1.0, 0), -0.3, 1.7])
    want = torch.tensor([0, 999, 500, 499, 500, 250, 249, 750, 0, 999, 0])
    sigma, timestep = grid.at(t)
    assert torch.equal(sigma, grid.sigmas[want]), (sigma, grid.sigmas[want])
    assert torch.equal(timestep, grid.timesteps[want])
    assert torch.equal(grid.index_of_t(t), want)


def test_t_of_edges():
    grid = SigmaGrid()
    s = grid.sigmas
    i = torch.tensor([0, 1, 7, 500, 998, 999])
    on_grid = s[i]
    above = torch.tensor([f32_after(float(x), 2) for x in on_grid])
    below = torch.tensor([f32_after(float(x), -1) for x in on_grid])
    j_on, j_above, j_below = i, i, (i + 1).clamp(max=999)
    for sig, j in ((on_grid, j_on), (above, j_above), (below, j_below)):
        assert torch.equal(grid.t_of(sig), 1.0 - j.to(torch.float32) / 1000), (sig, j)
    outside = torch.tensor([1.5, 0.0, 1e-4])
    assert torch.equal(grid.t_of(outside), 1.0 - torch.tensor([0.0, 999.0, 999.0]) / 1000)


def test_round_trip_reproduces_reference_float32_quirk():
    # docs/objective.md §2: σ_j → t → index gives j − 1 for exactly 165 of the 1000 grid indices.
    grid = SigmaGrid()
    j = torch.arange(1000)
    back = grid.index_of_t(grid.t_of(grid.sigmas))
    off = back != j
    assert int(off.sum()) == 165
    assert torch.equal(back[off], j[off] - 1)


def test_round_trip_of_off_grid_sigma_stays_within_one_grid_step():
    grid = SigmaGrid()
    sigma = torch.empty(2003).uniform_(0.01, 1.0, generator=torch.Generator().manual_seed(5))
    k = grid.index_of_t(grid.t_of(sigma))
    j = torch.searchsorted(-grid.sigmas, -sigma)
    assert bool(((k == j) | (k == j - 1)).all())


def test_runs_on_the_input_device_without_host_sync():
    # The meta device has no data: any .item() or host copy of the input would raise.
    grid = SigmaGrid()
    t = torch.empty(13, device="meta")
    sigma, timestep = grid.at(t)
    assert sigma.device.type == "meta" and timestep.shape == (13,)
    assert grid.t_of(sigma).device.type == "meta"
    moved = grid.to("meta")
    assert moved.sigmas.device.type == "meta" and grid.sigmas.device.type == "cpu"
