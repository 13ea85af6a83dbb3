"""The kernels as torch ops: opcheck, torch.compile without graph breaks, dispatch and import fallbacks."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from soar_fast.kernels import dispatch
from soar_fast.kernels.aux_points import _aux_points_kernel, fused_aux_points
from soar_fast.kernels.cfg_rollout import _cfg_rollout_kernel, cfg_rollout
from soar_fast.kernels.flow_loss import _sq_err_partial_kernel, flow_loss, flow_loss_from_latents
from tests.kernels._data import CFG_SCALE, GRID, NOISE_SCALE, latents, layout
from tests.tolerances import assert_close

OPS = torch.ops.soar_fast
OPTS = {"cfg_scale": CFG_SCALE, "noise_scale": NOISE_SCALE, "sigma_hat_at_one": GRID.sigma_hat_at_one}
SHAPE = (2, 3, 5, 7)  # opcheck runs each op several times: keep it tiny


def test_kernels_really_run_here(device):
    """Without this, a `kernels` import that beat conftest.py would compare eager twin with eager twin."""
    if not dispatch.HAS_TRITON:
        pytest.skip("triton not installed: eager twins only")
    x = torch.empty(1, device=device)
    for kernel in (_cfg_rollout_kernel, _aux_points_kernel, _sq_err_partial_kernel):
        assert dispatch.use_triton(x, kernel), (
            "kernels were defined without TRITON_INTERPRET=1 although there is no GPU: something imported "
            "`kernels` before tests/kernels/conftest.py; export TRITON_INTERPRET=1 or set it in tests/conftest.py")


def aux_inputs(device):
    z, vu, vc, z0, z1 = latents(SHAPE, torch.float32, device, count=5)
    noise = latents((1,) + SHAPE, torch.float32, device, count=1, seed=3)[0]
    lay = layout(2, 2, SHAPE[0], device)
    return (z, vu, vc, z0, z1, lay.sigma0, lay.sigma1, lay.sigma_prime, lay.row_table, noise), lay


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_opcheck(dtype, device):
    z, vu, vc, noise = latents(SHAPE, dtype, device, count=4)
    s = torch.tensor([0.9, 0.4], device=device)
    for philox in (False, True):
        torch.library.opcheck(OPS.cfg_rollout, (z, vu, vc, s, s * 0.9, None if philox else noise, CFG_SCALE,
                                                "flow_sde", NOISE_SCALE, 5, 0, philox, GRID.sigma_hat_at_one, True))
    args, _ = aux_inputs(device)
    for with_targets in (True, False):
        torch.library.opcheck(OPS.aux_points, tuple(a.to(dtype) if a.is_floating_point() and a.dim() > 1 else a
                                                    for a in args) + (CFG_SCALE, "cps", NOISE_SCALE, 0.9, None,
                                                                      with_targets))
    pred, target = (t.requires_grad_(True) for t in latents(SHAPE, dtype, device, count=2))
    weight = torch.rand(SHAPE[0], device=device)
    torch.library.opcheck(OPS.flow_loss, (pred, target, weight))
    torch.library.opcheck(OPS.flow_loss, (pred, target, None))
    grad = torch.rand(SHAPE[0], device=device)
    torch.library.opcheck(OPS.flow_loss_backward, (grad, pred.detach(), target.detach(), weight))
    lat, z0 = latents(SHAPE, dtype, device, count=2, seed=5)
    sp, idx = torch.tensor([0.5, 0.25], device=device), torch.tensor([1, 0], device=device)
    torch.library.opcheck(OPS.flow_loss_latents, (pred, lat, z0, sp, idx, weight))
    torch.library.opcheck(OPS.flow_loss_latents_backward, (grad, pred.detach(), lat, z0, sp, idx, None))


def test_compiled_step_has_no_graph_breaks(device):
    """CFG rollout -> aux points -> fused loss -> backward, as one fullgraph torch.compile region."""
    args, lay = aux_inputs(device)
    z, vu, vc, z0, z1, s0, s1, sp, table, noise = args
    scale = torch.nn.Parameter(torch.tensor(0.7, device=device))

    def step(scale):
        z_next = cfg_rollout(z, vu, vc, s0, s1, kind="sde", seed=11, offset=0, **OPTS)
        lat, tgt = fused_aux_points(z_next, vu, vc, z0, z1, s0, s1, sp, table, noise, kind="cps", **OPTS)
        lat_only, _ = fused_aux_points(z_next, vu, vc, z0, z1, s0, s1, sp, table, noise, kind="cps",
                                       with_targets=False, **OPTS)
        pred = lat * scale
        loss = flow_loss_from_latents(pred, lat_only, z0, sp, lay.sample_index) + flow_loss(pred, tgt)
        return loss.sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss = compiled(scale)
    (grad,) = torch.autograd.grad(loss, scale)
    loss_eager = step(scale)
    (grad_eager,) = torch.autograd.grad(loss_eager, scale)
    assert_close(loss.detach(), loss_eager.detach())
    assert_close(grad, grad_eager)


def test_kind_names_are_checked():
    with pytest.raises(ValueError, match="'euler' is not one of"):
        dispatch.kind_code("euler")


def test_import_without_triton_falls_back_to_eager_twins():
    """Platforms without triton wheels: importing `kernels` works and every op runs its eager twin."""
    code = """
import sys, torch
sys.modules["triton"] = None  # makes `import triton` raise ImportError
from soar_fast.kernels import dispatch
from soar_fast.kernels.cfg_rollout import cfg_rollout
from soar_fast.kernels.aux_points import fused_aux_points
from soar_fast.kernels.flow_loss import flow_loss
assert not dispatch.HAS_TRITON
z = torch.randn(2, 3, 4, 4)
s = torch.tensor([0.9, 0.5])
out = cfg_rollout(z, z, z, s, s * 0.5, cfg_scale=2.0, kind="sde", noise_scale=0.5, seed=1, sigma_hat_at_one=0.99)
p = z.clone().requires_grad_(True)
flow_loss(p, z * 2).sum().backward()
assert torch.isfinite(out).all() and p.grad is not None
print("ok")
"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    res = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True,
                         timeout=240, check=False)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-3000:]
