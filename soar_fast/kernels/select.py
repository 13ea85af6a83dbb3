"""`accel.aux_kernel`: which implementation of `fused_aux_points` the trainer calls.

- "eager": `fused_aux_points_reference` (any device; the oracle's float32 twin).
- "triton": `fused_aux_points` (CUDA; on CPU it runs its eager twin unless the Triton interpreter is on).
- "cuda": the CUDA C++ kernel (`soar_fast/kernels/cuda_aux.py`); needs a CUDA device and the built library.
- "auto": "cuda" when AUTO_PREFERS_CUDA_LIB and it can run, else "triton" on CUDA, else "eager".
All four take the same arguments and return the same outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

AuxKernel = Literal["triton", "cuda", "eager", "auto"]
CHOICES: tuple[str, ...] = ("triton", "cuda", "eager", "auto")

# Unmeasured: no GPU has yet run bench/test_cuda_aux.py, whose rows put the CUDA and Triton kernels
# side by side. Both are single-pass and should sit near HBM bandwidth, so "auto" keeps the Triton
# kernel (the one the CPU test suite checks under the interpreter) until an H100/H200 row shows the
# CUDA one ahead; then flip this and record the numbers here.
AUTO_PREFERS_CUDA_LIB = False


def resolve_aux_kernel(choice: str, device: torch.device | str) -> Callable:
    """The `fused_aux_points`-compatible callable for `accel.aux_kernel = choice` on `device`."""
    if choice not in CHOICES:
        raise ValueError(f"accel.aux_kernel = {choice!r} is not one of {', '.join(map(repr, CHOICES))}")
    device = torch.device(device)
    from soar_fast.kernels import cuda_aux  # light: ctypes loading happens on first use

    if choice == "cuda":
        if device.type != "cuda":
            raise RuntimeError(f"accel.aux_kernel = 'cuda' needs a CUDA device, got {device}")
        if not cuda_aux.is_available():
            raise RuntimeError(f"accel.aux_kernel = 'cuda': {cuda_aux.library_status()}")
        return cuda_aux.cuda_fused_aux_points
    if choice == "auto" and device.type == "cuda" and AUTO_PREFERS_CUDA_LIB and cuda_aux.is_available():
        return cuda_aux.cuda_fused_aux_points
    from soar_fast.kernels import aux_points
    from soar_fast.kernels.dispatch import HAS_TRITON

    if choice == "triton" or (choice == "auto" and device.type == "cuda" and HAS_TRITON):
        return aux_points.fused_aux_points
    return aux_points.fused_aux_points_reference
