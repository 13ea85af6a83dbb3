"""accel.grad_checkpointing: full and selective keep outputs and gradients; no-grad pays nothing."""

from __future__ import annotations

import copy

import pytest
import torch

from soar_fast.accel.checkpointing import apply_checkpointing, reference_checkpointing
from tests.test_accel_attention import inputs, tiny_model
from tests.tolerances import STEP_GRAD, assert_close


def loss_and_grads(model):
    model.zero_grad(set_to_none=True)
    out = model(**inputs())[0]
    loss = (out.double() ** 2).mean()
    loss.backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("choice", ["full", "selective", "reference"])
def test_outputs_and_grads_preserved(choice):
    base = tiny_model()
    ckpt = copy.deepcopy(base)
    if choice == "reference":
        reference_checkpointing(ckpt)
    else:
        assert apply_checkpointing(ckpt, choice).startswith(choice)
    out0, g0 = loss_and_grads(base)
    out1, g1 = loss_and_grads(ckpt)
    assert_close(out1, out0)
    assert g0.keys() == g1.keys()
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=STEP_GRAD[0], atol=STEP_GRAD[1], msg=name)
    # Parameter names (checkpoints) are unchanged.
    assert [n for n, _ in ckpt.named_parameters()] == [n for n, _ in base.named_parameters()]


def test_no_grad_forward_and_double_apply():
    model = tiny_model()
    apply_checkpointing(model, "full")
    with torch.no_grad():
        assert model(**inputs())[0].shape == (2, 4, 8, 8)
    with pytest.raises(RuntimeError, match="applied twice"):
        apply_checkpointing(model, "full")
    assert apply_checkpointing(tiny_model(), "none") == "none"
    with pytest.raises(ValueError, match="accel.grad_checkpointing"):
        apply_checkpointing(tiny_model(), "some")
