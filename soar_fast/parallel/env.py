"""The process group: one process per accelerator, rank and device read from torchrun's environment.

`init_distributed(cfg)` is the only place that calls `init_process_group`. Under torchrun (RANK and
WORLD_SIZE set) it joins the group through torchrun's rendezvous (MASTER_ADDR/MASTER_PORT, set by
torchrun on one node and by `--rdzv-endpoint` on many). Outside torchrun it returns a one-process
`Dist` with no group, except for `ddp`/`fsdp2`, which need one: those get a private one-rank group
on an in-process store, so a run started without torchrun (e.g. resuming an FSDP2 checkpoint in
one process) takes exactly the code path of a multi-process run.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from ..config import ParallelConfig

__all__ = ["Dist", "init_distributed", "launched_by_torchrun", "shutdown", "single_process"]


@dataclass(frozen=True)
class Dist:
    """Where this process sits in the job.

    rank, world: global rank and number of processes. local_rank: index on this node (picks the GPU).
    device: this process's device. backend: the process group's backend, or None when there is none
    (a plain one-process run: every collective here is then skipped).
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0: the only rank that logs, plots, shows progress and writes exports."""
        return self.rank == 0

    @property
    def has_group(self) -> bool:
        return self.backend is not None

    def barrier(self) -> None:
        if self.has_group:
            dist.barrier()

    def any_rank(self, flag: bool) -> bool:
        """True on every rank when `flag` is True on any (a collective and a host sync: call it at
        the same points on every rank, e.g. log steps, so ranks agree to stop at the same step)."""
        if not self.has_group or self.world == 1:
            return flag
        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def broadcast_object(self, obj: object, src: int = 0) -> object:
        """`obj` from rank `src` on every rank (a host round trip: setup and checkpoints only)."""
        if not self.has_group:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]


def single_process(device: torch.device | str | None = None) -> Dist:
    """The `Dist` of a plain run: rank 0 of 1, no process group."""
    return Dist(device=torch.device(device) if device is not None else _default_device(0))


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(cfg: ParallelConfig, *, device_type: str | None = None) -> Dist:
    """Join (or create) the process group for `cfg.strategy` and pin this process to its device.

    device_type: "cuda" or "cpu"; default CUDA when available. Raises `ValueError` naming the
    config key when the launch and `parallel.strategy` disagree.
    """
    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    under_torchrun = launched_by_torchrun()
    world = int(os.environ["WORLD_SIZE"]) if under_torchrun else 1
    local_rank = int(os.environ.get("LOCAL_RANK", "0")) if under_torchrun else 0

    if world > 1 and cfg.strategy == "none":
        raise ValueError(f"parallel.strategy = 'none' but {world} processes were launched (WORLD_SIZE={world}); "
                         "set --parallel.strategy=ddp or --parallel.strategy=fsdp2")
    device = _default_device(local_rank) if device_type == "cuda" else torch.device(device_type)
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA devices are "
                             "visible; launch at most one process per GPU (torchrun --nproc_per_node)")
        torch.cuda.set_device(device)
    if cfg.strategy == "none":
        return Dist(device=device)

    backend = cfg.backend if cfg.backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
    if backend == "nccl" and device.type != "cuda":
        raise ValueError("parallel.backend = 'nccl' needs CUDA devices; use 'gloo' (or 'auto') on CPU")
    timeout = datetime.timedelta(seconds=cfg.timeout_s)
    if not dist.is_initialized():
        kwargs: dict = {"backend": backend, "timeout": timeout}
        if backend == "nccl":
            # Binds the communicator to this GPU now (eager init), so a wrong LOCAL_RANK fails here.
            kwargs["device_id"] = device
        if under_torchrun:
            dist.init_process_group(**kwargs)
        else:
            dist.init_process_group(store=dist.HashStore(), rank=0, world_size=1, **kwargs)
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank, device=device,
                backend=backend)


def shutdown(d: Dist) -> None:
    """Leave the group on a normal exit (failures go through `failure.fail_fast`, which never waits)."""
    if d.has_group and dist.is_initialized():
        # Meet first: a rank that tears down gloo while a peer is still inside its last collective
        # aborts that peer ("terminate called without an active exception", seen once in CI-like runs).
        dist.barrier()
        dist.destroy_process_group()


def _default_device(local_rank: int) -> torch.device:
    return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
