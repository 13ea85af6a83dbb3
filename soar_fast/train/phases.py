"""Named phases of a training step: `phase(name)` and the `PhaseTimer` that times them.

A leaf (imports torch only), so the step can name its phases without importing the profiler
command. `phase(name)` is always a `record_function` range (an NVTX range under
`torch.autograd.profiler.emit_nvtx`); it is also timed while a `PhaseTimer` is active
(`with timing(timer):`, which `soar-fast profile` enters around its profiled steps).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import torch
from torch.profiler import record_function

PHASES = ("data", "encode", "main forward", "rollout forward", "aux kernel", "aux forward", "backward", "optimizer")


class PhaseTimer:
    """Exclusive wall time per phase name (a nested phase's time is not counted in its parent)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.totals: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self._stack: list[list] = []

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # host sync: profiling only, a phase boundary

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.sync()
        frame = [name, time.perf_counter(), 0.0]
        self._stack.append(frame)
        try:
            yield
        finally:
            self.sync()
            self._stack.pop()
            elapsed = time.perf_counter() - frame[1]
            self.totals[name] = self.totals.get(name, 0.0) + elapsed - frame[2]
            self.counts[name] = self.counts.get(name, 0) + 1
            if self._stack:
                self._stack[-1][2] += elapsed

    def reset(self) -> None:
        self.totals.clear()
        self.counts.clear()


_active: PhaseTimer | None = None


@contextlib.contextmanager
def timing(timer: PhaseTimer) -> Iterator[PhaseTimer]:
    """Time every `phase` entered inside this block with `timer`."""
    global _active
    previous, _active = _active, timer
    try:
        yield timer
    finally:
        _active = previous


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """A named range of the step: a `record_function` (NVTX under emit_nvtx), timed inside `timing`."""
    with record_function(name):
        if _active is None:
            yield
        else:
            with _active(name):
                yield
