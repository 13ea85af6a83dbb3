"""The one tolerance table for every numerical comparison in the test suite.

Tests never pick rtol/atol themselves: they call `assert_close(actual, expected, dtype=...)`
or read `TOL[...]`. The reference side of a comparison is computed in float64 where possible.
"""

from __future__ import annotations

import os

import torch

# (rtol, atol) per storage dtype of the tensor under test.
TOL: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-12, 1e-12),
    torch.float32: (1.3e-6, 1e-5),
    # One bf16 ulp is 2**-7 relative (0.0078); allow one rounding step plus accumulated fp32 error.
    torch.bfloat16: (1.6e-2, 1e-2),
    torch.float16: (2e-3, 1e-3),
}

# The Triton interpreter truncates float32 -> bf16 instead of rounding to nearest even, so a
# kernel run there may sit one more bf16 ulp away from an eager twin that rounds.
INTERPRETER_BF16 = (3.2e-2, 2e-2)

# Whole-step comparisons (loss of a fast step vs the eager objective, float32, CPU).
STEP_LOSS_RTOL = 1e-5
# Gradients after a whole step: many reductions in a different order.
STEP_GRAD = (1e-4, 1e-6)

# Statistical checks of random streams (in-kernel Philox noise): a sample mean, std or correlation
# must lie within this many standard errors of its expectation (two-sided false-failure rate ~6e-7
# per check; the draws are seeded, so a pass is also reproducible).
NOISE_Z_BOUND = 5.0


def interpreter_active() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def tolerance(dtype: torch.dtype, *, interpreted: bool = False) -> tuple[float, float]:
    if dtype == torch.bfloat16 and interpreted:
        return INTERPRETER_BF16
    return TOL[dtype]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, *, dtype: torch.dtype | None = None,
                 interpreted: bool = False, msg: str = "") -> None:
    """Compare `actual` with `expected` (any dtype, cast to actual's) using the table above."""
    dtype = dtype or actual.dtype
    rtol, atol = tolerance(dtype, interpreted=interpreted)
    torch.testing.assert_close(actual.to(torch.float64), expected.to(torch.float64), rtol=rtol, atol=atol,
                               msg=(lambda m: f"{msg}\n{m}") if msg else None)
