"""`accel.cuda_graphs`: capture the no-grad rollout forward once per input shape and replay it.

The rollout forward is pure inference (no autograd, no RNG) on static shapes within a bucket, so a
CUDA graph removes its per-kernel launch cost: ~24 blocks × ~30 kernels of host work that would
otherwise bound small batches. Inputs are copied into static buffers, the graph replays, and the
output is cloned out (the graph's own output buffer is overwritten by the next replay).

One graph per key = (shapes, dtypes, autocast state) of the inputs: a new bucket shape captures a
new graph (all graphs share one memory pool). Parameters are read by address, so in-place optimizer
updates (torch AdamW, torchao) are seen by every replay; replacing a parameter tensor is not — call
`reset()` after loading weights by assignment. On CPU the wrapper is a logged no-op.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

log = logging.getLogger(__name__)

_WARMUP_ITERS = 3  # compiled blocks autotune / allocate on their first calls; capture after that


class GraphedForward:
    """`fn(*tensors) -> tensor` replayed from a CUDA graph per input signature (CUDA tensors only)."""

    def __init__(self, fn: Callable[..., torch.Tensor], *, name: str = "rollout forward") -> None:
        self.fn = fn
        self.name = name
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, tuple[torch.Tensor, ...], torch.Tensor]] = {}
        self.pool = None

    def reset(self) -> None:
        self.graphs.clear()
        self.pool = None

    @staticmethod
    def _key(args: tuple[torch.Tensor, ...]) -> tuple:
        return (tuple((tuple(a.shape), a.dtype, a.device) for a in args),
                torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"))

    @staticmethod
    def _uncached_autocast():
        # Autocast's weight-cast cache must stay out of the graph: a cast cached by an earlier call
        # would be read by the graph but freed when the caller's autocast exits, and a cast cached
        # during capture would live in the graph pool. A nested autocast with the cache off makes
        # the casts part of the graph (torch docs, "CUDA Graphs" + AMP: cache_enabled=False).
        return torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"),
                              enabled=torch.is_autocast_enabled("cuda"), cache_enabled=False)

    def _capture(self, args: tuple[torch.Tensor, ...]):
        static_in = tuple(a.detach().clone() for a in args)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.no_grad(), self._uncached_autocast():
            for _ in range(_WARMUP_ITERS):
                self.fn(*static_in)
        torch.cuda.current_stream().wait_stream(stream)
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool), torch.no_grad(), self._uncached_autocast():
            static_out = self.fn(*static_in)
        log.info("cuda_graphs: captured %s for %s", self.name, [tuple(a.shape) for a in args])
        return graph, static_in, static_out

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        if not args or args[0].device.type != "cuda":
            with torch.no_grad():
                return self.fn(*args)
        key = self._key(args)
        entry = self.graphs.get(key)
        if entry is None:
            entry = self.graphs[key] = self._capture(args)
        graph, static_in, static_out = entry
        for dst, src in zip(static_in, args):
            dst.copy_(src)
        graph.replay()
        return static_out.clone()


def apply_cuda_graphs(fn: Callable[..., torch.Tensor], device: torch.device | str, *,
                      name: str = "rollout forward") -> tuple[Callable[..., torch.Tensor], str]:
    """Wrap a no-grad forward `fn(*tensors)` for graph replay on CUDA; on CPU return `fn` unchanged.

    Returns (callable, description for the report).
    """
    device = torch.device(device)
    if device.type != "cuda":
        log.info("cuda_graphs: not applied (device %s is not CUDA)", device)
        return fn, f"off (device {device.type})"
    return GraphedForward(fn, name=name), f"on ({name}, one graph per input shape)"
