"""The step's elementwise work alone, per implementation: what `accel.fused_kernels` decides.

CFG + aux points, the main and aux losses and their backward, at the step benchmark's shape, as the
step calls them (`StepFns.cfg_aux`, `flow_loss`, `aux_loss`): `eager` is the plain eager math,
`fused` what `fused_kernels = true` installs on this device (the Triton kernels on CUDA, their eager
twins on CPU). Timed interleaved, pair by pair; `paired_ratio` is the median over rounds of the fused
time over the eager time in the same round. On CPU this is the measurement behind the CPU default
(`soar_fast.accel.resolve_accel`): a whole step (~100 ms) hides a difference of a few hundred µs in
its noise, this does not.
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch

from bench.step_runner import K, sync
from soar_fast.accel.fused import fused_step_pieces
from soar_fast.config import SoarConfig
from soar_fast.soar import SigmaGrid, draw, loss_weight, weighted_mse
from soar_fast.train.step import eager_cfg_aux, stored_target_loss

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
# (batch, latent side): the CPU step benchmark's tiny 64 px and SD3.5-M's 512².
BATCH, SIDE = (4, 64) if CUDA else (4, 8)
ROUNDS = 200


def _inputs():
    g = torch.Generator(device=DEVICE).manual_seed(0)
    z0 = torch.randn(BATCH, 16, SIDE, SIDE, generator=g, device=DEVICE)
    draws = draw(z0.shape, generator=g, num_points=K, device=DEVICE)
    v_u, v_c = torch.randn_like(z0), torch.randn_like(z0)
    return z0, draws, v_u, v_c


def _pieces_step(pieces, grid, soar, z0, draws, v_u, v_c):
    cfg_aux, flow_loss, aux_loss = pieces
    sigma0 = grid.at(draws.t0)[0]
    z_t0 = (1 - sigma0.view(-1, 1, 1, 1)) * z0 + sigma0.view(-1, 1, 1, 1) * draws.z1
    pts = cfg_aux(z_t0, v_u, v_c, z0, draws, grid, soar)
    pred = pts.latents.detach().clone().requires_grad_(True)
    v0 = v_c.detach().clone().requires_grad_(True)
    main = flow_loss(v0, draws.z1 - z0, loss_weight(sigma0, soar.weighting_scheme))
    aux = aux_loss(pred, pts, slice(0, pts.layout.num_rows), z0, loss_weight(pts.sigmas, soar.weighting_scheme))
    (main.sum() + aux.sum()).backward()


@pytest.fixture(scope="module")
def timed():
    grid, soar = SigmaGrid().to(DEVICE), SoarConfig(trajectory_length=K)
    fused = fused_step_pieces("auto", DEVICE)
    impls = {"eager": (eager_cfg_aux, weighted_mse, stored_target_loss),
             "fused": (fused["cfg_aux"], fused["flow_loss"], fused["aux_loss"])}
    args = _inputs()
    for pieces in impls.values():
        for _ in range(10):
            _pieces_step(pieces, grid, soar, *args)
    sync(DEVICE)
    seconds: dict[str, list[float]] = {name: [] for name in impls}
    for r in range(ROUNDS):
        for name in (list(impls) if r % 2 == 0 else list(impls)[::-1]):
            start = time.perf_counter()
            _pieces_step(impls[name], grid, soar, *args)
            sync(DEVICE)
            seconds[name].append(time.perf_counter() - start)
    return seconds


@pytest.mark.benchmark(group="step pieces")
@pytest.mark.parametrize("impl", ["eager", "fused"])
def test_step_pieces(benchmark, timed, impl):
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.stats.stats.data[:] = timed[impl]
    ratio = statistics.median(f / e for f, e in zip(timed["fused"], timed["eager"]))
    benchmark.extra_info.update(impl=impl, device=str(DEVICE), batch=BATCH, latent=f"16x{SIDE}x{SIDE}", K=K,
                                us_median=1e6 * statistics.median(timed[impl]), us_min=1e6 * min(timed[impl]),
                                paired_ratio_fused_over_eager=ratio)
