"""One root seed, one independent random stream per (rank, stream).

The reference calls `set_seed(seed)` on every rank, so every GPU draws the same t0, z1, aux fractions
and posterior noise (docs/objective.md §8): W GPUs see only B distinct noise draws per step.
Here a stream's seed is a hash of (root seed, rank, stream name[, extra ints]), so
- ranks never share draws, and streams of one rank are unrelated (no `seed + rank` collisions:
  `seed=1, rank=0` and `seed=0, rank=1` give different streams);
- the same inputs give the same seed in every process and Python run (not `hash()`, which is salted);
- streams that must agree across ranks use `rank=SHARED`. (The data order needs none: the bucket
  sampler seeds one generator from (seed, epoch) on every rank and slices disjoint shards from it.)

`stream_seed(seed, rank, name, *extra)` is the one formula; the trainer's `RngStreams(seed, rank,
device)` (`train/rng.py`) holds the generators. A leaf (standard library only): the trainer and the
distributed code both import it.

Resuming with more ranks than the checkpoint had: rank r ≥ W_saved has no saved RNG state. It gets
`RngStreams(fresh_root_seed(seed, step), r, device)`: deterministic for (seed, step, r), distinct across
ranks, and distinct from the streams any rank used from step 0. Ranks that existed keep their exact
saved state, so a resume on the same number of ranks is bit-exact.
"""

from __future__ import annotations

import hashlib

__all__ = ["SHARED", "fresh_root_seed", "stream_seed"]

SHARED = -1
"""The `rank` of a stream that every rank must draw identically."""


def stream_seed(seed: int, rank: int, name: str, *extra: int) -> int:
    """A 63-bit seed for stream `name` of `rank` (and optional extra ints); stable across processes,
    runs and platforms (sha256, not the salted `hash()`)."""
    key = "/".join(["soar-fast", str(int(seed)), str(int(rank)), name, *(str(int(e)) for e in extra)])
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def fresh_root_seed(seed: int, step: int) -> int:
    """The root seed of ranks that a checkpoint written at `step` did not have."""
    return stream_seed(seed, SHARED, "resume", step)
