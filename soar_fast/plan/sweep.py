"""`soar-fast plan --sweep`: the planned step over a grid of memory choices, and the fastest that fits."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from soar_fast.config import Config
from soar_fast.plan.gpus import GPU
from soar_fast.plan.step import StepPlan

CHECKPOINTING = ("none", "selective", "full")
OPTIMIZERS = ("adamw", "adamw8bit", "adamw_fp8")
# The LoRA rows of a full fine-tune's sweep: what the same step would need as a rank-16 adapter on the
# attention layers (diffusers' SD3 scripts' target), for comparison only.
SWEEP_LORA_RANK = 16


@dataclass(frozen=True)
class Choice:
    """One sweep point: the `[accel]` memory switches, the batch per rank and the FSDP2 world size."""

    mode: str = "fast"
    grad_checkpointing: str = "none"
    aux_chunk: int = 0
    optimizer: str = "adamw"
    batch_size: int = 4
    world: int = 1
    lora_rank: int | None = None
    """None = `[lora]` as configured; a rank = a LoRA comparison row of a full fine-tune's sweep."""

    def apply(self, cfg: Config) -> Config:
        accel = replace(cfg.accel, mode=self.mode, grad_checkpointing=self.grad_checkpointing,
                        aux_chunk=self.aux_chunk, optimizer=self.optimizer)
        lora = cfg.lora if self.lora_rank is None else replace(cfg.lora, rank=self.lora_rank)
        return replace(cfg, accel=accel, data=replace(cfg.data, batch_size=self.batch_size), lora=lora)

    def label(self) -> str:
        if self.mode == "reference":
            return f"reference B={self.batch_size}"
        chunk = f"chunk {self.aux_chunk}" if self.aux_chunk else "chunk all"
        world = f" fsdp2x{self.world}" if self.world > 1 else ""
        lora = f", LoRA r={self.lora_rank}" if self.lora_rank else ""
        return f"ckpt {self.grad_checkpointing}, {chunk}, {self.optimizer}, B={self.batch_size}{world}{lora}"


def sweep_grid(cfg: Config, *, batch_sizes: Sequence[int], worlds: Sequence[int] = (1,)) -> list[Choice]:
    """The reference step at the configured batch first, then every fast-step combination; for a full
    fine-tune (`lora.rank = 0`) last the fast default as a rank-`SWEEP_LORA_RANK` LoRA run per batch
    and world, beside it for comparison (never the "fastest": it trains something else)."""
    grid = [Choice(mode="reference", batch_size=int(cfg.data.batch_size))]
    for ckpt, opt, batch, world in itertools.product(CHECKPOINTING, OPTIMIZERS, batch_sizes, worlds):
        for chunk in sorted({0, int(batch)}):
            grid.append(Choice(grad_checkpointing=ckpt, aux_chunk=chunk, optimizer=opt, batch_size=int(batch),
                               world=int(world)))
    if int(cfg.lora.rank) == 0:
        grid += [Choice(batch_size=int(b), world=int(w), lora_rank=SWEEP_LORA_RANK)
                 for b, w in itertools.product(batch_sizes, worlds)]
    return grid


@dataclass
class SweepRow:
    choice: Choice
    plan: StepPlan
    fits: bool | None

    def as_dict(self) -> dict[str, Any]:
        return {"choice": self.choice.__dict__, "label": self.choice.label(), "fits": self.fits,
                **self.plan.as_dict()}


def fits(plan: StepPlan, gpu: GPU | None, headroom: float) -> bool | None:
    """Peak within the GPU's memory less the headroom fraction (None without a GPU)."""
    return None if gpu is None else plan.peak_bytes <= (1.0 - headroom) * gpu.memory_bytes


def run_sweep(cfg: Config, grid: Sequence[Choice], plan: Callable[[Config, Choice], StepPlan], *,
              gpu: GPU | None, headroom: float,
              progress: Callable[[int, int, Choice], None] | None = None) -> list[SweepRow]:
    rows, planned = [], {}
    for i, choice in enumerate(grid):
        # adamw8bit and adamw_fp8 plan the same state layout (1-byte codes + fp32 block scales,
        # `soar_fast.plan.low_bit`): one fake step serves both.
        key = replace(choice, optimizer="adamw8bit") if choice.optimizer == "adamw_fp8" else choice
        if key not in planned:
            if progress is not None:
                progress(i, len(grid), choice)
            planned[key] = plan(key.apply(cfg), key)
        p = planned[key]
        if key != choice:
            p = replace(p, accel={**p.accel, "optimizer": choice.optimizer})
        rows.append(SweepRow(choice, p, fits(p, gpu, headroom)))
    return rows


def fastest_fitting(rows: Sequence[SweepRow]) -> SweepRow | None:
    """The fitting fast-step row with the smallest predicted step time per sample."""
    def per_sample(r: SweepRow) -> float:
        t = r.plan.step_time_s if r.plan.step_time_s is not None else float(r.plan.flops)
        return t / (r.choice.batch_size * r.choice.world)
    fitting = [r for r in rows if r.fits and r.choice.mode == "fast" and r.choice.lora_rank is None]
    return min(fitting, key=per_sample) if fitting else None
