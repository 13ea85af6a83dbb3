"""`soar-fast profile [CONFIG] --steps N [--nsys]`: where a training step's time goes.

Builds the trainer exactly as `soar-fast train` does, runs warm-up steps (compile, CUDA-graph
capture, allocator), then N profiled steps with one named range per phase — data, encode, main
forward, rollout forward, aux kernel, aux forward, backward, optimizer — as `record_function`
ranges (NVTX ranges under `--nsys`). Writes only under `<output_dir>/profile/` (the run folder of
the profiled trainer: its data report, demo data, the trace), never into a training run's own files:
a Chrome/Perfetto trace `trace.json` (open in https://ui.perfetto.dev or chrome://tracing). Prints a
per-phase time table; GPU telemetry (memory, utilisation, power) through NVML when there is a GPU.

The table's times are wall clock with a device sync at every phase boundary: profiling is a
separate run (flux-fast's rule), so the syncs that the training step never does are fine here,
and they make each phase's GPU time land in that phase. "other" is the rest of the step (input
preparation, loss arithmetic). `--nsys` with `nsys` on PATH re-runs this command under
`nsys profile` (capturing only the profiled steps) and prints the report path.

`phases.phase(name)` is the one hook inside the step (backward, which happens inside `soar_step`);
the other phases are timed by wrapping the trainer's pieces, so profiling does not fork the step.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
import time
from typing import Any

import torch
from torch.profiler import record_function

from soar_fast.train.phases import PHASES, PhaseTimer, instrument, timing

log = logging.getLogger(__name__)

_UNDER_NSYS = "SOAR_FAST_UNDER_NSYS"


def phase_table(totals: dict[str, float], step_seconds: float, steps: int) -> str:
    names = [p for p in PHASES if p in totals] + sorted(set(totals) - set(PHASES))
    other = max(step_seconds - sum(totals.values()), 0.0)
    rows = [(n, totals[n]) for n in names] + [("other", other)]
    lines = [f"{'phase':<16} {'ms/step':>10} {'share':>7}", "-" * 35]
    for name, seconds in rows:
        share = 100 * seconds / step_seconds if step_seconds > 0 else 0.0
        lines.append(f"{name:<16} {1e3 * seconds / steps:>10.2f} {share:>6.1f}%")
    lines.append("-" * 35)
    lines.append(f"{'step':<16} {1e3 * step_seconds / steps:>10.2f} {100.0:>6.1f}%")
    return "\n".join(lines)


def _rerun_under_nsys(out_dir: str) -> int:
    report = os.path.join(out_dir, "nsys-report")
    cmd = ["nsys", "profile", "--force-overwrite=true", "-o", report, "--trace=cuda,nvtx,osrt,cudnn,cublas",
           "--capture-range=cudaProfilerApi", "--capture-range-end=stop", sys.executable, "-m", "soar_fast.cli",
           *sys.argv[1:]]
    env = dict(os.environ, **{_UNDER_NSYS: "1"})
    print("running under Nsight Systems: " + " ".join(cmd), flush=True)
    rc = subprocess.call(cmd, env=env)
    print(f"nsys report: {report}.nsys-rep", flush=True)
    return rc


def main_profile(cfg: Any, args: Any) -> int:
    """Profile `args.steps` training steps of `cfg` after warm-up; returns the exit code."""
    import dataclasses

    from soar_fast.accel.telemetry import TelemetrySampler
    from soar_fast.config_io import ConfigError
    from soar_fast.models.folder import check_model_folder
    from soar_fast.train.trainer import Trainer

    steps = int(getattr(args, "steps", 10))
    if steps < 1:
        raise ConfigError(f"profile --steps = {steps}: must be >= 1")
    check_model_folder(cfg.model.path, encodes=cfg.data.cache is None,
                       why="training without data.cache encodes each batch")
    out_dir = os.path.join(cfg.run.output_dir, "profile")
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, output_dir=out_dir))
    os.makedirs(out_dir, exist_ok=True)
    use_nsys = bool(getattr(args, "nsys", False))
    if use_nsys and os.environ.get(_UNDER_NSYS) != "1":
        if shutil.which("nsys"):
            return _rerun_under_nsys(out_dir)
        print("--nsys: `nsys` is not on PATH; profiling with the torch profiler only", flush=True)
        use_nsys = False
    if cfg.run.cpu_threads > 0:
        torch.set_num_threads(cfg.run.cpu_threads)

    trainer = Trainer.build(cfg)
    device = trainer.device
    report = getattr(trainer.model, "soar_accel_report", None)
    print(f"profiling on {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}; "
          f"accel: {report.summary() if report is not None else cfg.accel}", flush=True)
    instrument(trainer)

    def one_step() -> None:
        trainer.train_step()
        trainer.apply_update()
        trainer.step += 1

    warmup = 3 if device.type == "cuda" else 1
    for _ in range(warmup):
        one_step()

    timer = PhaseTimer(device)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    nvtx = torch.autograd.profiler.emit_nvtx() if use_nsys else contextlib.nullcontext()
    with timing(timer), TelemetrySampler(device) as telemetry, \
            torch.profiler.profile(activities=activities) as prof, nvtx:
        if use_nsys:
            torch.cuda.profiler.start()
        timer.sync()
        start = time.perf_counter()
        for _ in range(steps):
            with record_function("step"):
                one_step()
        timer.sync()
        elapsed = time.perf_counter() - start
        if use_nsys:
            torch.cuda.profiler.stop()
    samples_per_step = cfg.data.batch_size * max(int(cfg.train.gradient_accumulation_steps), 1)
    trace = os.path.join(out_dir, "trace.json")
    prof.export_chrome_trace(trace)

    print(f"\n{steps} profiled steps after {warmup} warm-up, "
          f"{steps * samples_per_step / elapsed:.2f} samples/s (with phase syncs)")
    print(phase_table(timer.totals, elapsed, steps))
    if device.type == "cuda":
        print(f"peak memory allocated: {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")
    if telemetry.summary is not None:
        s = telemetry.summary
        print(f"GPU {s.device_name}: memory used max {s.memory_used_max_bytes / 2**30:.2f} GiB, "
              f"utilisation mean {s.utilization_mean_pct:.0f}%, power mean {s.power_mean_w:.0f} W "
              f"(max {s.power_max_w:.0f} W), {s.samples} samples")
    print(f"trace: {trace}")
    return 0
