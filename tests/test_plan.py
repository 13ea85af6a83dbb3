"""`soar-fast plan`: the command, its JSON contract, the GPU table, low-bit states, FSDP2 ranks, the sweep."""

from __future__ import annotations

import dataclasses
import json

import pytest

from soar_fast.config_io import ConfigError, load_config
from soar_fast.plan import GPUS, gpu, plan_step
from soar_fast.plan.step import StepPlan
from soar_fast.plan.sweep import Choice, SweepRow, fastest_fitting, sweep_grid
from tests.conftest import run_cli

CONTRACT = ("peak_bytes", "phase", "params", "grads", "optimizer", "activations", "flops")
SMALL = ["--run.device=cpu", "--data.batch_size=2", "--soar.trajectory_length=2", "--data.max_sequence_length=8"]


def test_json_has_the_contract_keys_and_nothing_else_on_stdout():
    r = run_cli("plan", "--json", "--gpu", "L40S", *SMALL, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)  # stdout is exactly one JSON object
    for key in CONTRACT:
        assert isinstance(out[key], int if key != "phase" else str), key
    assert out["phase"] in {"main forward", "rollout forward", "aux kernel", "aux forward", "backward", "optimizer",
                            "other", "data"}
    assert out["params"] + out["grads"] + out["optimizer"] + out["activations"] == out["peak_bytes"]
    assert out["gpu"] == "L40S" and out["fits"] is True and out["step_time_s"] > 0


def test_unknown_gpu_is_a_config_error():
    r = run_cli("plan", "--gpu", "V100", *SMALL, timeout=120)
    assert r.returncode == 2 and "--gpu: unknown GPU 'V100'" in r.stderr and "H200" in r.stderr


def test_gpu_table_has_a_source_for_every_figure():
    assert {g.name for g in GPUS.values()} == {"H200", "H100-80G", "A100-80G", "A100-40G", "L40S", "RTX4090"}
    for g in GPUS.values():
        assert g.source and g.bf16_flops > g.fp32_flops > 0 and g.bytes_per_s > 0 and g.memory_bytes >= 24 * 2**30
    assert gpu("h200").bf16_flops == 790e12 and gpu("rtx-4090").name == "RTX4090"


def _plan(*extra: str, **kw) -> StepPlan:
    return plan_step(load_config(None, [*SMALL, *extra]), **kw)


def test_low_bit_optimizer_states_are_a_quarter_of_adamw():
    full = _plan("--accel.optimizer=adamw")
    low = _plan("--accel.optimizer=adamw8bit")
    fp8 = _plan("--accel.optimizer=adamw_fp8")
    # 2 fp32 moments = 8 B/param against 2 x (1 B code + 4/256 B scale); tensors < 4096 stay fp32.
    assert 0.25 < low.optimizer / full.optimizer < 0.40, (low.optimizer, full.optimizer)
    assert fp8.optimizer == low.optimizer
    assert low.peak_bytes < full.peak_bytes


def test_checkpointing_lowers_the_predicted_peak_and_costs_flops():
    none, full = _plan(), _plan("--accel.grad_checkpointing=full")
    assert full.activations < none.activations and full.flops > none.flops


def test_fsdp2_ranks_hold_a_shard_of_the_state():
    one = _plan()
    two = _plan(world=2)
    assert two.world == 2
    # Sharded fp32 AdamW state: half per rank (up to padding of odd-sized parameters).
    assert two.optimizer == pytest.approx(one.optimizer / 2, rel=0.05)


def test_the_ema_on_the_device_is_planned_as_resident_state():
    """4 B per trained parameter, per rank's shard under FSDP2; nothing on the device with ema.device = cpu."""
    import torch
    from diffusers import SD3Transformer2DModel

    from soar_fast.plan.step import model_config

    with torch.device("meta"):
        n = sum(p.numel() for p in SD3Transformer2DModel.from_config(model_config(load_config(None, SMALL))).parameters())
    base, ema, host = _plan(), _plan("--ema.decay=0.99"), _plan("--ema.decay=0.99", "--ema.device=cpu")
    assert ema.optimizer - base.optimizer == ema.peak_bytes - base.peak_bytes == 4 * n
    assert (host.optimizer, host.peak_bytes) == (base.optimizer, base.peak_bytes)
    two_base, two_ema = _plan(world=2), _plan("--ema.decay=0.99", world=2)
    assert two_ema.optimizer - two_base.optimizer == pytest.approx(4 * n / 2, rel=0.05)


def test_planner_refuses_stochastic_paths_with_a_named_key():
    with pytest.raises(ConfigError, match="soar.num_rollout_paths"):
        _plan("--soar.num_rollout_paths=2")


def _row(label: str, peak: int, t: float, fits: bool, mode: str = "fast", batch: int = 4) -> SweepRow:
    plan = StepPlan(peak_bytes=peak, phase="backward", params=0, grads=0, optimizer=0, activations=peak, flops=1,
                    step_time_s=t, compute_bound_s=t, gpu="H200", device="cuda")
    return SweepRow(Choice(mode=mode, grad_checkpointing=label, batch_size=batch), plan, fits)


def test_sweep_grid_and_fastest_fitting():
    cfg = load_config(None, ["--data.batch_size=4"])
    grid = sweep_grid(cfg, batch_sizes=[2, 4], worlds=[1])
    # + one LoRA comparison row per batch size (this config is a full fine-tune).
    assert grid[0].mode == "reference" and len(grid) == 1 + 3 * 3 * 2 * 2 + 2
    assert {c.aux_chunk for c in grid[1:]} == {0, 2, 4}
    assert [c.lora_rank for c in grid[-2:]] == [16, 16] and all(c.lora_rank is None for c in grid[:-2])
    assert sweep_grid(load_config(None, ["--lora.rank=4"]), batch_sizes=[2], worlds=[1])[-1].lora_rank is None
    rows = [_row("ref", 1, 0.1, True, mode="reference"), _row("none", 9, 1.0, False), _row("full", 5, 2.0, True),
            _row("selective", 6, 1.5, True), _row("selective", 6, 2.0, True, batch=2)]
    assert fastest_fitting(rows).choice.grad_checkpointing == "selective"  # the reference row never wins
    assert fastest_fitting(rows[:2]) is None
    lora = SweepRow(dataclasses.replace(rows[3].choice, lora_rank=16), rows[3].plan, True)
    lora.plan = dataclasses.replace(lora.plan, step_time_s=0.01)
    assert fastest_fitting([*rows, lora]).choice.lora_rank is None  # a comparison row never wins


def test_train_logs_the_predicted_peak(tmp_output_dir):
    r = run_cli("train", "--log.plan_memory=true", "--train.max_steps=1", "--log.progress=false",
                f"--run.output_dir={tmp_output_dir}", "--checkpoint.every=0", timeout=300)
    assert r.returncode == 0, r.stderr
    assert "memory: predicted peak" in r.stderr and "per rank in backward" in r.stderr
