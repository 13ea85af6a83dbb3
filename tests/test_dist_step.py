"""2 ranks × B == 1 process × 2B: one SOAR step under DDP and FSDP2 (gloo, CPU), DCP save on 2 ranks
→ resume on 1, and the rank-0 diffusers export.

One spawn of 2 processes (module fixture) runs every multi-rank part; the tests then compare its
results with single-process runs in this process. Draws are injected: the global batch's draws are
drawn once and rank r takes samples [rB, (r+1)B). Sample 3 (rank 1) gets t0 < 1/S, so its stochastic
path is left out and the ranks' aux counts differ: the normalisation must use the global counts.
"""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

from soar_fast.config import ParallelConfig
from soar_fast.parallel.counts import global_counts, grad_scale, sum_over_ranks
from soar_fast.parallel.env import Dist, single_process
from soar_fast.soar import (
    SigmaGrid,
    SoarDraws,
    aux_points,
    cfg_combine,
    draw,
    loss_weight,
    soar_loss,
    weighted_mse,
)
from tests.conftest import run_ranks
from tests.tolerances import STEP_GRAD, STEP_LOSS_RTOL

B, C, H = 2, 4, 8            # per-rank batch, latent channels, latent side
L, D, P_DIM = 6, 16, 8       # prompt tokens, joint dim, pooled dim
K, PATHS, S = 2, 2, 40       # aux points, rollout paths, sampling steps
WORLD = 2
TINY = {"sample_size": H, "patch_size": 2, "in_channels": C, "num_layers": 2, "attention_head_dim": 8,
        "num_attention_heads": 2, "joint_attention_dim": D, "caption_projection_dim": 16,
        "pooled_projection_dim": P_DIM, "out_channels": C, "pos_embed_max_size": 16}
# AdamW with eps 1e-6: with the default 1e-8 an update is ≈ lr·sign(g), so a gradient element at
# rounding-noise level (1e-10) could flip a whole lr between the 2-rank and 1-process runs.
OPTIM = {"lr": 1e-4, "eps": 1e-6, "weight_decay": 1e-4}


def _build_model() -> torch.nn.Module:
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(0)
    return SD3Transformer2DModel(**TINY)


def _global_inputs(seed: int) -> tuple[dict[str, torch.Tensor], SoarDraws]:
    g = torch.Generator().manual_seed(seed)
    n = WORLD * B
    batch = {"z0": torch.randn(n, C, H, H, generator=g), "embeds": torch.randn(n, L, D, generator=g),
             "pooled": torch.randn(n, P_DIM, generator=g), "null_embeds": torch.randn(1, L, D, generator=g),
             "null_pooled": torch.randn(1, P_DIM, generator=g)}
    draws = draw((n, C, H, H), generator=g, num_points=K, num_paths=PATHS)
    t0 = draws.t0.clone()
    t0[3] = 0.01                                   # t1 = max(t0 − 1/S, 0) = 0: no stochastic path
    return batch, dataclasses.replace(draws, t0=t0)


def _shard(batch: dict, draws: SoarDraws, rank: int, world: int) -> tuple[dict, SoarDraws]:
    if world == 1:
        return batch, draws
    sl = slice(rank * B, (rank + 1) * B)
    part = {k: (v if k.startswith("null") else v[sl]) for k, v in batch.items()}
    return part, SoarDraws(t0=draws.t0[sl], z1=draws.z1[sl], fracs=draws.fracs[:, :, sl],
                           path_noise=None if draws.path_noise is None else draws.path_noise[:, sl])


def _velocity(model, latents, timesteps, embeds, pooled):
    return model(hidden_states=latents, timestep=timesteps, encoder_hidden_states=embeds,
                 pooled_projections=pooled, return_dict=False)[0]


def _soar_step(model, opt, batch: dict, draws: SoarDraws, d: Dist, *, grads_out: dict | None = None):
    """One optimizer step; returns the global loss and the global aux count."""
    loss, n_aux = _forward_backward(model, batch, draws, d)
    if grads_out is not None:
        grads_out.update(_grads(model))
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss, n_aux


def _grads(model) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in model.named_parameters():
        g = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
        out[name.removeprefix("module.")] = g.detach().clone()
    return out


def _forward_backward(model, batch: dict, draws: SoarDraws, d: Dist, scale: float = 1.0):
    """The step's forwards and backward in docs/objective.md §3's order with the global normalisation."""
    grid = SigmaGrid()
    z0, embeds, pooled = batch["z0"], batch["embeds"], batch["pooled"]
    n = z0.shape[0]
    sigma0, tau0 = grid.at(draws.t0)
    s0 = sigma0.view(-1, 1, 1, 1)
    z_t0 = (1 - s0) * z0 + s0 * draws.z1
    v0 = _velocity(model, z_t0, tau0, embeds, pooled)
    main = weighted_mse(v0, draws.z1 - z0, loss_weight(sigma0, "logit_normal"))
    with torch.no_grad():
        v_u = _velocity(model, z_t0, tau0, batch["null_embeds"].expand(n, -1, -1),
                        batch["null_pooled"].expand(n, -1))
    v_cfg = cfg_combine(v_u, v0.detach(), 4.5)
    pts = aux_points(z_t0, v_cfg, z0, draws.z1, draws.t0, grid, num_sampling_steps=S, fracs=draws.fracs,
                     noise=draws.path_noise, kind="flow_sde", noise_scale=0.5)
    n_main, n_aux = global_counts(n, pts.layout.num_rows, d)
    b = pts.sample_index
    pred = _velocity(model, pts.latents, pts.timesteps, embeds[b], pooled[b])
    aux = weighted_mse(pred, pts.targets, loss_weight(pts.sigmas, "logit_normal"))
    loss = soar_loss(main.sum(), aux.sum(), n_main, n_aux, 1.0)
    (loss * (grad_scale(d) * scale)).backward()
    return sum_over_ranks(loss.detach(), d), float(n_aux)


def _full_weights(model, d: Dist) -> dict[str, torch.Tensor]:
    from soar_fast.parallel.export import full_state_dict

    return full_state_dict(model, d)


def _worker(tmp: str) -> None:
    """Both ranks: a DDP step, then FSDP2 step 1 + DCP save + export + step 2."""
    from soar_fast.parallel import apply_data_parallel, fail_fast, gradient_sync, init_distributed, shutdown
    from soar_fast.parallel.dcp import atomic_folder, save_sharded_state
    from soar_fast.parallel.export import export_transformer

    torch.set_num_threads(1)
    d = init_distributed(ParallelConfig(strategy="fsdp2", timeout_s=60), device_type="cpu")
    with fail_fast(d):
        init = torch.load(os.path.join(tmp, "init.pt"), weights_only=True)
        batch1, draws1 = _shard(*_global_inputs(1), d.rank, d.world)
        batch2, draws2 = _shard(*_global_inputs(2), d.rank, d.world)
        results = {}
        for strategy in ("ddp", "fsdp2"):
            model = _build_model()
            model.load_state_dict(init)
            model = apply_data_parallel(model, ParallelConfig(strategy=strategy), d, autocast_bf16=False)
            opt = torch.optim.AdamW(model.parameters(), **OPTIM)
            grads: dict = {}
            loss, n_aux = _soar_step(model, opt, batch1, draws1, d, grads_out=grads)
            results[strategy] = {"loss": loss, "n_aux": n_aux, "grads": grads,
                                 "weights": _full_weights(model, d)}
            if strategy == "ddp":
                # Two accumulation micro-batches from the initial weights, the first without the all-reduce.
                fresh = _build_model()
                fresh.load_state_dict(init)
                fresh = apply_data_parallel(fresh, ParallelConfig(strategy="ddp"), d, autocast_bf16=False)
                with gradient_sync(fresh, False):
                    _forward_backward(fresh, batch1, draws1, d, scale=0.5)
                _forward_backward(fresh, batch2, draws2, d, scale=0.5)
                results["ddp_accumulated_grads"] = _grads(fresh)
        # `model`/`opt` are the FSDP2 ones now.
        gen = torch.Generator().manual_seed(100 + d.rank)
        with atomic_folder(os.path.join(tmp, "ckpt", "step-1"), d) as folder:
            save_sharded_state(os.path.join(folder, "state"), model=model, optimizer=opt, d=d,
                               rank_state={"rng": {"noise": gen.get_state()}, "data": {"cursor": 7 + d.rank}},
                               strategy="fsdp2")
            export_transformer(model, os.path.join(folder, "transformer"), d)
        loss2, _ = _soar_step(model, opt, batch2, draws2, d)
        results["fsdp2_step2"] = {"loss": loss2, "weights": _full_weights(model, d)}
        if d.is_main:
            torch.save(results, os.path.join(tmp, "results.pt"))
    shutdown(d)


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("dist"))
    torch.save(_build_model().state_dict(), os.path.join(tmp, "init.pt"))
    return tmp, run_ranks(_worker, WORLD, tmp, timeout_s=150)


def _one_process_run(init: dict, steps: tuple[int, ...], model=None, opt=None):
    d = single_process("cpu")
    if model is None:
        model = _build_model()
        model.load_state_dict(init)
        opt = torch.optim.AdamW(model.parameters(), **OPTIM)
    outs, grads = [], {}
    for i, seed in enumerate(steps):
        outs.append(_soar_step(model, opt, *_global_inputs(seed), d, grads_out=grads if i == 0 else None))
    return model, opt, outs, grads


def _assert_weights(actual: dict, expected: dict, what: str) -> None:
    rtol, atol = STEP_GRAD
    assert actual.keys() == expected.keys()
    for k, want in expected.items():
        torch.testing.assert_close(actual[k], want, rtol=rtol, atol=atol, msg=lambda m, k=k: f"{what} {k}: {m}")


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_two_ranks_match_one_process_on_the_global_batch(two_rank_run, strategy):
    tmp, results = two_rank_run
    init = torch.load(os.path.join(tmp, "init.pt"), weights_only=True)
    model, _, ((loss, n_aux),), grads = _one_process_run(init, (1,))
    got = results[strategy]
    # The ranks' aux counts differ (rank 1 has a sample without a stochastic path): 4·2·2 − 2 rows.
    assert got["n_aux"] == n_aux == WORLD * B * K * PATHS - K
    torch.testing.assert_close(got["loss"], loss, rtol=STEP_LOSS_RTOL, atol=0)
    _assert_weights(got["grads"], grads, f"{strategy} grad")
    _assert_weights(got["weights"], {k: v.detach() for k, v in model.state_dict().items()}, f"{strategy} weight")


def test_ddp_accumulation_without_sync_matches_one_process(two_rank_run):
    tmp, results = two_rank_run
    model = _build_model()
    model.load_state_dict(torch.load(os.path.join(tmp, "init.pt"), weights_only=True))
    d = single_process("cpu")
    for seed in (1, 2):
        _forward_backward(model, *_global_inputs(seed), d, scale=0.5)
    _assert_weights(results["ddp_accumulated_grads"], _grads(model), "accumulated grad")


@pytest.mark.parametrize("strategy", ["none", "fsdp2"])
def test_resume_two_rank_dcp_checkpoint_in_one_process(two_rank_run, strategy):
    from soar_fast.parallel import apply_data_parallel, init_distributed, shutdown
    from soar_fast.parallel.dcp import is_sharded_state, load_sharded_state, saved_world

    tmp, results = two_rank_run
    state_dir = os.path.join(tmp, "ckpt", "step-1", "state")
    assert is_sharded_state(state_dir) and saved_world(state_dir) == WORLD
    init = torch.load(os.path.join(tmp, "init.pt"), weights_only=True)
    # Environment of a plain `soar-fast train` (no torchrun): fsdp2 gets a private one-rank group.
    saved_env = {k: os.environ.pop(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK") if k in os.environ}
    try:
        d = init_distributed(ParallelConfig(strategy=strategy, timeout_s=60), device_type="cpu")
        try:
            model = _build_model()   # different init: everything must come from the checkpoint
            model = apply_data_parallel(model, ParallelConfig(strategy=strategy), d, autocast_bf16=False)
            opt = torch.optim.AdamW(model.parameters(), **OPTIM)
            rank_state = load_sharded_state(state_dir, model=model, optimizer=opt, d=d)
            assert rank_state["data"] == {"cursor": 7}
            assert torch.equal(rank_state["rng"]["noise"], torch.Generator().manual_seed(100).get_state())
            loss, _ = _soar_step(model, opt, *_global_inputs(2), d)
            resumed = _full_weights(model, d)
        finally:
            shutdown(d)
    finally:
        os.environ.update(saved_env)
    # Same continuation as the 2-rank run itself ...
    torch.testing.assert_close(loss, results["fsdp2_step2"]["loss"], rtol=STEP_LOSS_RTOL, atol=0)
    _assert_weights(resumed, results["fsdp2_step2"]["weights"], "resumed vs 2-rank")
    # ... and as one uninterrupted process over both steps (optimizer state included: Adam's second
    # step differs from a fresh optimizer's first).
    ref_model, _, (_, (ref_loss, _)), _ = _one_process_run(init, (1, 2))
    torch.testing.assert_close(loss, ref_loss, rtol=STEP_LOSS_RTOL, atol=0)
    _assert_weights(resumed, {k: v.detach() for k, v in ref_model.state_dict().items()}, "resumed vs 1-process")


def test_rank_missing_from_checkpoint_gets_none(two_rank_run):
    from soar_fast.parallel.dcp import load_sharded_state

    tmp, _ = two_rank_run
    model = _build_model()
    state = load_sharded_state(os.path.join(tmp, "ckpt", "step-1", "state"), model=model, optimizer=None,
                               d=Dist(rank=2, world=3))
    assert state is None


def test_export_is_the_trained_weights_in_diffusers_format(two_rank_run):
    from diffusers import SD3Transformer2DModel

    tmp, results = two_rank_run
    ckpt = os.path.join(tmp, "ckpt")
    assert os.listdir(ckpt) == ["step-1"], "the temporary folder must be renamed, nothing left over"
    loaded = SD3Transformer2DModel.from_pretrained(os.path.join(ckpt, "step-1", "transformer"))
    want = results["fsdp2"]["weights"]
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, want[k]), k
