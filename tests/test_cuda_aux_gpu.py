"""The CUDA C++ aux-point kernel against a float64 evaluation of docs/objective.md §3, the eager twin and Triton.

Targets are compared as σ'·target (= z' − z0, what the kernels actually round): the division by σ'
(down to ~0.003 on the SD3 grid) multiplies a float32 ulp of z' by ~300, so every float32
implementation, eager included, sits that far from float64 on the raw targets. The tolerance stays
the table's. `make_case` and `reference64` are shared with tests/test_cuda_build.py (the same kernel
body run on the host) and bench/test_cuda_aux.py.
"""

from __future__ import annotations

import math

import pytest
import torch

from soar_fast.soar import aux_layout
from tests.kernels._data import CFG_SCALE, GRID, KINDS, NOISE_SCALE, SAMPLING_STEPS, T0
from tests.tolerances import assert_close

SHAPE_VECTOR = (3, 16, 37, 37)  # C·H·W = 21904: 16-byte vectors, odd H, W
SHAPE_SCALAR = (3, 3, 5, 7)  # C·H·W = 105: not a multiple of 4 or 8, the scalar fallback


def make_case(shape, dtype, P: int, K: int, kind: str, device, *, seed: int = 0):
    """(args, kwargs) for fused_aux_points: random latents, the SD3 grid's sigmas, a real aux layout."""
    B = shape[0]
    gen = torch.Generator().manual_seed(seed)
    t0 = T0.repeat(math.ceil(B / len(T0)))[:B]  # σ0 == 1, interior, and t1 == 0 (left out of paths ≥ 1)
    fracs = torch.rand((P, K, B), generator=gen)
    fracs.view(-1)[0] = 0.0  # the endpoint itself, α = 0
    lay = aux_layout(t0, GRID, num_sampling_steps=SAMPLING_STEPS, fracs=fracs)
    big = [torch.randn(shape, generator=gen) for _ in range(5)]
    noise = torch.randn((P - 1,) + tuple(shape), generator=gen) if P > 1 else None
    args = tuple(t.to(device, dtype) for t in big) + tuple(
        t.to(device) for t in (lay.sigma0, lay.sigma1, lay.sigma_prime, lay.row_table))
    args += (None if noise is None else noise.to(device, dtype),)
    kwargs = {"cfg_scale": CFG_SCALE, "kind": kind, "noise_scale": NOISE_SCALE,
              "sigma_hat_at_one": GRID.sigma_hat_at_one}
    return args, kwargs


def _step64(kind, z, v, eps, s0, s1, eta, s_hat_one):
    d = s1 - s0
    if kind == "ode":
        return z + v * d
    if kind == "simple":
        return z + v * d + eta * d.abs().sqrt() * eps
    x0 = z - s0 * v
    if kind == "sde":
        return (1 - s1) * x0 + s1 * eps
    if kind == "flow_sde":
        s_hat = torch.where(s0 == 1, torch.full_like(s0, s_hat_one), s0)
        std = eta * (s0 / (1 - s_hat)).sqrt()
        mean = z * (1 + std**2 / (2 * s0) * d) + v * (1 + std**2 * (1 - s0) / (2 * s0)) * d
        return mean + std * (-d).clamp_min(0).sqrt() * eps
    std = s1 * math.sin(eta * math.pi / 2)  # cps
    return (1 - s1) * x0 + (s1**2 - std**2).clamp_min(0).sqrt() * (z + (1 - s0) * v) + std * eps


def reference64(args, kwargs):
    """docs/objective.md §3 step 4 in float64, row by row from row_table: (latents, targets) (N,C,H,W)."""
    z, vu, vc, z0, z1, sigma0, sigma1, sigma_prime, row_table, noise = (
        None if t is None else t.cpu().double() for t in args)
    col = (-1, 1, 1, 1)
    s0, s1 = sigma0.view(col), sigma1.view(col)
    v = vu + kwargs["cfg_scale"] * (vc - vu)
    ends = [z + v * (s1 - s0)]
    for p in range(1, row_table.shape[1]):
        ends.append(_step64(kwargs["kind"], z, v, noise[p - 1], s0, s1, kwargs["noise_scale"],
                            kwargs["sigma_hat_at_one"]))
    shape = (sigma_prime.shape[0],) + tuple(z.shape[1:])
    latents = torch.full(shape, math.nan, dtype=torch.float64)
    targets = latents.clone()
    for (b, p, k), row in zip(torch.cartesian_prod(*map(torch.arange, row_table.shape)).tolist(),
                              row_table.long().flatten().tolist()):
        if row < 0:
            continue
        sp = sigma_prime[row]
        alpha = ((sp - sigma1[b]) / (1 - sigma1[b]).clamp_min(1e-8)).clamp(0, 1)
        latents[row] = (1 - alpha) * ends[p][b] + alpha * z1[b]
        targets[row] = (latents[row] - z0[b]) / sp
    return latents, targets


def check(actual, expected, sigma_prime, *, what: str):
    """Latents at their dtype's tolerance; targets as σ'·target (see the module docstring)."""
    (lat, tgt), (lat_ref, tgt_ref) = actual, expected
    scale = sigma_prime.detach().cpu().double().view(-1, 1, 1, 1)
    assert_close(lat.cpu(), lat_ref.cpu(), msg=f"{what}: latents")
    assert_close((tgt.cpu().double() * scale).to(tgt.dtype), tgt_ref.cpu().double() * scale,
                 msg=f"{what}: σ'·targets")


cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture
def cuda_kernel(monkeypatch):
    """The CUDA launcher, with NaN-poisoned outputs so any element it leaves unwritten fails."""
    import soar_fast.kernels.dispatch
    from soar_fast.kernels import cuda_aux

    if not cuda_aux.is_available():
        pytest.skip(cuda_aux.library_status())
    monkeypatch.setattr(soar_fast.kernels.dispatch, "POISON_OUTPUTS", True)
    return cuda_aux.cuda_fused_aux_points


@cuda_only
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("P,K", [(1, 1), (1, 6), (3, 1), (3, 6)])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [SHAPE_VECTOR, SHAPE_SCALAR], ids=["vector", "scalar"])
def test_cuda_matches_float64_eager_and_triton(cuda_kernel, shape, kind, P, K, dtype):
    from soar_fast.kernels.aux_points import fused_aux_points, fused_aux_points_reference

    args, kwargs = make_case(shape, dtype, P, K, kind, "cuda")
    out = cuda_kernel(*args, **kwargs)
    torch.cuda.synchronize()
    assert out[0].dtype == dtype and out[1].dtype == torch.float32
    sp = args[7]
    check(out, reference64(args, kwargs), sp, what="cuda vs float64")
    check(out, fused_aux_points_reference(*args, **kwargs), sp, what="cuda vs eager twin")
    check(out, fused_aux_points(*args, **kwargs), sp, what="cuda vs triton")


@cuda_only
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_cuda_unaligned_and_mixed_storage(cuda_kernel, dtype):
    """Pointers off 16-byte alignment take the scalar path; out_dtype and mixed input dtypes still agree."""
    from soar_fast.kernels import cuda_aux

    args, kwargs = make_case(SHAPE_VECTOR, dtype, 3, 6, "flow_sde", "cuda", seed=3)
    ref = reference64(args, kwargs)
    shape = (args[7].shape[0],) + SHAPE_VECTOR[1:]
    outs = [torch.full((math.prod(shape) + 1,), math.nan, dtype=d, device="cuda")[1:].view(shape)
            for d in (dtype, torch.float32)]
    cuda_aux._launch_into(*outs, *args, **kwargs)
    check(outs, ref, args[7], what="unaligned outputs")

    out = cuda_kernel(*args, **kwargs, out_dtype=torch.bfloat16)
    assert out[0].dtype == out[1].dtype == torch.bfloat16
    check(out, ref, args[7], what="out_dtype=bf16")

    mixed = (args[0], args[1], args[2], args[3].float(), args[4]) + args[5:]  # z0 float32, exact upcast
    check(cuda_kernel(*mixed, **kwargs), ref, args[7], what="mixed input dtypes")
