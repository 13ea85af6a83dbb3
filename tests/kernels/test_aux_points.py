"""Fused aux points: kernel vs eager twin vs `soar_fast.soar.aux_points`, in the AuxPoints row order."""

from __future__ import annotations

import pytest
import torch

from soar_fast.kernels.aux_points import fused_aux_points, fused_aux_points_reference
from soar_fast.soar import aux_points, cfg_combine
from tests.kernels._data import (
    CFG_SCALE,
    GRID,
    KINDS,
    NOISE_SCALE,
    SAMPLING_STEPS,
    fracs,
    latents,
    layout,
    t0_for,
)
from tests.kernels.conftest import SHAPE_REQUIRED, SHAPE_SMALL
from tests.tolerances import assert_close

OPTS = {"cfg_scale": CFG_SCALE, "noise_scale": NOISE_SCALE, "sigma_hat_at_one": GRID.sigma_hat_at_one}


def run_all(shape, P, K, kind, dtype, device, out_dtype=None):
    """(kernel, twin, core) outputs for one configuration; the core gets float64 inputs."""
    B = shape[0]
    z, vu, vc, z0, z1 = latents(shape, dtype, device, count=5)
    noise = latents((P - 1,) + shape, dtype, device, count=1, seed=3)[0] if P > 1 else None
    lay = layout(P, K, B, device)
    args = (z, vu, vc, z0, z1, lay.sigma0, lay.sigma1, lay.sigma_prime, lay.row_table, noise)
    kernel = fused_aux_points(*args, kind=kind, out_dtype=out_dtype, **OPTS)
    twin = fused_aux_points_reference(*args, kind=kind, out_dtype=out_dtype, **OPTS)
    core = aux_points(z.double(), cfg_combine(vu.double(), vc.double(), CFG_SCALE), z0.double(), z1.double(),
                      t0_for(B).to(device), GRID.to(device), num_sampling_steps=SAMPLING_STEPS,
                      fracs=fracs(P, K, B).to(device), noise=None if noise is None else noise.double(),
                      kind=kind, noise_scale=NOISE_SCALE)
    assert kernel[0].shape == (lay.num_rows,) + shape[1:]
    return kernel, twin, core


def check(kernel, twin, core, interpreted, what):
    (lat, tgt), (lat_ref, tgt_ref) = kernel, twin
    assert_close(lat, lat_ref, interpreted=interpreted, msg=f"{what}: latents, kernel vs eager twin")
    assert_close(tgt, tgt_ref, interpreted=interpreted, msg=f"{what}: targets, kernel vs eager twin")
    assert_close(lat, core.latents, interpreted=interpreted, msg=f"{what}: latents vs soar_fast.soar.aux_points")
    assert_close(tgt, core.targets, interpreted=interpreted, msg=f"{what}: targets vs soar_fast.soar.aux_points")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("P,K", [(1, 1), (1, 6), (3, 1), (3, 6)])
def test_required_shape(P, K, dtype, device, interpreted):
    kernel, twin, core = run_all(SHAPE_REQUIRED, P, K, "flow_sde", dtype, device)
    # The boundary sample (t1 = 0) is in path 0 only.
    assert kernel[0].shape[0] == K * 3 + (P - 1) * K * 2
    assert kernel[0].dtype == dtype and kernel[1].dtype == torch.float32
    check(kernel, twin, core, interpreted, f"P={P} K={K} {dtype}")


@pytest.mark.parametrize("kind", KINDS)
def test_every_stochastic_kind(kind, device, interpreted):
    kernel, twin, core = run_all(SHAPE_SMALL, 3, 2, kind, torch.float32, device)
    check(kernel, twin, core, interpreted, kind)


def test_out_dtype_sets_both_outputs(device, interpreted):
    kernel, twin, core = run_all(SHAPE_SMALL, 2, 2, "sde", torch.float32, device, out_dtype=torch.bfloat16)
    assert kernel[0].dtype == kernel[1].dtype == torch.bfloat16
    check(kernel, twin, core, interpreted, "out_dtype=bf16")


def test_on_ray_rollout_targets_the_straight_line(device):
    """A perfect model (v = z1 − z0 at z_t0 on the ray) puts every ODE point on the ray: v_corr = z1 − z0."""
    B = SHAPE_SMALL[0]
    z0, z1 = latents(SHAPE_SMALL, torch.float32, device, count=2)
    lay = layout(1, 4, B, device)
    s0 = lay.sigma0.view(-1, 1, 1, 1)
    z_t0, v = (1 - s0) * z0 + s0 * z1, z1 - z0
    _, targets = fused_aux_points(z_t0, v, v, z0, z1, lay.sigma0, lay.sigma1, lay.sigma_prime, lay.row_table, None,
                                  kind="ode", **OPTS)
    assert_close(targets, v[lay.sample_index])


def test_bad_shapes_name_the_argument(device):
    z, vu, vc, z0, z1 = latents(SHAPE_SMALL, torch.float32, device, count=5)
    lay = layout(2, 2, SHAPE_SMALL[0], device)
    base = (z, vu, vc, z0, z1, lay.sigma0, lay.sigma1, lay.sigma_prime, lay.row_table)
    with pytest.raises(ValueError, match="path_noise None must be"):
        fused_aux_points(*base, None, kind="sde", **OPTS)
    with pytest.raises(ValueError, match="z1"):
        fused_aux_points(*base[:4], z1[:2], *base[5:], None, kind="sde", **OPTS)


@pytest.mark.parametrize("P", [1, 3])
def test_without_targets_writes_the_same_latents(P, device, interpreted):
    # The fast step's loss recomputes targets from the latents (flow_loss_from_latents); the latents
    # must be the ones the full kernel writes, and no target tensor is returned.
    B = SHAPE_SMALL[0]
    z, vu, vc, z0, z1 = latents(SHAPE_SMALL, torch.float32, device, count=5)
    noise = latents((P - 1,) + SHAPE_SMALL, torch.float32, device, count=1, seed=3)[0] if P > 1 else None
    lay = layout(P, 4, B, device)
    args = (z, vu, vc, z0, z1, lay.sigma0, lay.sigma1, lay.sigma_prime, lay.row_table, noise)
    full = fused_aux_points(*args, kind="flow_sde", **OPTS)
    for fn in (fused_aux_points, fused_aux_points_reference):
        lat, tgt = fn(*args, kind="flow_sde", with_targets=False, **OPTS)
        assert tgt is None
        torch.testing.assert_close(lat, full[0], rtol=0, atol=0, msg=fn.__name__)
