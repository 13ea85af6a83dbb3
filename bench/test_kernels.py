"""Each fused kernel vs its eager twin at SD3.5-M latent sizes, bandwidth in extra_info.

    pytest bench/test_kernels.py --benchmark-only          # GPU; CPU runs the smallest eager rows only

"rows" is B·K, the aux rows of one step (K = 6 points, P = 1 path, so B = rows / 6 samples); the
sampler's CFG step runs on `rows` samples. Storage is bf16 (training), targets float32. Bytes are the
unique bytes an op must move (every input read once, every output written once), so GB/s is an
effective bandwidth and "% BW" compares it with a plain copy on the same device.
"""

from __future__ import annotations

import pytest
import torch

from bench.conftest import input_copies
from soar_fast.kernels.aux_points import fused_aux_points, fused_aux_points_reference
from soar_fast.kernels.cfg_rollout import cfg_rollout, cfg_rollout_reference
from soar_fast.kernels.flow_loss import (
    flow_loss,
    flow_loss_from_latents,
    flow_loss_grad_reference,
    flow_loss_reference,
    latent_targets_reference,
)

LATENTS = [(16, 64, 64), (16, 128, 128)]  # SD3.5-M at 512² and 1024²
ROWS = [24, 96, 192]
K = 6
BF16, F32 = 2, 4  # bytes per element
OPTS = {"cfg_scale": 4.5, "noise_scale": 0.5, "sigma_hat_at_one": 0.999666}
PARAMS = pytest.mark.parametrize("latent,rows", [(lat, r) for lat in LATENTS for r in ROWS],
                                 ids=[f"{'x'.join(map(str, lat))}-rows{r}" for lat in LATENTS for r in ROWS])
IMPL = pytest.mark.parametrize("impl", ["triton", "eager"])


def applicable(impl, device, latent, rows):
    if impl == "triton" and device.type != "cuda":
        pytest.skip("Triton kernels are timed on CUDA only (the CPU interpreter's timings mean nothing)")
    if device.type == "cpu" and (latent, rows) != (LATENTS[0], ROWS[0]):
        pytest.skip("CPU: only the smallest eager case, to keep the run short")


def meta(kernel, impl, latent, rows, dtype) -> dict:
    return {"kernel": kernel, "impl": impl, "shape": "x".join(map(str, latent)), "rows": rows, "dtype": dtype}


def randn(*shape, device, dtype=torch.bfloat16):
    return torch.randn(shape, device=device, dtype=dtype)




@pytest.mark.benchmark(group="cfg_rollout")
@pytest.mark.parametrize("kind", ["ode", "flow_sde"])
@IMPL
@PARAMS
def test_cfg_rollout(benchmark, record, device, impl, latent, rows, kind):
    applicable(impl, device, latent, rows)
    numel = rows * latent[0] * latent[1] * latent[2]
    streams = 4 if kind == "ode" else 5  # z, v_u, v_c (+ noise) in, z' out
    nbytes = streams * numel * BF16
    sigma0 = torch.rand(rows, device=device) * 0.9 + 0.1
    inputs = [(randn(rows, *latent, device=device), randn(rows, *latent, device=device),
               randn(rows, *latent, device=device), sigma0, sigma0 * 0.9,
               None if kind == "ode" else randn(rows, *latent, device=device))
              for _ in range(input_copies(nbytes, device))]
    fn = cfg_rollout if impl == "triton" else cfg_rollout_reference

    def run(z, vu, vc, s0, s1, noise):
        return fn(z, vu, vc, s0, s1, kind=kind, noise=noise, **OPTS)

    record(run, inputs, bytes_per_call=nbytes, graph=True,
           row=meta(f"cfg_rollout[{kind}]", impl, latent, rows, "bf16"))


@pytest.mark.benchmark(group="aux_points")
@IMPL
@PARAMS
def test_aux_points(benchmark, record, device, impl, latent, rows):
    applicable(impl, device, latent, rows)
    B = rows // K
    per_sample = latent[0] * latent[1] * latent[2]
    nbytes = 5 * B * per_sample * BF16 + rows * per_sample * (BF16 + F32)  # 5 inputs; latents + targets
    table = torch.arange(rows, dtype=torch.int32, device=device).view(1, K, B).permute(2, 0, 1).contiguous()
    sigma0 = torch.rand(B, device=device) * 0.9 + 0.1
    sigma_prime = torch.rand(rows, device=device) * 0.8 + 0.15
    inputs = [tuple(randn(B, *latent, device=device) for _ in range(5)) + (sigma0, sigma0 * 0.9, sigma_prime, table)
              for _ in range(input_copies(nbytes, device))]
    fn = fused_aux_points if impl == "triton" else fused_aux_points_reference

    def run(*args):
        return fn(*args, None, kind="flow_sde", **OPTS)

    # The eager twin gathers rows with a host sync (nonzero), which a CUDA graph cannot hold.
    record(run, inputs, bytes_per_call=nbytes, graph=impl == "triton",
           row=meta("aux_points[P=1,K=6]", impl, latent, rows, "bf16 in, bf16+f32 out"))


@pytest.mark.benchmark(group="flow_loss")
@pytest.mark.parametrize("variant", ["forward", "backward", "from_latents"])
@IMPL
@PARAMS
def test_flow_loss(benchmark, record, device, impl, latent, rows, variant):
    applicable(impl, device, latent, rows)
    per_row = latent[0] * latent[1] * latent[2]
    weight = torch.rand(rows, device=device)
    grad = torch.ones(rows, device=device)
    if variant == "from_latents":
        B = rows // K
        nbytes = rows * per_row * 2 * BF16 + B * per_row * BF16  # pred, latents, z0 (gathered per row)
        sample_index = torch.arange(rows, device=device) % B
        sigma_prime = torch.rand(rows, device=device) * 0.8 + 0.15
        make = lambda: (randn(rows, *latent, device=device), randn(rows, *latent, device=device),
                        randn(B, *latent, device=device), sigma_prime, sample_index, weight)
        if impl == "triton":
            fn = flow_loss_from_latents
        else:
            def fn(pred, lat, z0, sp, idx, w):
                return flow_loss_reference(pred, latent_targets_reference(lat, z0, sp, idx), w)
    else:
        # pred bf16, target float32 (what aux_points writes); backward also writes grad (bf16)
        nbytes = rows * per_row * (BF16 + F32 + (BF16 if variant == "backward" else 0))
        make = lambda: (randn(rows, *latent, device=device), randn(rows, *latent, device=device,
                                                                    dtype=torch.float32), weight)
        if variant == "forward":
            fn = flow_loss if impl == "triton" else flow_loss_reference
        elif impl == "triton":
            def fn(pred, target, w):
                return torch.ops.soar_fast.flow_loss_backward(grad, pred, target, w)
        else:
            def fn(pred, target, w):
                return flow_loss_grad_reference(grad, pred, target, w)
    inputs = [make() for _ in range(input_copies(nbytes, device))]

    def run(*args):
        with torch.no_grad():
            return fn(*args)

    record(run, inputs, bytes_per_call=nbytes, graph=True,
           row=meta(f"flow_loss[{variant}]", impl, latent, rows, "bf16 pred"))
