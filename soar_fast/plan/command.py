"""`soar-fast plan [CONFIG] [--gpu NAME] [--world N] [--sweep] [--json]`: print the planned step."""

from __future__ import annotations

import json
import sys
from typing import Any

from soar_fast.config import Config
from soar_fast.plan.gpus import GPU, gpu
from soar_fast.plan.step import StepPlan, plan_step
from soar_fast.plan.sweep import SweepRow, fastest_fitting, fits, run_sweep, sweep_grid

GiB = 2**30
PHASE_ORDER = ("data", "main forward", "rollout forward", "aux kernel", "aux forward", "backward", "optimizer",
               "other")


def _gib(n: float) -> str:
    return f"{n / GiB:.2f} GiB"


def plan_for(cfg: Config, world: int, target: GPU | None, roofline: bool = True) -> StepPlan:
    return plan_step(cfg, gpu=target, roofline=roofline, world=world)


def describe(plan: StepPlan, target: GPU | None, headroom: float) -> str:
    r, a = plan.run, plan.accel
    model = r["path"] or f"preset {r['preset']}"
    lines = [
        f"plan: {model}, {r['resolution']}px, B={r['batch_size']} per rank, K={r['trajectory_length']}, "
        f"mixed_precision={r['mixed_precision']}; accel.mode={a['mode']}, grad_checkpointing="
        f"{a['grad_checkpointing']}, aux_chunk={a['aux_chunk']}, optimizer={a['optimizer']}; "
        f"device {plan.device}" + (f" ({target.name})" if target else ""),
        f"rank {plan.rank} of {plan.world}: peak {_gib(plan.peak_bytes)} in {plan.phase}",
        f"  parameters   {_gib(plan.params):>12}",
        f"  gradients    {_gib(plan.grads):>12}",
        f"  optimizer    {_gib(plan.optimizer):>12}",
        f"  activations  {_gib(plan.activations):>12}   (and temporaries, inputs)",
        "  peak per phase: " + ", ".join(f"{p} {_gib(plan.phase_peaks[p])}" for p in PHASE_ORDER
                                         if p in plan.phase_peaks),
        f"executed FLOPs {plan.flops / 1e12:.1f} TFLOP per optimizer step",
    ]
    if target is not None:
        lines.append(f"step time >= {plan.step_time_s:.3f} s on {target.name} (eager roofline: per op, FLOPs at "
                     f"{target.bf16_flops / 1e12:.0f} TFLOP/s bf16 / {target.fp32_flops / 1e12:.1f} fp32 or bytes "
                     f"at {target.bytes_per_s / 1e12:.2f} TB/s); >= {plan.compute_bound_s:.3f} s at the bf16 peak "
                     "alone" if plan.step_time_s is not None else
                     f"step time >= {plan.compute_bound_s:.3f} s at {target.name}'s bf16 peak")
        ok = fits(plan, target, headroom)
        lines.append(f"fits {target.name} ({_gib(target.memory_bytes)}, {headroom:.0%} headroom -> "
                     f"{_gib((1 - headroom) * target.memory_bytes)}): {'yes' if ok else 'NO'}")
    return "\n".join(lines)


def sweep_table(rows: list[SweepRow], target: GPU | None, headroom: float) -> str:
    best = fastest_fitting(rows)
    head = ("| choice | peak | phase | params | grads | optimizer | activations | TFLOP/step | step s (roofline) "
            "| fits |")
    out = [head, "|" + "---|" * 10]
    for r in rows:
        p = r.plan
        t = f"{p.step_time_s:.3f}" if p.step_time_s is not None else "-"
        mark = "-" if r.fits is None else ("yes" if r.fits else "no")
        if r is best:
            mark += " (fastest)"
        out.append(f"| {r.choice.label()} | {_gib(p.peak_bytes)} | {p.phase} | {_gib(p.params)} | {_gib(p.grads)} | "
                   f"{_gib(p.optimizer)} | {_gib(p.activations)} | {p.flops / 1e12:.1f} | {t} | {mark} |")
    if target is not None:
        out.append("")
        out.append(f"fastest that fits {target.name} with {headroom:.0%} headroom: "
                   + (best.choice.label() if best else "none"))
    return "\n".join(out)


def main_plan(cfg: Config, args: Any) -> int:
    target = gpu(args.gpu) if getattr(args, "gpu", None) else (None if cfg.run.device == "cpu" else gpu("H200"))
    headroom = float(getattr(args, "headroom", 0.1))
    world = int(getattr(args, "world", 1) or 1)
    if getattr(args, "sweep", False):
        batches = [int(b) for b in (args.sweep_batch.split(",") if args.sweep_batch else [cfg.data.batch_size])]
        worlds = sorted({1, world})

        def progress(i: int, n: int, choice: Any) -> None:
            print(f"[{i + 1}/{n}] {choice.label()}", file=sys.stderr, flush=True)

        rows = run_sweep(cfg, sweep_grid(cfg, batch_sizes=batches, worlds=worlds),
                         lambda c, choice: plan_for(c, choice.world, target), gpu=target, headroom=headroom,
                         progress=progress)
        if args.json:
            best = fastest_fitting(rows)
            print(json.dumps({"rows": [r.as_dict() for r in rows], "gpu": target.name if target else None,
                              "headroom": headroom, "fastest_fitting": best.choice.label() if best else None}))
        else:
            print(sweep_table(rows, target, headroom))
        return 0
    plan = plan_for(cfg, world, target)
    if args.json:
        out = plan.as_dict()
        out.update(fits=fits(plan, target, headroom), headroom=headroom,
                   gpu_memory_bytes=target.memory_bytes if target else None)
        print(json.dumps(out))
    else:
        print(describe(plan, target, headroom))
    return 0
