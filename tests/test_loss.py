"""weighted_mse and the SOAR normalisation against hand computations."""

import pytest
import torch

from soar_fast.soar import soar_loss, weighted_mse
from tests.tolerances import assert_close


def test_weighted_mse_per_sample_mean_times_weight():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(5, 3, 7, 6, generator=g), torch.randn(5, 3, 7, 6, generator=g)
    w = torch.rand(5, generator=g) + 0.5
    out = weighted_mse(pred, target, w)
    assert out.shape == (5,) and out.dtype == torch.float32
    p, t = pred.double(), target.double()
    want = torch.stack([w[b].double() * ((p[b] - t[b]) ** 2).mean() for b in range(5)])
    assert_close(out, want)
    assert_close(weighted_mse(pred, target), want / w.double())


def test_weighted_mse_upcasts_and_keeps_the_graph():
    g = torch.Generator().manual_seed(1)
    pred = torch.randn(3, 5, 6, generator=g).bfloat16().requires_grad_()
    target = torch.randn(3, 5, 6, generator=g)
    out = weighted_mse(pred, target)
    assert out.dtype == torch.float32
    assert_close(out, ((pred.detach().double() - target.double()) ** 2).mean(dim=(1, 2)), dtype=torch.float32)
    out.sum().backward()
    assert pred.grad is not None and pred.grad.dtype == torch.bfloat16


def test_weighted_mse_names_bad_shapes():
    with pytest.raises(AssertionError, match=r"\(3, 5\).*\(3, 4\)"):
        weighted_mse(torch.rand(3, 5), torch.rand(3, 4))
    with pytest.raises(AssertionError, match=r"\(2,\)"):
        weighted_mse(torch.rand(3, 5), torch.rand(3, 5), torch.rand(2))


MAIN = [0.8125, 1.25, 0.375]                       # N_main = 3
AUX = [0.5, 2.0, 1.5, 0.25, 3.0, 1.0, 0.75]      # N_aux = 7


@pytest.mark.parametrize("lam, want", [
    (0.0, (0.8125 + 1.25 + 0.375) / 3),                          # 2.4375 / 3
    (0.5, (2.4375 + 0.5 * 9.0) / (3 + 0.5 * 7)),                 # 6.9375 / 6.5
    (1.0, (2.4375 + 9.0) / (3 + 7)),                             # 11.4375 / 10
])
def test_soar_loss_normalisation_by_hand(lam, want):
    main = torch.tensor(MAIN, requires_grad=True)
    aux = torch.tensor(AUX, requires_grad=True)
    loss = soar_loss(main.sum(), aux.sum(), 3, 7, lam)
    assert_close(loss, torch.tensor(want, dtype=torch.float64))
    loss.backward()
    denom = 3 + lam * 7
    assert_close(main.grad, torch.full((3,), 1 / denom, dtype=torch.float64))
    assert_close(aux.grad, torch.full((7,), lam / denom, dtype=torch.float64))


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0])
def test_global_tensor_counts_equal_int_counts(lam):
    # A distributed caller passes all-reduced counts as device tensors; no host round trip is needed.
    main_sum, aux_sum = torch.tensor(2.4375), torch.tensor(9.0)
    as_ints = soar_loss(main_sum, aux_sum, 24, 56, lam)
    as_tensors = soar_loss(main_sum, aux_sum, torch.tensor(24), torch.tensor(56), lam)
    assert as_tensors.shape == () and torch.equal(as_ints, as_tensors)
    # Global counts exceed the local ones: this rank's share of the global mean.
    assert_close(as_ints, torch.tensor((2.4375 + lam * 9.0) / (24 + lam * 56), dtype=torch.float64))


def test_soar_loss_floors_the_denominator_at_one():
    s = torch.tensor(0.37)
    assert torch.equal(soar_loss(s, torch.tensor(5.0), 0, 0, 1.0), s + 5.0)
    assert torch.equal(soar_loss(s, torch.tensor(5.0), torch.tensor(0), torch.tensor(3), 0.0), s)
