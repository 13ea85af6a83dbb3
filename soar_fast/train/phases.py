"""Named phases of a training step: `phase(name)` and the `PhaseTimer` that times them.

A leaf (imports torch only), so the step can name its phases without importing the profiler
command. `phase(name)` is always a `record_function` range (an NVTX range under
`torch.autograd.profiler.emit_nvtx`); it is also timed while a `PhaseTimer` is active
(`with timing(timer):`, which `soar-fast profile` enters around its profiled steps, and the
planner with its memory tracker). `instrument(trainer)` names the phases outside the step by wrapping
the trainer's pieces.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

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


def _timed(fn: Callable, name: str | Callable[[], str]) -> Callable:
    def wrapper(*args, **kwargs):
        with phase(name() if callable(name) else name):
            return fn(*args, **kwargs)
    wrapper.__wrapped__ = fn
    return wrapper


def instrument(trainer: Any) -> None:
    """Name every phase of `trainer`'s steps by wrapping its pieces (instance attributes only)."""
    import dataclasses

    fns = trainer.fns
    calls = {"forward": 0}
    base_forward = fns.forward

    def forward(*args):
        # The main forward is the first grad-carrying forward of a step, aux forwards follow.
        label = "main forward" if calls["forward"] == 0 else "aux forward"
        calls["forward"] += 1
        with phase(label):
            return base_forward(*args)

    trainer.fns = dataclasses.replace(fns, forward=forward,
                                      rollout_forward=_timed(fns.rollout_forward, "rollout forward"),
                                      cfg_aux=_timed(fns.cfg_aux, "aux kernel"))
    base_next = trainer.next_batch

    def next_batch():
        calls["forward"] = 0  # each micro-batch starts with its main forward
        with phase("data"):
            return base_next()

    trainer.next_batch = next_batch
    trainer.clip_gradients = _timed(trainer.clip_gradients, "optimizer")
    trainer.apply_update = _timed(trainer.apply_update, "optimizer")
    encoders = getattr(trainer.source, "encoders", None)
    if encoders is not None:  # on-the-fly encoding inside the data source
        for method in ("encode_pixels", "encode_text"):
            if hasattr(encoders, method):
                setattr(encoders, method, _timed(getattr(encoders, method), "encode"))
