"""reference_loss against a hand-written float64 SOAR step with a tiny linear model; call order; draws."""

import pytest
import torch

from soar_fast.soar import SigmaGrid, SoarDraws, draw, loss_weight, reference_loss
from tests.tolerances import STEP_GRAD, STEP_LOSS_RTOL

B, C, H, W, L, D, PD = 5, 3, 4, 6, 7, 5, 6
K, P, S, CFG = 3, 2, 40, 4.5


class Linear(torch.nn.Module):
    """v = W·x (over channels) + (τ/1000)·u + mean_L(e)·Me + p·Mp: every input moves the output."""

    def __init__(self, seed):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = torch.nn.Parameter(torch.randn(C, C, generator=g) * 0.5)
        self.u = torch.nn.Parameter(torch.randn(C, generator=g))
        self.me = torch.nn.Parameter(torch.randn(D, C, generator=g) * 0.3)
        self.mp = torch.nn.Parameter(torch.randn(PD, C, generator=g) * 0.3)

    def forward(self, x, t, e, p, params=None):
        w, u, me, mp = params or (self.w, self.u, self.me, self.mp)
        x = x.to(w.dtype)
        cond = (t.to(w.dtype) / 1000)[:, None] * u + e.to(w.dtype).mean(1) @ me + p.to(w.dtype) @ mp
        return torch.einsum("oc,nchw->nohw", w, x) + cond[:, :, None, None]


def inputs(seed):
    g = torch.Generator().manual_seed(seed)
    z0 = torch.randn(B, C, H, W, generator=g)
    emb, pooled = torch.randn(B, L, D, generator=g), torch.randn(B, PD, generator=g)
    null_emb, null_pooled = torch.randn(1, L, D, generator=g), torch.randn(1, PD, generator=g)
    d = draw((B, C, H, W), generator=g, num_points=K, num_paths=P)
    # One sample at the clean boundary (t1 <= 0: left out of the stochastic path), none at σ0 == 1.
    t0 = torch.tensor([0.02, 0.55, 0.83, 0.31, 0.97])
    return z0, emb, pooled, null_emb, null_pooled, SoarDraws(t0, d.z1, d.fracs, d.path_noise)


def hand_step(model, z0, emb, pooled, null_emb, null_pooled, draws, lam, scheme, grid):
    """docs/objective.md §3 written out per sample and per point in float64 (continuous timesteps, `sde` paths)."""
    params = [q.detach().double().requires_grad_() for q in (model.w, model.u, model.me, model.mp)]

    def f(x, tau, e, p):
        return model(x[None], tau.view(1), e[None], p[None], params)[0]

    z0, z1 = z0.double(), draws.z1.double()
    main_sum, aux_sum, n_aux = 0.0, 0.0, 0
    for b in range(B):
        s0, tau0 = (x.double() for x in grid.at(draws.t0[b]))
        t1 = torch.clamp(draws.t0[b] - 1 / S, min=0)
        s1 = grid.at(t1)[0].double()
        z_t0 = (1 - s0) * z0[b] + s0 * z1[b]
        err = (f(z_t0, tau0, emb[b], pooled[b]) - (z1[b] - z0[b])) ** 2
        main_sum = main_sum + loss_weight(s0, scheme).double() * err.mean()
        with torch.no_grad():
            v_u = f(z_t0, tau0, null_emb[0], null_pooled[0])
            v_cfg = v_u + CFG * (f(z_t0, tau0, emb[b], pooled[b]) - v_u)
        for p in range(P):
            if p > 0 and t1 <= 0:
                continue
            if p == 0:
                end = z_t0 + v_cfg * (s1 - s0)
            else:
                end = (1 - s1) * (z_t0 - s0 * v_cfg) + s1 * draws.path_noise[p - 1, b].double()
            for k in range(K):
                sp = s1 + draws.fracs[p, k, b].double() * (1 - s1)
                a = (sp - s1) / (1 - s1)
                zp = (1 - a) * end + a * z1[b]
                target = (zp - z0[b]) / sp
                err = (f(zp, 1000 * sp, emb[b], pooled[b]) - target) ** 2
                aux_sum = aux_sum + loss_weight(sp, scheme).double() * err.mean()
                n_aux += 1
    loss = (main_sum + lam * aux_sum) / (B + lam * n_aux)
    grads = torch.autograd.grad(loss, params)
    return loss.detach(), main_sum.detach() / B, aux_sum.detach() / n_aux, n_aux, grads


@pytest.mark.parametrize("lam, scheme", [(1.0, "logit_normal"), (0.5, "cosmap"), (0.0, "sigma_sqrt")])
def test_reference_loss_equals_hand_written_step(lam, scheme):
    grid, model = SigmaGrid(), Linear(0)
    z0, emb, pooled, null_emb, null_pooled, draws = inputs(1)
    parts = reference_loss(model, z0, emb, pooled, null_emb, null_pooled, grid, draws, cfg_scale=CFG,
                           num_sampling_steps=S, lambda_aux=lam, weighting_scheme=scheme, kind="sde",
                           noise_scale=0.5, timestep_mode="continuous")
    loss, main_mean, aux_mean, n_aux, grads = hand_step(model, z0, emb, pooled, null_emb, null_pooled, draws,
                                                        lam, scheme, grid)
    assert parts.n_main == B and parts.n_aux == n_aux == K * B + (P - 1) * K * (B - 1)
    assert parts.loss.shape == () and parts.loss.requires_grad and not parts.loss_main.requires_grad
    for got, want in ((parts.loss, loss), (parts.loss_main, main_mean), (parts.loss_aux, aux_mean)):
        torch.testing.assert_close(got.double(), want, rtol=STEP_LOSS_RTOL, atol=0)
    parts.loss.backward()
    for q, want in zip((model.w, model.u, model.me, model.mp), grads, strict=True):
        torch.testing.assert_close(q.grad.double(), want, rtol=STEP_GRAD[0], atol=STEP_GRAD[1])


class Recorder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.inner, self.calls = Linear(2), []

    def forward(self, x, t, e, p):
        self.calls.append({"n": x.shape[0], "dtype": x.dtype, "grad": torch.is_grad_enabled(),
                           "t": t.clone(), "e": e.clone()})
        return self.inner(x, t, e, p)


@pytest.mark.parametrize("rollout_grad", [True, False])
def test_call_order_cfg_batch_and_grid_timesteps(rollout_grad):
    grid, model = SigmaGrid(), Recorder()
    z0, emb, pooled, null_emb, null_pooled, draws = inputs(3)
    parts = reference_loss(model, z0, emb, pooled, null_emb, null_pooled, grid, draws, kind="flow_sde",
                           num_sampling_steps=S, rollout_grad=rollout_grad, model_dtype=torch.bfloat16)
    sizes = [c["n"] for c in model.calls]
    assert sizes == [B, 2 * B] + [B] * K + [B - 1] * K
    assert [c["grad"] for c in model.calls] == [True, rollout_grad] + [True] * (2 * K)
    assert all(c["dtype"] == torch.bfloat16 for c in model.calls)
    cfg = model.calls[1]
    assert torch.equal(cfg["e"], torch.cat([null_emb.expand(B, L, D), emb]))
    assert torch.equal(cfg["t"], torch.cat([model.calls[0]["t"]] * 2))
    aux_t = torch.cat([c["t"] for c in model.calls[2:]])
    assert bool(torch.isin(aux_t, grid.timesteps).all())
    assert parts.n_aux == aux_t.numel() and torch.isfinite(parts.loss)


def test_rollout_grad_changes_cost_not_numbers():
    grid = SigmaGrid()
    z0, emb, pooled, null_emb, null_pooled, draws = inputs(4)
    losses, grads = [], []
    for flag in (True, False):
        model = Linear(5)
        parts = reference_loss(model, z0, emb, pooled, null_emb, null_pooled, grid, draws, kind="cps",
                               rollout_grad=flag)
        parts.loss.backward()
        losses.append(parts.loss.detach())
        grads.append(model.w.grad.clone())
    assert torch.equal(losses[0], losses[1]) and torch.equal(grads[0], grads[1])


def test_global_counts_are_used_for_normalisation():
    grid, model = SigmaGrid(), Linear(6)
    z0, emb, pooled, null_emb, null_pooled, draws = inputs(7)
    local = reference_loss(model, z0, emb, pooled, null_emb, null_pooled, grid, draws, kind="simple")
    total = local.n_main + local.n_aux
    glob = reference_loss(model, z0, emb, pooled, null_emb, null_pooled, grid, draws, kind="simple",
                          global_counts=(torch.tensor(4 * local.n_main), torch.tensor(4 * local.n_aux)))
    torch.testing.assert_close(glob.loss * 4 * total, local.loss * total, rtol=STEP_LOSS_RTOL, atol=0)


def test_draw_is_seeded_and_shaped():
    a = draw((3, 2, 5, 7), generator=torch.Generator().manual_seed(9), num_points=4, num_paths=3)
    b = draw((3, 2, 5, 7), generator=torch.Generator().manual_seed(9), num_points=4, num_paths=3)
    assert a.t0.shape == (3,) and a.z1.shape == (3, 2, 5, 7) and a.fracs.shape == (3, 4, 3)
    assert a.path_noise.shape == (2, 3, 2, 5, 7) and a.num_paths == 3 and a.num_points == 4
    assert all(torch.equal(x, y) for x, y in zip((a.t0, a.z1, a.fracs, a.path_noise),
                                                  (b.t0, b.z1, b.fracs, b.path_noise), strict=True))
    one = draw((3, 2, 5, 7), generator=torch.Generator().manual_seed(9), weighting_scheme="mode")
    assert one.path_noise is None and one.fracs.shape == (1, 6, 3)
    with pytest.raises(AssertionError, match=r"\(1, 3, 2, 5, 7\)"):
        SoarDraws(a.t0, a.z1, a.fracs, a.path_noise[:1])
