"""Shared benchmark fixtures: the device, its measured copy bandwidth, honest timing, a markdown table.

Timing on CUDA: each round runs the op once per input copy and synchronises once, so the host sync
is amortised over many launches; the copies together span >= 256 MiB (4x an H200's 60 MiB L2), so
inputs come from HBM, not L2, and "% of measured bandwidth" compares like with like.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import pytest
import torch

RESULTS_DIR = Path(os.environ.get("SOAR_FAST_BENCH_RESULTS", Path(__file__).parent / "results"))


def table_path(stem: str) -> Path:
    """Where a run's markdown table goes: bench/results/ holds GPU measurements only (they are
    committed); a CPU run writes beside pytest-benchmark's own files in .benchmarks/."""
    if torch.cuda.is_available():
        return RESULTS_DIR / f"{stem}.md"
    return Path(__file__).resolve().parents[1] / ".benchmarks" / f"{stem}-cpu.md"
COLD_SPAN_BYTES = 256 * 2**20


@pytest.fixture(scope="session")
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(scope="session")
def device_name(device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} threads)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # host sync: the end of a timed region


@pytest.fixture(scope="session")
def measured_bandwidth(device) -> float:
    """GB/s of a large torch copy (read + write counted), measured once per session on this device."""
    nbytes = 2**30 if device.type == "cuda" else 2**27
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    _sync(device)
    reps = 20 if device.type == "cuda" else 5
    start = time.perf_counter()
    for _ in range(reps):
        dst.copy_(src)
    _sync(device)
    return 2 * nbytes * reps / (time.perf_counter() - start) / 1e9


@pytest.fixture(scope="session")
def hbm_bandwidth(measured_bandwidth) -> float:
    """The same probe under the name bench/test_cuda_aux.py asks for (on CUDA the copy is HBM-bound)."""
    return measured_bandwidth


def input_copies(bytes_per_call: int, device: torch.device) -> int:
    """How many input sets make one timed round stream >= COLD_SPAN_BYTES (1 on CPU: no L2 to dodge)."""
    return max(1, math.ceil(COLD_SPAN_BYTES / max(bytes_per_call, 1))) if device.type == "cuda" else 1


class Recorder:
    """Times `fn(*inputs[i])` over every input set per round and records bandwidth in extra_info.

    graph=True replays the round as one CUDA graph: GPU time only, as in the compiled + graphed step;
    otherwise per-launch host overhead (custom-op dispatch, ~µs) is in the number, as in an eager step.
    """

    def __init__(self, benchmark, device, device_name, bandwidth, table):
        self.benchmark, self.device, self.name, self.bw, self.table = benchmark, device, device_name, bandwidth, table

    def __call__(self, fn, inputs: list[tuple], *, bytes_per_call: int, row: dict, graph: bool = False) -> None:
        def launches():
            for args in inputs:
                fn(*args)

        launches()  # warm-up: triton compile, allocator
        _sync(self.device)
        graph = graph and self.device.type == "cuda"
        if graph:
            cuda_graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(cuda_graph):
                launches()
            launches = cuda_graph.replay

        def one_round():
            launches()
            _sync(self.device)

        cuda = self.device.type == "cuda"
        self.benchmark.pedantic(one_round, rounds=20 if cuda else 3, warmup_rounds=2 if cuda else 0)
        per_call = self.benchmark.stats.stats.median / len(inputs)
        gbps = bytes_per_call / per_call / 1e9
        info = dict(row, device=self.name, timing="cuda graph" if graph else "launches",
                    bytes_per_call=bytes_per_call, us_per_call=per_call * 1e6, gb_per_s=gbps,
                    measured_bw_gb_per_s=self.bw, pct_of_measured_bw=100 * gbps / self.bw,
                    calls_per_round=len(inputs))
        self.benchmark.extra_info.update(info)
        self.table.append(info)


@pytest.fixture(scope="session")
def results_table():
    """Rows of this session; written as a markdown table at `table_path("kernels")`."""
    rows: list[dict] = []
    yield rows
    if rows:
        write_markdown_table(rows, table_path("kernels"))


@pytest.fixture
def record(benchmark, device, device_name, measured_bandwidth, results_table) -> Recorder:
    return Recorder(benchmark, device, device_name, measured_bandwidth, results_table)


def write_markdown_table(rows: list[dict], path: Path) -> None:
    cols = ["kernel", "impl", "timing", "shape", "rows", "dtype", "us_per_call", "bytes_per_call", "gb_per_s",
            "pct_of_measured_bw"]
    head = {"bytes_per_call": "MB/call", "us_per_call": "µs/call", "gb_per_s": "GB/s", "pct_of_measured_bw": "% BW"}

    def fmt(c, v):
        if c == "bytes_per_call":
            return f"{v / 1e6:.1f}"
        return f"{v:.1f}" if isinstance(v, float) else str(v)

    title = (f"Device: {rows[0]['device']}; measured copy bandwidth {rows[0]['measured_bw_gb_per_s']:.0f} GB/s; "
             f"torch {torch.__version__}")
    lines = [title, "",
             "| " + " | ".join(head.get(c, c) for c in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(c, r[c]) for c in cols) + " |" for r in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
