"""Kernel tests run the Triton kernels: on a GPU when there is one, else in the Triton interpreter.

TRITON_INTERPRET must be in the environment before `@triton.jit` runs, i.e. before `kernels` is
first imported; this conftest is imported before the test modules of this folder, so setting it
here makes plain `pytest` exercise the kernels too. `test_dispatch.py` fails loudly if something
imported `kernels` earlier, rather than letting every comparison pass eager-twin against eager-twin.
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
