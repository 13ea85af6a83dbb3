"""Kernel tests run the Triton kernels: on a GPU when there is one, else in the Triton interpreter.

TRITON_INTERPRET must be in the environment before `@triton.jit` runs, i.e. before
`soar_fast.kernels` is first imported; this conftest is imported before the test modules of this
folder, so setting it here makes plain `pytest` exercise the kernels too. Without a GPU, every test
here fails (never skips) when the kernels would not run — TRITON_INTERPRET set to anything but 1, or
`soar_fast.kernels` imported before this file (`test_ops.py::test_kernels_really_run_here` names
which) — rather than letting every comparison pass eager twin against eager twin. Without triton
installed (platforms it does not support) there is nothing to run and they compare the twins only.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Non-power-of-two shapes (C·H·W = 21904 spans several blocks with a ragged tail) and a small one.
SHAPE_REQUIRED = (3, 16, 37, 37)
SHAPE_SMALL = (3, 4, 11, 13)


@pytest.fixture(autouse=True)
def kernels_run_here():
    """No GPU and triton installed: the interpreter must be on, or these tests prove nothing."""
    from soar_fast.kernels import dispatch

    if not torch.cuda.is_available() and dispatch.HAS_TRITON and not dispatch.interpret_requested():
        pytest.fail(f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET')!r}: without a GPU the kernel tests need "
                    "the Triton interpreter (unset it, or set it to 1); otherwise they would compare each "
                    "kernel's eager twin with itself", pytrace=False)


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    """Every kernel output starts as NaN, so an element no program wrote fails the comparison."""
    import soar_fast.kernels.dispatch

    monkeypatch.setattr(soar_fast.kernels.dispatch, "POISON_OUTPUTS", True)


@pytest.fixture
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture
def interpreted() -> bool:
    from tests.tolerances import interpreter_active

    return interpreter_active()
