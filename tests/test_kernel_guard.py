"""The kernel tests cannot pass by comparing a kernel's eager twin with itself: without a GPU,
TRITON_INTERPRET set to anything but 1 makes them fail."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the kernels run there, whatever the variable")
@pytest.mark.parametrize("value", ["0"])
def test_kernel_tests_fail_without_the_interpreter(value):
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET=value, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/kernels/test_ops.py::test_kind_names_are_checked",
                           "tests/kernels/test_ops.py::test_kernels_really_run_here"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out[-3000:]
    assert f"TRITON_INTERPRET={value!r}" in out and "2 error" in out and "passed" not in out, out[-3000:]
