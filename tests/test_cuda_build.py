"""The CUDA C++ library without a GPU: it builds with cmake + nvcc, ctypes loads it (the CUDA runtime
is linked statically), the loader reports it, and the kernel's per-vector body, run on the host through
`soar_fused_aux_points_host`, matches docs/objective.md §3 in float64 and the eager twin. `kernels` is imported
inside the tests so that tests/kernels/conftest.py can still set TRITON_INTERPRET first.
"""

from __future__ import annotations

import ctypes
import math
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from tests.test_cuda_aux_gpu import SHAPE_SCALAR, SHAPE_VECTOR, check, make_case, reference64

REPO = Path(__file__).resolve().parents[1]
MISSING = [tool for tool in ("nvcc", "cmake") if shutil.which(tool) is None]
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"needs {' and '.join(MISSING)} on PATH")


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    """A fresh build of the default configuration (sm_80 + sm_90), as `.ci/run` does; ~10 s on 2 cores."""
    build = tmp_path_factory.mktemp("cuda-build")
    for cmd in (["cmake", "-S", str(REPO), "-B", str(build)], ["cmake", "--build", str(build), "-j2"]):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    path = build / "libsoar_kernels.so"
    assert path.is_file(), f"the build did not produce {path}"
    return path


@pytest.fixture
def loaded(library, monkeypatch):
    from soar_fast.kernels import cuda_aux

    monkeypatch.setenv(cuda_aux.ENV_VAR, str(library))
    cuda_aux.reset_cache()
    yield cuda_aux
    cuda_aux.reset_cache()


def test_library_exports_the_c_abi_and_hides_cudart(library):
    lib = ctypes.CDLL(str(library))
    for name in ("soar_fused_aux_points", "soar_fused_aux_points_host", "soar_kernels_abi_version",
                 "soar_kernels_version", "soar_error_string"):
        assert hasattr(lib, name), f"{library.name} does not export {name}"
    assert not hasattr(lib, "cudaLaunchKernel"), "the static CUDA runtime's symbols leak out of the library"
    if shutil.which("readelf"):
        needed = subprocess.run(["readelf", "-d", str(library)], capture_output=True, text=True, check=True).stdout
        assert "libcudart" not in needed, f"libcudart must be linked statically:\n{needed}"


def test_loader_reports_the_library(loaded, library):
    status = loaded.library_status()
    assert loaded.is_available(), status
    assert f"found at {library}" in status and "abi 1" in status and "archs 80,90" in status, status
    assert loaded.library_path() == library


def test_loader_says_how_to_build_when_missing(monkeypatch, tmp_path):
    from soar_fast.kernels import cuda_aux

    monkeypatch.setenv(cuda_aux.ENV_VAR, str(tmp_path / "nowhere.so"))
    cuda_aux.reset_cache()
    try:
        assert not cuda_aux.is_available()
        assert "not built" in cuda_aux.library_status() and cuda_aux.BUILD_COMMAND in cuda_aux.library_status()
        args, kwargs = make_case(SHAPE_SCALAR, torch.float32, 1, 1, "ode", "cpu")
        with pytest.raises(RuntimeError, match="CUDA tensors only"):
            cuda_aux.cuda_fused_aux_points(*args, **kwargs)
    finally:
        cuda_aux.reset_cache()


def test_cpu_tensors_raise_a_clear_error(loaded):
    args, kwargs = make_case(SHAPE_SCALAR, torch.float32, 3, 2, "sde", "cpu")
    with pytest.raises(RuntimeError, match="CUDA tensors only; z_t0 is on cpu"):
        loaded.cuda_fused_aux_points(*args, **kwargs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("kind", ["ode", "simple", "sde", "flow_sde", "cps"])
@pytest.mark.parametrize("shape,P,K", [(SHAPE_VECTOR, 3, 6), (SHAPE_SCALAR, 1, 6), (SHAPE_SCALAR, 3, 1),
                                       (SHAPE_SCALAR, 3, 6)], ids=["vector-P3K6", "P1K6", "P3K1", "P3K6"])
def test_kernel_body_on_host_matches_float64_and_eager(loaded, shape, P, K, kind, dtype):
    from soar_fast.kernels.aux_points import fused_aux_points_reference

    args, kwargs = make_case(shape, dtype, P, K, kind, "cpu")
    out_shape = (args[7].shape[0],) + shape[1:]
    outs = [torch.full(out_shape, math.nan, dtype=d) for d in (dtype, torch.float32)]  # NaN-poisoned
    loaded._launch_into(*outs, *args, **kwargs, host=True)
    check(outs, reference64(args, kwargs), args[7], what="host kernel body vs float64")
    check(outs, fused_aux_points_reference(*args, **kwargs), args[7], what="host kernel body vs eager twin")


def test_kernel_body_on_host_unaligned_and_bf16_out(loaded):
    args, kwargs = make_case(SHAPE_VECTOR, torch.bfloat16, 3, 6, "flow_sde", "cpu", seed=3)
    out_shape = (args[7].shape[0],) + SHAPE_VECTOR[1:]
    outs = [torch.full((math.prod(out_shape) + 1,), math.nan, dtype=d)[1:].view(out_shape)
            for d in (torch.bfloat16, torch.bfloat16)]  # 2 bytes off 16-byte alignment: scalar path
    loaded._launch_into(*outs, *args, **kwargs, host=True)
    check(outs, reference64(args, kwargs), args[7], what="unaligned bf16 outputs")


def test_resolve_aux_kernel():
    from soar_fast.kernels import aux_points, cuda_aux
    from soar_fast.kernels.select import resolve_aux_kernel

    assert resolve_aux_kernel("eager", "cpu") is aux_points.fused_aux_points_reference
    assert resolve_aux_kernel("auto", "cpu") is aux_points.fused_aux_points_reference
    assert resolve_aux_kernel("triton", "cpu") is aux_points.fused_aux_points
    with pytest.raises(RuntimeError, match="needs a CUDA device"):
        resolve_aux_kernel("cuda", "cpu")
    with pytest.raises(ValueError, match="accel.aux_kernel"):
        resolve_aux_kernel("cudnn", "cpu")
    assert callable(cuda_aux.cuda_fused_aux_points)
