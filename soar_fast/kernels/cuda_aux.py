"""The CUDA C++ twin of `soar_fast.kernels.aux_points.fused_aux_points`, loaded from libsoar_kernels.so with ctypes.

Build the library once from the repository root with `cmake -B build && cmake --build build`
(docs/cuda.md); `pip install` never needs CUDA. The library is looked up, on first use, at
`$SOAR_FAST_CUDA_LIB` (a file or a folder; when set, nothing else is tried, so a wrong value is
reported rather than silently replaced by another build), else in CMake's output folder
`<repo>/build/` when the package runs from its checkout, then next to this file; the error names
every place it looked.

`cuda_fused_aux_points` has `fused_aux_points`'s signature and semantics (soar_fast/kernels/aux_points.py).
Its fast path takes the five big inputs in one dtype, float32 or bfloat16; a mix of the two is
upcast to float32 first (exact, but a copy), as are non-contiguous inputs (`.contiguous()`, as the
Triton launcher does). Outputs can be stored in float32 or bfloat16 only.
"""

from __future__ import annotations

import ctypes
import functools
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from soar_fast.checkout import source_checkout
from soar_fast.kernels.aux_points import aux_outputs, aux_points_fake, check_aux_shapes
from soar_fast.kernels.dispatch import LIB, kind_code

LIB_NAME = "libsoar_kernels.so"
ENV_VAR = "SOAR_FAST_CUDA_LIB"
BUILD_COMMAND = "cmake -B build && cmake --build build"
ABI_VERSION = 1  # SOAR_KERNELS_ABI in soar_fast/kernels/cuda/soar_kernels.h
_DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1}  # enum SoarDtype

_p, _i64, _f32, _int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
_ARGTYPES = [_p] * 12 + [_i64] * 4 + [_f32, _int, _f32, _f32, _int, _int, _int, _p]


@dataclass(frozen=True)
class _Library:
    lib: ctypes.CDLL | None
    path: Path | None
    message: str


def candidate_paths() -> list[Path]:
    """Where the library is looked for, in order: `$SOAR_FAST_CUDA_LIB` alone when set, else CMake's
    output folder `<repo>/build/` (when this package runs from its checkout), then next to this file."""
    env = os.environ.get(ENV_VAR)
    if env:
        path = Path(env)
        return [path / LIB_NAME if path.is_dir() else path]
    repo = source_checkout()
    return ([repo / "build" / LIB_NAME] if repo is not None else []) + [Path(__file__).resolve().parent / LIB_NAME]


@functools.cache
def _load() -> _Library:
    paths = candidate_paths()
    for path in paths:
        if not path.is_file():
            continue
        try:
            lib = ctypes.CDLL(str(path))
            abi = lib.soar_kernels_abi_version()
        except (OSError, AttributeError) as err:
            return _Library(None, path, f"CUDA kernel library at {path} cannot be loaded ({err}); "
                                        f"rebuild it: `{BUILD_COMMAND}`")
        if abi != ABI_VERSION:
            return _Library(None, path, f"CUDA kernel library at {path} has ABI {abi}, this package needs "
                                        f"{ABI_VERSION}; rebuild it: `{BUILD_COMMAND}`")
        lib.soar_fused_aux_points.argtypes = _ARGTYPES
        lib.soar_fused_aux_points.restype = _int
        lib.soar_fused_aux_points_host.argtypes = _ARGTYPES[:-1]
        lib.soar_fused_aux_points_host.restype = _int
        lib.soar_kernels_version.restype = ctypes.c_char_p
        lib.soar_error_string.restype = ctypes.c_char_p
        version = lib.soar_kernels_version().decode()
        return _Library(lib, path, f"CUDA kernel library found at {path} ({version})")
    where = ", ".join(str(p) for p in paths)
    if os.environ.get(ENV_VAR):
        hint = f"{ENV_VAR} names no file; point it at the {LIB_NAME} that `{BUILD_COMMAND}` wrote"
    elif source_checkout() is None:
        hint = (f"this package is installed outside its repository, so there is no <repo>/build/ to look in: "
                f"run `{BUILD_COMMAND}` in a soar-fast checkout and set {ENV_VAR} to build/{LIB_NAME}")
    else:
        hint = f"run `{BUILD_COMMAND}` in the repository root or set {ENV_VAR}"
    return _Library(None, None, f"CUDA kernel library not built (looked for {where}): {hint}")


def library_status() -> str:
    """One line for logs and errors: where the library was found (and its build), or how to build it."""
    return _load().message


def library_path() -> Path | None:
    return _load().path if _load().lib is not None else None


def is_available() -> bool:
    return _load().lib is not None


def reset_cache() -> None:
    """Forget the loaded library (tests change $SOAR_FAST_CUDA_LIB)."""
    _load.cache_clear()


def _library() -> ctypes.CDLL:
    loaded = _load()
    if loaded.lib is None:
        raise RuntimeError(loaded.message)
    return loaded.lib


def _validate(z_t0, v_uncond, v_cond, z0, z1, sigma0, sigma1, sigma_prime, row_table, path_noise, out_dtype):
    """fused_aux_points' own argument checks, plus the devices and dtypes this kernel can use."""
    P = check_aux_shapes("cuda_fused_aux_points", z_t0, v_uncond, v_cond, z0, z1, sigma0, sigma1, sigma_prime,
                         row_table, path_noise)
    named = [("z_t0", z_t0), ("v_uncond", v_uncond), ("v_cond", v_cond), ("z0", z0), ("z1", z1),
             ("sigma0", sigma0), ("sigma1", sigma1), ("sigma_prime", sigma_prime), ("row_table", row_table)]
    named += [("path_noise", path_noise)] if P > 1 else []
    for name, t in named:
        if t.device.type != "cuda":
            raise RuntimeError(f"cuda_fused_aux_points runs on CUDA tensors only; {name} is on {t.device} "
                               f"(set accel.aux_kernel to 'eager' or 'triton' there)")
        if t.device != z_t0.device:
            raise ValueError(f"cuda_fused_aux_points: {name} is on {t.device}, z_t0 on {z_t0.device}")
    for name, t in named[:5] + named[9:]:
        if t.dtype not in _DTYPE_CODES:
            raise ValueError(f"cuda_fused_aux_points: {name} is {t.dtype}; the CUDA kernel reads float32 or "
                             f"bfloat16 (use accel.aux_kernel = 'triton' for others)")
    stored = [out_dtype or z_t0.dtype, out_dtype or torch.float32]
    if any(d not in _DTYPE_CODES for d in stored):
        raise ValueError(f"cuda_fused_aux_points: out_dtype {out_dtype} (latents {stored[0]}); the CUDA kernel "
                         f"stores float32 or bfloat16")


def _launch_into(latents, targets, z_t0, v_uncond, v_cond, z0, z1, sigma0, sigma1, sigma_prime, row_table,
                 path_noise, *, cfg_scale, kind, noise_scale, sigma_hat_at_one, host=False):
    """Fill preallocated `latents`, `targets` (N,C,H,W); `host=True` runs the kernel body on CPU tensors."""
    B, P, K = row_table.shape
    big = [z_t0, v_uncond, v_cond, z0, z1] + ([path_noise] if P > 1 else [])
    in_dtype = torch.bfloat16 if all(t.dtype == torch.bfloat16 for t in big) else torch.float32
    big = [t.to(in_dtype).contiguous() for t in big]
    small = [sigma0.float().contiguous(), sigma1.float().contiguous(), sigma_prime.float().contiguous(),
             row_table.to(torch.int32).contiguous()]
    for name, out in (("latents", latents), ("targets", targets)):
        if not out.is_contiguous() or out.shape != (sigma_prime.shape[0],) + tuple(z_t0.shape[1:]):
            raise ValueError(f"cuda_fused_aux_points: {name} {tuple(out.shape)} must be contiguous "
                             f"(N,C,H,W) = {(sigma_prime.shape[0],) + tuple(z_t0.shape[1:])}")
    ptrs = [t.data_ptr() for t in big[:5]] + [big[5].data_ptr() if P > 1 else None]
    ptrs += [t.data_ptr() for t in small] + [latents.data_ptr(), targets.data_ptr()]
    args = ptrs + [B, P, K, z_t0[0].numel(), float(cfg_scale), kind_code(kind), float(noise_scale),
                   float(sigma_hat_at_one), _DTYPE_CODES[in_dtype], _DTYPE_CODES[latents.dtype],
                   _DTYPE_CODES[targets.dtype]]
    lib = _library()
    if host:
        code = lib.soar_fused_aux_points_host(*args)
    else:
        with torch.cuda.device(z_t0.device):  # the library's runtime uses the thread's current context
            code = lib.soar_fused_aux_points(*args, torch.cuda.current_stream().cuda_stream)
    if code != 0:
        raise RuntimeError(f"soar_fused_aux_points failed: {lib.soar_error_string(code).decode()} "
                           f"(cudaError {code}); {library_status()}")


@torch.library.custom_op(f"{LIB}::cuda_aux_points", mutates_args=())
def _cuda_aux_points_op(z_t0: torch.Tensor, v_uncond: torch.Tensor, v_cond: torch.Tensor, z0: torch.Tensor,
                        z1: torch.Tensor, sigma0: torch.Tensor, sigma1: torch.Tensor,
                        sigma_prime: torch.Tensor, row_table: torch.Tensor, path_noise: torch.Tensor | None,
                        cfg_scale: float, kind: str, noise_scale: float, sigma_hat_at_one: float,
                        out_dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor]:
    latents, targets = aux_outputs(z_t0, sigma_prime, out_dtype)
    if latents.numel():
        _launch_into(latents, targets, z_t0, v_uncond, v_cond, z0, z1, sigma0, sigma1, sigma_prime, row_table,
                     path_noise, cfg_scale=cfg_scale, kind=kind, noise_scale=noise_scale,
                     sigma_hat_at_one=sigma_hat_at_one)
    return latents, targets


_cuda_aux_points_op.register_fake(aux_points_fake)


def cuda_fused_aux_points(z_t0, v_uncond, v_cond, z0, z1, sigma0, sigma1, sigma_prime, row_table, path_noise,
                          *, cfg_scale: float, kind: str, noise_scale: float, sigma_hat_at_one: float,
                          out_dtype: torch.dtype | None = None):
    """`fused_aux_points` on the CUDA C++ kernel: same arguments, same outputs (see soar_fast/kernels/aux_points.py).

    Raises RuntimeError for CPU tensors or when the library is not built (with the build command).
    """
    kind_code(kind)
    _validate(z_t0, v_uncond, v_cond, z0, z1, sigma0, sigma1, sigma_prime, row_table, path_noise, out_dtype)
    _library()
    P = row_table.shape[1]
    return _cuda_aux_points_op(z_t0, v_uncond, v_cond, z0, z1, sigma0, sigma1, sigma_prime, row_table,
                               path_noise if P > 1 else None, float(cfg_scale), kind, float(noise_scale),
                               float(sigma_hat_at_one), out_dtype)
