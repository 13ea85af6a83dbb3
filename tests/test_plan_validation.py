"""`soar-fast plan`'s predicted peak against the peak of the same step measured another way.

The prediction runs the step on fake tensors under torch's MemTracker; the measurement runs it for
real on the CPU under `torch.profiler` with `profile_memory=True` and replays the allocator's own
allocation and free events ([memory] records: the bytes of every c10 allocation, signed) into a
running total. Both are steady-state steps: the optimizer state exists before the step (one real
warm-up step; the planner materialises it). The measured peak is the resident bytes at the start
(parameters, buffers, optimizer state, the empty-prompt embedding) plus the largest running total.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from soar_fast.config_io import load_config
from soar_fast.models.transformer import PRESETS
from soar_fast.plan import plan_step, run_shapes
from soar_fast.plan.step import ShapeSource, model_config
from soar_fast.train.trainer import Trainer

# 6 layers, 256 wide (4 heads x 64), two dual-attention layers: a mid-size model that still runs a
# real SOAR step on one CPU core in about a second.
MID = {"sample_size": 32, "patch_size": 2, "in_channels": 16, "out_channels": 16, "num_layers": 6,
       "attention_head_dim": 64, "num_attention_heads": 4, "joint_attention_dim": 256,
       "caption_projection_dim": 256, "pooled_projection_dim": 256, "pos_embed_max_size": 64,
       "dual_attention_layers": (0, 1), "qk_norm": "rms_norm"}

TOLERANCE = 0.10  # the planning target: predicted peak within 10% of the measured one


def _storage_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        st = t.untyped_storage()
        if st.data_ptr() not in seen:
            seen.add(st.data_ptr())
            total += st.nbytes()
    return total


def measured_peak(cfg) -> tuple[int, int]:
    """(peak bytes, resident bytes at the start) of the second real training step of `cfg` on the CPU."""
    source = ShapeSource(run_shapes(cfg, model_config(cfg)))
    trainer = Trainer.build(cfg, source=source)
    trainer.train_step()
    trainer.apply_update()  # the optimizer state now exists, as in every later step
    state = [v for s in trainer.optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    resident = _storage_bytes([*trainer.model.parameters(), *trainer.model.buffers(), *state,
                               source.null_embeds, source.null_pooled])
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        trainer.train_step()
        trainer.apply_update()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    running = peak = 0
    for e in events:
        running += e.nbytes()
        peak = max(peak, running)
    return resident + peak, resident


def _cfg(preset: str, accel: list[str], *extra: str):
    cfg = load_config(None, ["--run.device=cpu", "--data.batch_size=2", "--soar.trajectory_length=3",
                             "--data.max_sequence_length=16", "--model.resolution=64", *accel, *extra])
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, preset=preset))


CASES = {
    "reference": ["--accel.mode=reference"],
    "fast": ["--accel.mode=fast"],
    "fast+full": ["--accel.mode=fast", "--accel.grad_checkpointing=full"],
    "fast+selective": ["--accel.mode=fast", "--accel.grad_checkpointing=selective"],
    "fast+bf16": ["--accel.mode=fast", "--train.mixed_precision=bf16"],
}


@pytest.fixture
def mid_preset(monkeypatch):
    monkeypatch.setitem(PRESETS, "mid", MID)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("preset", ["tiny", "mid"])
def test_predicted_peak_matches_measured(preset, case, mid_preset):
    extra = ["--model.resolution=128"] if preset == "mid" else []
    cfg = _cfg(preset, CASES[case], *extra)
    plan = plan_step(cfg, gpu=None)
    peak, resident = measured_peak(cfg)
    assert plan.peak_bytes == pytest.approx(peak, rel=TOLERANCE), (
        f"{preset}/{case}: predicted {plan.peak_bytes} B, measured {peak} B")
    # The part above the resident state (activations, gradients, temporaries) too: the resident bytes
    # alone must not carry the match.
    assert plan.peak_bytes - resident == pytest.approx(peak - resident, rel=TOLERANCE), (
        f"{preset}/{case}: predicted {plan.peak_bytes - resident} B above the resident state, measured "
        f"{peak - resident} B")
    assert plan.params + plan.grads + plan.optimizer + plan.activations == plan.peak_bytes
