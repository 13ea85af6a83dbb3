"""Fused CFG + rollout step: kernel vs eager twin vs the objective core, and its Philox noise."""

from __future__ import annotations

import pytest
import torch

from soar_fast.kernels.cfg_rollout import _cfg_rollout_kernel, cfg_rollout, cfg_rollout_reference
from soar_fast.kernels.dispatch import use_triton
from soar_fast.soar import cfg_combine, rollout_step
from tests.kernels._data import CFG_SCALE, GRID, KINDS, NOISE_SCALE, latents, step_sigmas
from tests.kernels.conftest import SHAPE_REQUIRED, SHAPE_SMALL
from tests.tolerances import NOISE_Z_BOUND, assert_close

OPTS = {"cfg_scale": CFG_SCALE, "noise_scale": NOISE_SCALE, "sigma_hat_at_one": GRID.sigma_hat_at_one}


def require_kernel(device):
    if not use_triton(torch.empty(0, device=device), _cfg_rollout_kernel):
        pytest.skip("the Triton kernel does not run here (no triton, or TRITON_INTERPRET != 1 on CPU)")


@pytest.mark.parametrize("shape", [SHAPE_REQUIRED, SHAPE_SMALL], ids=["3x16x37x37", "3x4x11x13"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("kind", KINDS)
def test_matches_twin_and_core(kind, dtype, shape, device, interpreted):
    z, vu, vc, noise = latents(shape, dtype, device, count=4)
    s0, s1 = (s.to(device) for s in step_sigmas(shape[0]))
    out, v_cfg = cfg_rollout(z, vu, vc, s0, s1, kind=kind, noise=noise, return_v_cfg=True, **OPTS)
    ref, v_ref = cfg_rollout_reference(z, vu, vc, s0, s1, kind=kind, noise=noise, return_v_cfg=True, **OPTS)
    assert out.dtype == dtype and v_cfg.dtype == torch.float32
    assert_close(out, ref, interpreted=interpreted, msg=f"{kind}: kernel vs eager twin")
    assert_close(v_cfg, v_ref, msg="v_cfg: kernel vs eager twin")

    v64 = cfg_combine(vu.double(), vc.double(), CFG_SCALE)
    core = rollout_step(z.double(), v64, s0, s1, kind, noise_scale=NOISE_SCALE, noise=noise.double(), grid=GRID,
                        out_dtype=torch.float64)
    assert_close(out, core, interpreted=interpreted, msg=f"{kind}: kernel vs soar_fast.soar.rollout_step")
    assert_close(v_cfg, v64, msg="v_cfg vs soar_fast.soar.cfg_combine")


def test_ode_needs_no_noise_and_returns_only_z(device):
    z, vu, vc = latents(SHAPE_SMALL, torch.float32, device, count=3)
    s0, s1 = (s.to(device) for s in step_sigmas(3))
    out = cfg_rollout(z, vu, vc, s0, s1, kind="ode", **OPTS)
    assert_close(out, z + cfg_combine(vu, vc, CFG_SCALE) * (s1 - s0).view(-1, 1, 1, 1))


def test_bad_arguments_name_the_problem(device):
    z, vu, vc = latents(SHAPE_SMALL, torch.float32, device, count=3)
    s0, s1 = (s.to(device) for s in step_sigmas(3))
    with pytest.raises(ValueError, match="rollout kind 'euler'"):
        cfg_rollout(z, vu, vc, s0, s1, kind="euler", **OPTS)
    with pytest.raises(ValueError, match="needs `noise` or an int `seed`"):
        cfg_rollout(z, vu, vc, s0, s1, kind="sde", **OPTS)
    with pytest.raises(ValueError, match=r"sigma0 \(2,\)"):
        cfg_rollout(z, vu, vc, s0[:2], s1, kind="ode", **OPTS)


# ---- in-kernel Philox noise -------------------------------------------------------------------------

def draw_noise(shape, seed, offset, device, *, eager=False):
    """ε itself: `sde` with σ1 = 1 returns (1 − 1)·x̂0 + 1·ε = ε exactly."""
    zeros = torch.zeros(shape, device=device)
    s0, s1 = torch.full((shape[0],), 0.5, device=device), torch.ones(shape[0], device=device)
    fn = cfg_rollout_reference if eager else cfg_rollout
    return fn(zeros, zeros, zeros, s0, s1, kind="sde", seed=seed, offset=offset, **OPTS)


def test_philox_is_deterministic_per_seed_and_offset(device):
    require_kernel(device)
    a = draw_noise(SHAPE_SMALL, 7, 0, device)
    assert torch.equal(a, draw_noise(SHAPE_SMALL, 7, 0, device))
    assert not torch.equal(a, draw_noise(SHAPE_SMALL, 8, 0, device))
    # Element i uses counter offset + i: shifting offset by one sample's size shifts the stream by a sample.
    chw = a[0].numel()
    shifted = draw_noise((2,) + SHAPE_SMALL[1:], 7, chw, device)
    assert torch.equal(shifted[0], a[1]) and torch.equal(shifted[1], a[2])
    # Seeds past 2**32 use the high key word too.
    assert not torch.equal(draw_noise(SHAPE_SMALL, 7 + 2**32, 0, device), a)


@pytest.mark.parametrize("eager", [False, True], ids=["kernel", "eager-twin"])
def test_philox_noise_statistics(eager, device):
    if not eager:
        require_kernel(device)
    shape = (2, 16, 64, 64)  # 131072 draws per stream
    x = draw_noise(shape, 1234, 0, device, eager=eager).double().flatten()
    y = draw_noise(shape, 1235, 0, device, eager=eager).double().flatten()
    n = x.numel()
    se = NOISE_Z_BOUND / n**0.5
    assert abs(x.mean().item()) < se, "mean"
    assert abs(x.std().item() - 1.0) < NOISE_Z_BOUND * (1 / (2 * n)) ** 0.5, "std"
    assert abs((x**4).mean().item() - 3.0) < NOISE_Z_BOUND * (96 / n) ** 0.5, "kurtosis (normal shape)"

    def corr(a, b):
        return torch.corrcoef(torch.stack([a, b]))[0, 1].item()

    assert abs(corr(x[1:], x[:-1])) < se, "neighbouring counters are correlated"
    assert abs(corr(x, y)) < se, "two seeds are correlated"
    half = n // 2
    assert abs(corr(x[:half], x[half:])) < NOISE_Z_BOUND / half**0.5, "two samples are correlated"


@pytest.mark.parametrize("kind", ["simple", "sde", "flow_sde", "cps"])
def test_philox_noise_enters_every_kind_like_explicit_noise(kind, device, interpreted):
    z, vu, vc = latents(SHAPE_SMALL, torch.float32, device, count=3)
    s0, s1 = (s.to(device) for s in step_sigmas(3))
    eps = draw_noise(SHAPE_SMALL, 99, 5, device)
    out = cfg_rollout(z, vu, vc, s0, s1, kind=kind, seed=99, offset=5, **OPTS)
    ref = cfg_rollout_reference(z, vu, vc, s0, s1, kind=kind, noise=eps, **OPTS)
    assert_close(out, ref, interpreted=interpreted)
