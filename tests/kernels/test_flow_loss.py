"""Fused flow-matching loss and its gradient: kernel vs eager twin (autograd) vs `weighted_mse`."""

from __future__ import annotations

import pytest
import torch

from soar_fast.kernels.aux_points import fused_aux_points
from soar_fast.kernels.flow_loss import (
    flow_loss,
    flow_loss_from_latents,
    flow_loss_reference,
    latent_targets_reference,
)
from soar_fast.soar import weighted_mse
from tests.kernels._data import CFG_SCALE, GRID, NOISE_SCALE, latents, layout
from tests.kernels.conftest import SHAPE_REQUIRED, SHAPE_SMALL
from tests.tolerances import assert_close

ROWS = 7  # a non-power-of-two row count


def loss_and_grad(fn, pred, *args):
    """Loss rows and d(Σ_n c_n·loss_n)/d pred with distinct c_n, so a row mix-up in backward shows."""
    pred = pred.detach().clone().requires_grad_(True)
    loss = fn(pred, *args)
    coeff = torch.arange(1, loss.shape[0] + 1, dtype=torch.float32, device=loss.device)
    (grad,) = torch.autograd.grad((loss * coeff).sum(), pred)
    return loss.detach(), grad


@pytest.mark.parametrize("weighted", [True, False], ids=["weighted", "unweighted"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", [SHAPE_REQUIRED[1:], SHAPE_SMALL[1:]], ids=["16x37x37", "4x11x13"])
def test_flow_loss_matches_twin_and_core(shape, dtype, weighted, device, interpreted):
    pred, target = latents((ROWS,) + shape, dtype, device, count=2)
    weight = torch.rand(ROWS, device=device) + 0.5 if weighted else None
    loss, grad = loss_and_grad(flow_loss, pred, target, weight)
    loss_ref, grad_ref = loss_and_grad(flow_loss_reference, pred, target, weight)
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    assert_close(loss, loss_ref, msg="loss: kernel vs eager twin")
    assert_close(grad, grad_ref, interpreted=interpreted, msg="grad: kernel vs eager twin")
    w64 = None if weight is None else weight.double()
    assert_close(loss, weighted_mse(pred.double(), target.double(), w64), msg="loss vs soar_fast.soar.weighted_mse")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_loss_from_latents_equals_loss_on_fused_targets(dtype, device, interpreted):
    """aux kernel -> (latents, targets); the fused loss from latents must equal the loss on those targets."""
    B = SHAPE_REQUIRED[0]
    z, vu, vc, z0, z1 = latents(SHAPE_REQUIRED, dtype, device, count=5)
    noise = latents((1,) + SHAPE_REQUIRED, dtype, device, count=1, seed=3)[0]
    lay = layout(2, 2, B, device)
    lat, tgt = fused_aux_points(z, vu, vc, z0, z1, lay.sigma0, lay.sigma1, lay.sigma_prime, lay.row_table, noise,
                                cfg_scale=CFG_SCALE, kind="flow_sde", noise_scale=NOISE_SCALE,
                                sigma_hat_at_one=GRID.sigma_hat_at_one)
    pred = latents(lat.shape, dtype, device, count=1, seed=9)[0]
    weight = torch.rand(lat.shape[0], device=device) + 0.5
    extra = (lat, z0, lay.sigma_prime, lay.sample_index, weight)
    loss, grad = loss_and_grad(flow_loss_from_latents, pred, *extra)
    loss_ref, grad_ref = loss_and_grad(flow_loss_reference, pred,
                                       latent_targets_reference(lat, z0, lay.sigma_prime, lay.sample_index), weight)
    assert_close(loss, loss_ref, msg="from latents: kernel vs eager twin")
    assert_close(grad, grad_ref, interpreted=interpreted, msg="from latents grad: kernel vs eager twin")
    # float32 latents: the recomputed target is the stored one bit for bit (same 1/σ' rounding);
    # bf16 latents: it is computed from the rounded z', so compare at bf16's tolerance.
    loss_tgt, grad_tgt = loss_and_grad(flow_loss, pred, tgt, weight)
    assert_close(loss, loss_tgt, dtype=dtype, msg="from latents vs on materialised targets")
    assert_close(grad, grad_tgt, dtype=dtype, interpreted=interpreted)


def test_target_gets_minus_the_pred_gradient(device):
    pred, target = latents((ROWS,) + SHAPE_SMALL[1:], torch.float32, device, count=2)
    pred.requires_grad_(True)
    target.requires_grad_(True)
    flow_loss(pred, target).sum().backward()
    assert_close(target.grad, -pred.grad)


def test_no_gradient_for_latents(device):
    pred, lat, z0 = latents((3,) + SHAPE_SMALL[1:], torch.float32, device, count=3)
    lat.requires_grad_(True)
    pred.requires_grad_(True)
    loss = flow_loss_from_latents(pred, lat, z0, torch.full((3,), 0.5, device=device),
                                  torch.arange(3, device=device))
    with pytest.raises(NotImplementedError, match="no gradient w.r.t. latents"):
        loss.sum().backward()


def test_bad_shapes_name_the_argument(device):
    pred, target = latents((ROWS,) + SHAPE_SMALL[1:], torch.float32, device, count=2)
    with pytest.raises(ValueError, match="weight"):
        flow_loss(pred, target, torch.ones(ROWS + 1, device=device))
    with pytest.raises(ValueError, match="target"):
        flow_loss(pred, target[:2])
