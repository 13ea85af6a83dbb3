"""Where a fused kernel runs: Triton on CUDA tensors, the eager twin on CPU.

CPU tensors go to the Triton kernels only when the kernels were *defined* under the Triton
interpreter (`TRITON_INTERPRET=1` in the environment before `kernels` is imported): triton reads
the variable inside `@triton.jit`, so setting it later has no effect and we must not pretend it did.
That is how CI checks the kernels without a GPU (tests/kernels/conftest.py sets it).

Importing `kernels` never requires triton: without it every op runs its eager twin, and the
`triton`/`tl` names below are stand-ins that only let the kernel definitions parse.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import torch

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # wheels without triton (macOS, Windows): eager twins only
    HAS_TRITON = False
    triton = SimpleNamespace(jit=lambda fn: fn, cdiv=lambda a, b: -(-a // b))
    tl = SimpleNamespace(constexpr=object)

# The custom-op namespace shared by every op in this folder.
LIB = "soar_fast"

# Rollout kinds (docs/objective.md §4) as kernel constexprs; order is fixed because kernels switch on it.
KIND_CODES: dict[str, int] = {"ode": 0, "simple": 1, "sde": 2, "flow_sde": 3, "cps": 4}


# Tests set this to fill every kernel output with NaN first, so an element a kernel forgot to
# write fails the comparison instead of passing on whatever torch.empty happened to hold.
POISON_OUTPUTS = os.environ.get("SOAR_FAST_POISON_OUTPUTS") == "1"


def empty(shape, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if POISON_OUTPUTS and dtype.is_floating_point:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def kind_code(kind: str) -> int:
    if kind not in KIND_CODES:
        raise ValueError(f"rollout kind {kind!r} is not one of {sorted(KIND_CODES)}")
    return KIND_CODES[kind]


def is_interpreted(kernel) -> bool:
    """True when `kernel` was defined by the Triton interpreter (runs on CPU tensors)."""
    if not HAS_TRITON:
        return False
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(kernel, InterpretedFunction)


def use_triton(tensor: torch.Tensor, kernel) -> bool:
    """Run `kernel` on `tensor`'s device? CUDA: yes; CPU: only if `kernel` is interpreted."""
    if not HAS_TRITON:
        return False
    if tensor.device.type == "cuda":
        return not is_interpreted(kernel)
    return tensor.device.type == "cpu" and is_interpreted(kernel)


def interpret_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


# Read once, when the kernels are defined (they import this module first).
_INTERPRETING = HAS_TRITON and interpret_requested()


def launch_block(numel: int, cap: int = 1024) -> int:
    """Power-of-two BLOCK covering `numel` up to `cap` (small tensors get no idle lanes).

    1024 elements over 4 warps is 8 fp32 per thread: two 128-bit vector loads per stream. The
    interpreter pays milliseconds per program instance and little per element, so it takes 8x bigger
    blocks (measured: aux points at 3x16x37x37, P=3, K=6 went from 2.2 s to 0.43 s on 2 CPU cores).
    """
    if _INTERPRETING:
        cap *= 8
    return max(16, min(cap, triton.next_power_of_2(numel) if HAS_TRITON else cap))
