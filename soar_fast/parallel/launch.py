"""Start N local processes with torchrun's environment, for tests and quick experiments on one machine.

`spawn_local(fn, world, *args)` runs `fn(*args)` in `world` fresh processes (the spawn start method)
with RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT set as torchrun would, waits at most
`timeout_s`, kills what is still running, and returns every rank's exit code (None = killed on the
deadline). Production launches use torchrun; see docs/distributed.md.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import time
from collections.abc import Callable
from typing import Any

__all__ = ["free_port", "spawn_local"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(fn: Callable[..., Any], rank: int, world: int, port: int, env: dict[str, str], args: tuple) -> None:
    os.environ.update(env)
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    fn(*args)


def spawn_local(fn: Callable[..., Any], world: int, *args: Any, timeout_s: float = 120.0,
                env: dict[str, str] | None = None) -> list[int | None]:
    """Run `fn(*args)` on ranks 0..world-1; `fn` must be importable (a module-level function)."""
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=_entry, args=(fn, r, world, port, dict(env or {}), args), daemon=False)
             for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout_s
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    codes: list[int | None] = []
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
            codes.append(None)
        else:
            codes.append(p.exitcode)
    return codes
