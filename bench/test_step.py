"""Whole training steps per mode: `reference` (the baseline semantics) vs `fast`, `fast+lora` (the fast
step training a rank-16 LoRA adapter on the attention layers: frozen base, `lora.rank = 16`), plus ablations.

    pytest bench/test_step.py --benchmark-only                       # CPU: tiny preset
    pytest bench/ --benchmark-only --benchmark-json bench/results/step-<gpu>.json   # GPU: sd35m
    bash bench/gpu_campaign.sh                                       # a bare GPU machine (docs/performance.md)

The modes, their construction and the timing live in bench/step_runner.py; `sft` is the plain
flow-matching step (`soar.objective = "sft"`) on the fast switches. On CPU every selected mode of the
preset (and `reference`) is built once and timed interleaved, round by round in rotating order, so every ratio comes
from the same minutes of the machine; on a GPU each mode runs alone (two SD3.5-M training states do
not fit on one card). pytest-benchmark times one callable at a time, so each mode's test hands it the
per-round durations measured together.

extra_info per row: mode, preset, device, timing ("interleaved (N modes)" or "alone"), rounds,
samples_per_s (primary, from the median step), tokens_per_s (samples/s × the image + text tokens of one
sample), ms_per_step (median), ms_min, speedup_paired (median over rounds of reference time / mode
time in the same round), first_step_s (compile, graph capture and the first step) and warmup_s, tflops
(analytic executed FLOPs: every forward, backward and recompute, `soar_fast.accel.flops`), mfu (GPU
only, against the measured bf16 matmul peak), peak_mem_bytes (CUDA max allocated), cpu_peak_bytes (CPU:
the mode's weights + optimizer state + the step's highest net allocation, from the profiler's memory
events), attention_ran (what the attention calls ran, counted) and the resolved switches. The
`reference_encode` row adds the reference's per-step fp32 VAE encode and CLIP/T5 encoding (random-init
encoders of the real sizes on GPU, the demo's tiny ones on CPU) to show what caching saves on top.

The markdown table goes to bench/results/step.md from a GPU run; a CPU run writes
.benchmarks/step-cpu.md and prints it.
"""

from __future__ import annotations

import contextlib
import importlib.util

import pytest
import torch

from bench.conftest import table_path
from bench.step_runner import (
    Inputs,
    build_mode,
    make_row,
    measure_interleaved,
    needs_torchao,
    release,
    step_modes,
    time_interleaved,
)
from bench.step_table import step_table, write_step_table
from soar_fast.accel.flops import measure_peak_flops
from soar_fast.config import RunConfig

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
# (preset, resolution px, batch): CPU tiny at the demo's 64 px; GPU SD3.5-M at 512², B = 4 and 16.
CONFIGS = [("sd35m", 512, 4), ("sd35m", 512, 16)] if CUDA else [("tiny", 64, 4)]
MODES = step_modes(CUDA)
ROUNDS = 10 if CUDA else 20
WARMUP = 3 if CUDA else 1


@pytest.fixture(scope="module")
def step_rows(request):
    """Rows of this module; the markdown table is written (and printed) when the module ends."""
    rows: list[dict] = []
    yield rows
    if not rows:
        return
    path = table_path("step")
    write_step_table(rows, path)
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print(f"\n\nstep benchmark table -> {path}\n{step_table(rows)}", flush=True)


@pytest.fixture(scope="module")
def peak_flops():
    return measure_peak_flops("cuda") if CUDA else None


@pytest.fixture(scope="module", autouse=True)
def cpu_threads():
    # The trainer's setting (run.cpu_threads): one thread is fastest for the tiny model on a busy box.
    before = torch.get_num_threads()
    if not CUDA and RunConfig().cpu_threads > 0:
        torch.set_num_threads(RunConfig().cpu_threads)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def interleaved(request, peak_flops):
    """CPU: rows of every selected mode of a config (with `reference`, the base of the paired ratio),
    measured together the first time a test asks for them; `-k sft` times sft and reference alone."""
    measured: dict[tuple, dict[str, dict]] = {}
    selected = {item.callspec.params["mode"] for item in request.session.items
                if "mode" in getattr(getattr(item, "callspec", None), "params", {})}
    modes = {name: switches for name, switches in MODES.items() if name in selected or name == "reference"}

    def rows_for(preset: str, resolution: int, batch: int) -> dict[str, dict]:
        key = (preset, resolution, batch)
        if key not in measured:
            measured[key] = measure_interleaved(modes, preset, resolution, batch, DEVICE, rounds=ROUNDS,
                                                warmup=WARMUP, peak_flops=peak_flops)
        return measured[key]

    yield rows_for
    measured.clear()
    release(DEVICE)


@pytest.fixture(scope="module")
def alone(peak_flops):
    """GPU: one mode at a time (its own model, optimizer and activations fill the card); "× ref" is then
    the ratio of medians (step_table.with_ratios)."""

    def measure(mode: str, preset: str, resolution: int, batch: int) -> dict:
        release(DEVICE)
        torch._dynamo.reset()   # each mode compiles its own model
        built = None
        try:
            built = build_mode(mode, MODES[mode], preset, resolution, batch, Inputs(preset, resolution, batch, DEVICE),
                               DEVICE, warmup=WARMUP)
            time_interleaved([built], ROUNDS, DEVICE)
            return make_row(built, preset=preset, resolution=resolution, batch=batch, device=DEVICE,
                            peak_flops=peak_flops, reference=None, timing="alone")
        finally:
            built = None
            release(DEVICE)

    return measure


def record(benchmark, row: dict, rows: list[dict]) -> None:
    """Hand the measured per-round durations to pytest-benchmark and keep the row for the table."""
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.stats.stats.data[:] = row["seconds"]
    benchmark.extra_info.update({k: v for k, v in row.items() if k != "seconds"})
    rows.append(row)


@pytest.mark.benchmark(group="step")
@pytest.mark.parametrize("preset,resolution,batch", CONFIGS, ids=[f"{p}-{r}px-B{b}" for p, r, b in CONFIGS])
@pytest.mark.parametrize("mode", list(MODES))
def test_step(benchmark, step_rows, interleaved, alone, mode, preset, resolution, batch):
    if batch > 4 and mode not in ("reference", "fast", "fast+lora"):
        pytest.skip("ablations at B = 4 only")
    if needs_torchao(MODES[mode]) and importlib.util.find_spec("torchao") is None:
        pytest.skip(f"{mode} needs torchao, which is not installed")
    if not CUDA:
        record(benchmark, interleaved(preset, resolution, batch)[mode], step_rows)
        return
    try:
        record(benchmark, alone(mode, preset, resolution, batch), step_rows)
    except torch.cuda.OutOfMemoryError:
        pytest.skip(f"{mode} at B = {batch} does not fit on {torch.cuda.get_device_name()}")
