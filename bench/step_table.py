"""The step benchmark's markdown table: one row per mode, speed-ups against the `reference` row.

Where the modes were timed interleaved, "× ref" is the paired ratio (median over rounds of the
reference's step time over the mode's in the same round); a shared machine's load then cancels out
of the ratio even when it moves the medians."""

from __future__ import annotations

from pathlib import Path

import torch

COLUMNS = [("mode", "mode"), ("preset", "preset"), ("batch", "B"), ("resolution", "px"), ("timing", "timing"),
           ("rounds", "rounds"), ("samples_per_s", "samples/s"), ("speedup", "× ref"),
           ("ms_per_step", "ms/step (median)"), ("ms_min", "ms min"), ("first_step_s", "first step s"),
           ("tokens_per_s", "tokens/s"), ("tflops", "TFLOP/s"), ("mfu", "MFU"),
           ("peak_mem_bytes", "CUDA peak GiB"), ("cpu_peak_bytes", "CPU peak MiB"), ("mem_vs_ref", "mem × ref"),
           ("attention_ran", "attention ran"), ("switches", "switches")]


def _fmt(key: str, value) -> str:
    if value is None:
        return "–"
    if key == "peak_mem_bytes":
        return f"{value / 2**30:.2f}"
    if key == "cpu_peak_bytes":
        return f"{value / 2**20:.1f}"
    if key == "mfu":
        return f"{100 * value:.1f}%"
    if key in ("speedup", "mem_vs_ref"):
        return f"{value:.2f}"
    if key == "tflops":
        return f"{value:.3f}" if value < 10 else f"{value:.1f}"
    if key == "first_step_s":
        return f"{value:.2f}"
    if isinstance(value, float):
        return f"{value:.1f}" if value >= 10 else f"{value:.3f}"
    return str(value)


def _peak(row: dict):
    return row.get("peak_mem_bytes") or row.get("cpu_peak_bytes")


def with_ratios(rows: list[dict]) -> list[dict]:
    """Rows with `speedup` against the reference of the same preset and B (the paired ratio where the
    modes were timed together, else the ratio of medians) and `mem_vs_ref` (peak memory, CUDA or CPU)."""
    ref = {(r["preset"], r["batch"]): r for r in rows if r["mode"] == "reference"}
    out = []
    for r in rows:
        base = ref.get((r["preset"], r["batch"]))
        r = dict(r)
        paired = r.get("speedup_paired")
        r["speedup"] = paired if paired is not None else (
            r["samples_per_s"] / base["samples_per_s"] if base else None)
        mem, base_mem = _peak(r), _peak(base) if base else None
        r["mem_vs_ref"] = mem / base_mem if mem and base_mem else None
        out.append(r)
    return out


def step_table(rows: list[dict]) -> str:
    rows = with_ratios(rows)
    first = rows[0]
    peak = first.get("peak_tflops")
    peak_text = f"{peak:.0f} TFLOP/s" if peak else "– (CPU: no MFU)"
    title = (f"Device: {first['device']}; torch {torch.__version__}; measured bf16 matmul peak {peak_text}; "
             f"K = {first['K']}, text tokens {first['text_tokens']}, image tokens {first['image_tokens']}")
    title += ("; × ref: paired (median over rounds of reference time / mode time in the same round) for "
              "interleaved rows, the ratio of medians for rows timed alone")
    lines = [title, "", "| " + " | ".join(h for _, h in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_fmt(k, r.get(k)) for k, _ in COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_step_table(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(step_table(rows))
    return path
