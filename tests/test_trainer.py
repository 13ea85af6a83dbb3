"""The trainer's step against the eager oracle, its options, schedules, streams, outputs and failures."""

from __future__ import annotations

import json
import math

import pytest
import torch

from soar_fast.config import AccelConfig, OptimConfig, SoarConfig
from soar_fast.models.transformer import build_transformer, velocity_fn
from soar_fast.soar import SigmaGrid, draw, reference_loss
from soar_fast.train.optim import lr_lambda
from soar_fast.train.rng import RngStreams
from soar_fast.train.step import StepFns, StepOptions, drop_conditions, soar_step, step_options
from tests.conftest import FakeSource, tiny_config
from tests.tolerances import STEP_GRAD, STEP_LOSS_RTOL


def _model():
    from soar_fast.config import ModelConfig

    return build_transformer(ModelConfig(), seed=0, in_channels=4, joint_attention_dim=32, pooled_projection_dim=16)


def _inputs(paths: int = 1):
    g = torch.Generator().manual_seed(0)
    B = 3
    z0 = torch.randn(B, 4, 8, 8, generator=g)
    embeds, pooled = torch.randn(B, 6, 32, generator=g), torch.randn(B, 16, generator=g)
    null_e, null_p = torch.randn(1, 6, 32, generator=g), torch.randn(1, 16, generator=g)
    draws = draw(z0.shape, generator=g, num_points=3, num_paths=paths)
    return z0, embeds, pooled, null_e, null_p, draws


def _grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("opts, paths", [
    (StepOptions(reuse_cond=False, serial_aux=True, rollout_grad=True), 1),   # the reference's semantics
    (StepOptions(), 1),                                                        # fast defaults
    (StepOptions(aux_chunk=4), 2),                                             # chunks + per-chunk backward
])
def test_step_matches_reference_loss(opts, paths):
    soar = SoarConfig(trajectory_length=3, num_rollout_paths=paths)
    grid = SigmaGrid()
    z0, embeds, pooled, null_e, null_p, draws = _inputs(paths)
    model = _model()
    f = velocity_fn(model)
    ref = reference_loss(f, z0, embeds, pooled, null_e, null_p, grid, draws, cfg_scale=soar.cfg_scale,
                         num_sampling_steps=soar.num_sampling_steps, lambda_aux=soar.lambda_aux,
                         weighting_scheme=soar.weighting_scheme, kind=soar.rollout_kind,
                         noise_scale=soar.noise_scale, model_dtype=torch.float32)
    ref.loss.backward()
    ref_grads = _grads(model)
    model.zero_grad(set_to_none=True)
    parts = soar_step(StepFns(forward=f, rollout_forward=f), z0, embeds, pooled, null_e, null_p, draws, grid,
                      soar, opts)
    torch.testing.assert_close(parts.loss, ref.loss.detach(), rtol=STEP_LOSS_RTOL, atol=0)
    torch.testing.assert_close(parts.loss_main, ref.loss_main, rtol=STEP_LOSS_RTOL, atol=0)
    torch.testing.assert_close(parts.loss_aux, ref.loss_aux, rtol=STEP_LOSS_RTOL, atol=0)
    rtol, atol = STEP_GRAD
    torch.testing.assert_close(_grads(model), ref_grads, rtol=rtol, atol=atol)


def test_step_options_from_accel():
    from soar_fast.accel import resolve_accel

    def opts(accel: AccelConfig, **kw) -> StepOptions:
        return step_options(resolve_accel(accel, "cpu"), **kw)

    assert opts(AccelConfig(mode="reference", aux_chunk=4)) == StepOptions(reuse_cond=False, rollout_grad=True,
                                                                           serial_aux=True)
    assert opts(AccelConfig(batched_aux=False, aux_chunk=8)).serial_aux
    assert opts(AccelConfig(), mixed_precision="bf16").autocast_dtype == torch.bfloat16


@pytest.mark.parametrize("kind, expect", [
    ("constant", [1, 1, 1, 1]),
    ("constant_with_warmup", [0, 0.5, 1, 1]),
    ("linear", [0, 0.5, 2 / 3, 1 / 3]),
    ("cosine", [0, 0.5, 0.75, 0.25]),
])
def test_lr_schedules(kind, expect):
    f = lr_lambda(OptimConfig(lr_scheduler=kind, lr_warmup_steps=2), max_steps=5)
    got = [f(s) for s in (0, 1, 3, 4)]
    assert got == pytest.approx(expect, abs=1e-9)


def test_rng_streams_independent_per_rank_and_resumable():
    a, b = RngStreams(1, 0, "cpu"), RngStreams(1, 1, "cpu")
    assert not torch.equal(torch.rand(4, generator=a["soar"]), torch.rand(4, generator=b["soar"]))
    state = a.state_dict()
    x = torch.rand(4, generator=a["posterior"])
    c = RngStreams(99, 5, "cpu")
    c.load_state_dict(state)
    assert torch.equal(torch.rand(4, generator=c["posterior"]), x)


def test_drop_conditions():
    e, p = torch.ones(5, 3, 2), torch.ones(5, 2)
    ne, npool = torch.zeros(1, 3, 2), torch.zeros(1, 2)
    g = torch.Generator().manual_seed(0)
    de, dp = drop_conditions(e, p, ne, npool, 1.0, g)
    assert de.abs().sum() == 0 and dp.abs().sum() == 0
    de, dp = drop_conditions(e, p, ne, npool, 0.0, g)
    assert torch.equal(de, e) and torch.equal(dp, p)


def _fit(cfg, source):
    from soar_fast.train.loop import fit
    from soar_fast.train.trainer import Trainer

    trainer = Trainer.build(cfg, source=source)
    return trainer, fit(trainer)


def test_fit_writes_every_output(tmp_output_dir):
    cfg = tiny_config(tmp_output_dir, ["--log.plot=true", "--log.tensorboard=true", "--checkpoint.total_limit=1",
                                       "--train.gradient_accumulation_steps=2", "--optim.lr_scheduler=cosine"])
    trainer, status = _fit(cfg, FakeSource())
    assert status == "done" and trainer.step == 4
    records = [json.loads(x) for x in (tmp_output_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    for key in ("loss", "loss_main", "loss_aux", "lr", "grad_norm", "samples_per_s", "tokens_per_s"):
        assert all(math.isfinite(r[key]) for r in records), key
    # tokens per sample = image tokens (8/2)² + text tokens 6; 2 samples × 2 micro-batches per step
    r = records[-1]
    assert r["tokens_per_s"] == pytest.approx(r["samples_per_s"] * (16 + 6))
    assert (tmp_output_dir / "plots" / "loss.png").stat().st_size > 0
    assert any((tmp_output_dir / "tensorboard").iterdir())
    assert sorted(p.name for p in (tmp_output_dir / "checkpoints").iterdir()) == ["step-4"]  # total_limit = 1
    assert (tmp_output_dir / "transformer" / "diffusion_pytorch_model.safetensors").is_file()


class NaNAt(FakeSource):
    """Batch `bad` (1-based step) has NaN latents."""

    def __init__(self, bad: int, **kw):
        super().__init__(**kw)
        self.bad = bad

    def _batch(self, i):
        batch = super()._batch(i)
        if i + 1 == self.bad:
            batch.latent_mean[:] = float("nan")
        return batch


def test_nonfinite_loss_stops_naming_the_step_and_keeps_last_checkpoint(tmp_output_dir):
    from soar_fast.train.checkpoint import latest_checkpoint
    from soar_fast.train.loop import NonFiniteLossError

    with pytest.raises(NonFiniteLossError, match="step 3"):
        _fit(tiny_config(tmp_output_dir), NaNAt(3))
    assert latest_checkpoint(str(tmp_output_dir)).step == 2


def test_nonfinite_skip_continues(tmp_output_dir):
    trainer, status = _fit(tiny_config(tmp_output_dir, ["--train.on_nonfinite=skip"]), NaNAt(3))
    assert status == "done" and trainer.step == 4
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    steps = [json.loads(x)["step"] for x in (tmp_output_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 4]


def test_fresh_run_refuses_to_overwrite_a_run(tmp_output_dir):
    from soar_fast.config_io import ConfigError
    from soar_fast.train.run import main_train

    _fit(tiny_config(tmp_output_dir, ["--train.max_steps=2"]), FakeSource())

    class Args:
        resume = None

    with pytest.raises(ConfigError, match="already holds a run"):
        main_train(tiny_config(tmp_output_dir), Args())


def test_reference_mode_uses_plain_adamw_whatever_accel_optimizer_says(tmp_path):
    from soar_fast.train.trainer import Trainer

    cfg = tiny_config(tmp_path, ["--accel.mode=reference", "--accel.optimizer=adamw8bit"])
    trainer = Trainer.build(cfg, source=FakeSource())
    assert type(trainer.optimizer) is torch.optim.AdamW
