"""Exact split of prompt rows over torchrun ranks, and the gather that checks it.

Rank r takes rows r, r + W, r + 2W, ... with no padding (the reference's DistributedSampler repeats
rows to fill the last batch, and the repeats enter its averages). A row's images all stay on one rank.
After sampling, every rank's records are gathered and `merge_records` checks that each (row, image)
appears exactly once before anything is averaged.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

T = TypeVar("T")


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_env() -> DistEnv:
    """Rank and world size from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK)."""
    return DistEnv(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
                   int(os.environ.get("LOCAL_RANK", "0")))


def eval_device(env: DistEnv) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(env.local_rank)
        return torch.device("cuda", env.local_rank)
    return torch.device("cpu")


def init_distributed(env: DistEnv, device: torch.device, timeout_s: int = 600) -> bool:
    """Join torchrun's process group when W > 1; True when this call created it (so it must destroy it)."""
    import torch.distributed as dist

    if env.world == 1 or dist.is_initialized():
        return False
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            timeout=datetime.timedelta(seconds=timeout_s),
                            device_id=device if device.type == "cuda" else None)
    return True


def barrier(env: DistEnv) -> None:
    if env.world > 1:
        import torch.distributed as dist

        dist.barrier()


def shard(items: Sequence[T], rank: int, world: int) -> list[T]:
    """Items rank `rank` of `world` handles: `items[rank::world]` (disjoint, complete, no padding)."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside world size {world}")
    return list(items[rank::world])


def gather_records(records: list[dict[str, Any]], env: DistEnv) -> list[list[dict[str, Any]]]:
    """Every rank's records, one list per rank (all ranks receive all of them)."""
    if env.world == 1:
        return [records]
    import torch.distributed as dist

    out: list[Any] = [None] * env.world
    dist.all_gather_object(out, records)
    return out


def merge_records(per_rank: Sequence[Sequence[dict[str, Any]]], expected: Sequence[tuple[int, int]]
                  ) -> list[dict[str, Any]]:
    """Records from all ranks, sorted by (row, image), checked to hold each `expected` key exactly once."""
    seen: dict[tuple[int, int], dict[str, Any]] = {}
    for rank, records in enumerate(per_rank):
        for rec in records:
            key = (int(rec["row"]), int(rec["image_index"]))
            if key in seen:
                raise RuntimeError(f"row {key[0]} image {key[1]} came from two ranks (second: rank {rank}); "
                                   f"the partition is not exact")
            seen[key] = rec
    missing = sorted(set(expected) - set(seen))
    extra = sorted(set(seen) - set(expected))
    if missing or extra:
        raise RuntimeError(f"gathered results do not match the rows: missing {missing[:5]}"
                           f"{'...' if len(missing) > 5 else ''}, unexpected {extra[:5]}")
    return [seen[k] for k in sorted(seen)]
