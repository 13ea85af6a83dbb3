"""`soar.objective = "sft"`: the plain flow-matching step through the same trainer, with no rollout and
no aux forward (counted), its loss by hand, and its logs without `loss_aux`."""

from __future__ import annotations

import json

import pytest
import torch

from soar_fast.config import SoarConfig
from soar_fast.soar import SigmaGrid, loss_weight
from soar_fast.soar.loss import weighted_mse
from soar_fast.train.step import StepFns, StepOptions, soar_step
from tests.conftest import FakeSource, tiny_config
from tests.test_trainer import _grads, _inputs, _model
from tests.tolerances import STEP_GRAD, STEP_LOSS_RTOL


def _count_forwards(model: torch.nn.Module) -> list[int]:
    calls = [0]
    model.register_forward_pre_hook(lambda module, args: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("mode", ["fast", "reference"])
def test_sft_runs_the_main_forward_alone(tmp_output_dir, mode):
    accum, k = 2, 3
    counts = {}
    for objective in ("soar", "sft"):
        cfg = tiny_config(tmp_output_dir / objective, [f"--soar.objective={objective}", f"--accel.mode={mode}",
                                                       f"--train.gradient_accumulation_steps={accum}",
                                                       f"--soar.trajectory_length={k}"])
        from soar_fast.train.trainer import Trainer

        trainer = Trainer.build(cfg, source=FakeSource(batch_size=3))
        calls = _count_forwards(trainer.model)
        result = trainer.train_step()
        assert torch.isfinite(result.loss)
        if objective == "sft":
            assert float(result.loss_aux) == 0.0 and torch.equal(result.loss, result.loss_main)
        counts[objective] = calls[0]
    # soar: main + rollout + aux (one batched forward in fast mode, K serial ones in reference mode)
    assert counts["soar"] == accum * (3 if mode == "fast" else 2 + k)
    assert counts["sft"] == accum


def test_sft_step_is_plain_flow_matching():
    grid = SigmaGrid()
    z0, embeds, pooled, null_e, null_p, draws = _inputs()
    model = _model()
    from soar_fast.models.transformer import velocity_fn

    f = velocity_fn(model)
    sigma, tau = grid.at(draws.t0)
    s = sigma.view(-1, 1, 1, 1)
    pred = f((1 - s) * z0 + s * draws.z1, tau, embeds, pooled)
    want = weighted_mse(pred, draws.z1 - z0, loss_weight(sigma, "logit_normal")).mean()
    want.backward()
    want_grads = _grads(model)
    model.zero_grad(set_to_none=True)

    calls = []

    def no_rollout(*args):
        calls.append(args)
        raise AssertionError("the SFT step ran a rollout forward")

    soar = SoarConfig(objective="sft", trajectory_length=3)
    for opts in (StepOptions(), StepOptions(reuse_cond=False, fuse_main=True)):
        parts = soar_step(StepFns(forward=f, rollout_forward=no_rollout), z0, embeds, pooled, null_e, null_p,
                          draws, grid, soar, opts)
        torch.testing.assert_close(parts.loss, want.detach(), rtol=STEP_LOSS_RTOL, atol=0)
        torch.testing.assert_close(parts.loss_main, want.detach(), rtol=STEP_LOSS_RTOL, atol=0)
        assert float(parts.loss_aux) == 0.0 and parts.n_aux == 0 and parts.n_main == z0.shape[0]
        torch.testing.assert_close(_grads(model), want_grads, rtol=STEP_GRAD[0], atol=STEP_GRAD[1])
        model.zero_grad(set_to_none=True)
    assert not calls


def test_sft_run_logs_no_aux_loss(tmp_output_dir):
    from soar_fast.train.loop import fit
    from soar_fast.train.trainer import Trainer

    cfg = tiny_config(tmp_output_dir, ["--soar.objective=sft", "--log.plot=true"])
    trainer = Trainer.build(cfg, source=FakeSource())
    assert fit(trainer) == "done"
    records = [json.loads(x) for x in (tmp_output_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all("loss_aux" not in r and r["loss"] == r["loss_main"] > 0 for r in records)
    assert (tmp_output_dir / "plots" / "loss.png").stat().st_size > 0
    assert (tmp_output_dir / "checkpoints" / "step-4").is_dir()
