"""Fused aux points, CUDA C++ beside Triton: GB/s and % of measured HBM bandwidth (the target: ≥ 85%).

Each round replays a CUDA graph of REPS launches, so Python and ctypes overhead (tens of µs, more
than a 16×64×64 launch takes on an H200) stays out of the kernel's number. Bytes counted are the
minimum traffic: five inputs read once, every latent and target written once. Inputs are the
training defaults: bfloat16 storage, float32 targets, flow_sde, P = 1, K = 6.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # plain `pytest bench/` puts only bench/ on sys.path
    sys.path.insert(0, str(REPO))

from tests.test_cuda_aux_gpu import make_case  # the inputs the correctness test uses

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

K = 6
REPS = 100
LATENTS = [(16, 64, 64), (16, 128, 128)]  # SD3 latents of 512² and 1024² images
ROWS = [24, 96, 192]  # B·K


@pytest.fixture(scope="module")
def copy_bandwidth(request) -> float:
    """Measured HBM bandwidth in GB/s: bench/conftest.py's `hbm_bandwidth` if present, else a 1 GiB copy."""
    try:
        return float(request.getfixturevalue("hbm_bandwidth"))
    except pytest.FixtureLookupError:
        pass
    src = torch.empty(2**28, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best = float("inf")
    for _ in range(10):
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3)
    return 2 * src.numel() * src.element_size() / best / 1e9


def _kernel(impl: str):
    from soar_fast.kernels import cuda_aux
    from soar_fast.kernels.aux_points import fused_aux_points

    if impl == "triton":
        return fused_aux_points
    if not cuda_aux.is_available():
        pytest.skip(cuda_aux.library_status())
    return cuda_aux.cuda_fused_aux_points


@pytest.mark.parametrize("rows", ROWS, ids=lambda r: f"BK{r}")
@pytest.mark.parametrize("latent", LATENTS, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("impl", ["cuda", "triton"])
def test_aux_points_bandwidth(benchmark, copy_bandwidth, impl, latent, rows):
    fn = _kernel(impl)
    args, kwargs = make_case((rows // K,) + latent, torch.bfloat16, 1, K, "flow_sde", "cuda")
    for _ in range(3):  # compile / load the kernel before capture
        fn(*args, **kwargs)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(REPS):
            fn(*args, **kwargs)

    def replay():
        graph.replay()
        torch.cuda.synchronize()

    benchmark.pedantic(replay, rounds=20, warmup_rounds=2)
    seconds = benchmark.stats.stats.min / REPS
    chw = args[0][0].numel()
    moved = 5 * args[0].numel() * args[0].element_size() + rows * chw * (2 + 4)  # bf16 latents, fp32 targets
    gbps = moved / seconds / 1e9
    benchmark.extra_info.update(impl=impl, latent=list(latent), rows=rows, bytes=moved, us=seconds * 1e6,
                                gbps=round(gbps, 1), pct_of_bandwidth=round(100 * gbps / copy_bandwidth, 1),
                                bandwidth_gbps=round(copy_bandwidth, 1))
