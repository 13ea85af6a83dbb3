"""rollout_step and cfg_combine against a float64 re-derivation of docs/objective.md §4's formulas."""

import math

import pytest
import torch

from soar_fast.soar import SigmaGrid, cfg_combine, rollout_step
from tests.tolerances import assert_close

KINDS = ["ode", "simple", "sde", "flow_sde", "cps"]
SHAPE = (5, 3, 6, 7)


def rollout_f64(z, v, s0, s1, kind, eta, eps, sigma_hat_at_one):
    """docs/objective.md §4, written out independently in float64."""
    z, v, eps = z.double(), v.double(), eps.double()
    s0 = s0.double().view(-1, 1, 1, 1)
    s1 = s1.double().view(-1, 1, 1, 1)
    d = s1 - s0
    x0 = z - s0 * v
    if kind == "ode":
        return z + v * d
    if kind == "simple":
        return z + v * d + eta * d.abs().sqrt() * eps
    if kind == "sde":
        return (1 - s1) * x0 + s1 * eps
    if kind == "flow_sde":
        s_hat = torch.where(s0 == 1, torch.full_like(s0, sigma_hat_at_one), s0)
        std = eta * (s0 / (1 - s_hat)).sqrt()
        mean = z * (1 + std**2 / (2 * s0) * d) + v * (1 + std**2 * (1 - s0) / (2 * s0)) * d
        return mean + std * (-d).clamp(min=0).sqrt() * eps
    std = s1 * math.sin(eta * math.pi / 2)
    x1 = z + (1 - s0) * v
    return (1 - s1) * x0 + (s1**2 - std**2).clamp(min=0).sqrt() * x1 + std * eps


def random_case(seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    grid = SigmaGrid()
    z = torch.randn(SHAPE, generator=g).to(dtype)
    v = torch.randn(SHAPE, generator=g).to(dtype)
    eps = torch.randn(SHAPE, generator=g)
    t0 = torch.rand(SHAPE[0], generator=g) * 0.9 + 0.1
    t0[0] = 1.0                                    # σ0 == 1 exercises flow_sde's substitution
    s0, _ = grid.at(t0)
    s1, _ = grid.at(t0 - 0.025)
    return grid, z, v, eps, s0, s1


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_each_kind_matches_float64_derivation(kind, dtype):
    grid, z, v, eps, s0, s1 = random_case(7, dtype)
    assert s0[0] == 1 and bool((s1 < s0).all())
    eta = 0.7
    out = rollout_step(z, v, s0, s1, kind, noise_scale=eta, noise=eps, grid=grid)
    assert out.dtype == dtype and out.shape == SHAPE
    want = rollout_f64(z, v, s0, s1, kind, eta, eps, grid.sigma_hat_at_one)
    assert_close(out, want)
    # Kept in float32, the result sits within float32 rounding of float64 even for bf16 inputs.
    out32 = rollout_step(z, v, s0, s1, kind, noise_scale=eta, noise=eps, grid=grid, out_dtype=torch.float32)
    assert out32.dtype == torch.float32
    assert_close(out32, want)


def test_flow_sde_at_sigma_one_uses_second_grid_value():
    grid, z, v, eps, s0, s1 = random_case(8)
    s0 = torch.ones_like(s0)
    out = rollout_step(z, v, s0, s1, "flow_sde", noise_scale=0.5, noise=eps)  # default grid: N=1000, shift 3
    std = 0.5 * math.sqrt(1 / (1 - grid.sigma_hat_at_one))
    assert 26 < std < 28                                                        # docs/objective.md §4: 27 at σ = 1
    assert_close(out, rollout_f64(z, v, s0, s1, "flow_sde", 0.5, eps, grid.sigma_hat_at_one))
    other = SigmaGrid(shift=1.0)
    out_other = rollout_step(z, v, s0, s1, "flow_sde", noise_scale=0.5, noise=eps, grid=other)
    assert_close(out_other, rollout_f64(z, v, s0, s1, "flow_sde", 0.5, eps, other.sigma_hat_at_one))
    assert not torch.allclose(out, out_other)


@pytest.mark.parametrize("kind", KINDS)
def test_scalar_sigmas_broadcast_like_per_sample_ones(kind):
    _, z, v, eps, _, _ = random_case(9)
    s0, s1 = 0.8137, 0.7341
    full = rollout_step(z, v, torch.full((5,), s0), torch.full((5,), s1), kind, noise=eps)
    assert torch.equal(rollout_step(z, v, s0, s1, kind, noise=eps), full)
    assert torch.equal(rollout_step(z, v, torch.tensor(s0), torch.tensor(s1), kind, noise=eps), full)


@pytest.mark.parametrize("kind", ["simple", "cps"])
def test_zero_noise_scale_reduces_to_ode(kind):
    # simple: the noise term vanishes; cps: (1−σ1)x̂0 + σ1 x̂1 = z + (σ1 − σ0) v.
    _, z, v, eps, s0, s1 = random_case(10)
    ode = rollout_step(z, v, s0, s1, "ode")
    assert_close(rollout_step(z, v, s0, s1, kind, noise_scale=0.0, noise=eps), ode)


def test_missing_noise_is_drawn_and_wrong_noise_shape_is_named():
    _, z, v, _, s0, s1 = random_case(11)
    torch.manual_seed(0)
    a = rollout_step(z, v, s0, s1, "sde")
    torch.manual_seed(0)
    assert torch.equal(a, rollout_step(z, v, s0, s1, "sde", noise=torch.randn(SHAPE)))
    with pytest.raises(AssertionError, match=r"\(5, 3, 6, 7\).*\(5, 3, 6\)"):
        rollout_step(z, v, s0, s1, "sde", noise=torch.randn(5, 3, 6))
    with pytest.raises(AssertionError, match=r"\(4,\)"):
        rollout_step(z, v, s0[:4], s1, "ode")
    with pytest.raises(ValueError, match="flow_sde"):
        rollout_step(z, v, s0, s1, "euler")


def test_cfg_combine_matches_float64():
    g = torch.Generator().manual_seed(12)
    vu, vc = torch.randn(SHAPE, generator=g).bfloat16(), torch.randn(SHAPE, generator=g).bfloat16()
    out = cfg_combine(vu, vc, 4.5)
    assert out.dtype == torch.float32
    assert_close(out, vu.double() + 4.5 * (vc.double() - vu.double()))
    assert torch.equal(cfg_combine(vu, vc, 1.0), vc.float())
    with pytest.raises(AssertionError, match=r"\(4, 3, 6, 7\)"):
        cfg_combine(vu[:4], vc, 2.0)
