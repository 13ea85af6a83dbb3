"""The bucket batch sampler, with the reference's sharding bug fixed (docs/data.md, "Batches, shards, order").

Per epoch, one generator seeded by (seed, epoch) — identical on every rank — permutes each bucket;
rank r takes the r-th of `world` equal contiguous slices (disjoint shards, the remainder rotates out
with the permutation), cuts it into whole batches, and the same generator shuffles the list of
(bucket, batch) steps. So every rank trains the same bucket at each step, a batch never mixes
buckets, no sample repeats within an epoch, and the order is a pure function of (seed, epoch).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

Bucket = tuple[int, int]


@dataclass(frozen=True)
class Step:
    """One batch of one rank: `indices` into the record list, all from `bucket`."""

    epoch: int
    step: int
    bucket: Bucket
    indices: tuple[int, ...]


class BucketSampler:
    def __init__(self, buckets: Mapping[Bucket, Sequence[int]], batch_size: int, *, rank: int = 0,
                 world: int = 1, seed: int = 0) -> None:
        assert 0 <= rank < world, f"rank {rank} outside world {world}"
        assert batch_size >= 1, f"batch_size must be >= 1, got {batch_size}"
        self.buckets = {b: list(ix) for b, ix in sorted(buckets.items())}
        self.batch_size, self.rank, self.world, self.seed = batch_size, rank, world, seed
        self.batches_per_bucket = {b: (len(ix) // world) // batch_size for b, ix in self.buckets.items()}
        self.steps_per_epoch = sum(self.batches_per_bucket.values())

    def too_small(self) -> dict[Bucket, int]:
        """Buckets that cannot fill one batch on every rank: never trained ({bucket: size})."""
        return {b: len(ix) for b, ix in self.buckets.items() if self.batches_per_bucket[b] == 0}

    def epoch(self, epoch: int) -> list[Step]:
        rng = np.random.default_rng([self.seed, epoch])
        per_bucket: dict[Bucket, list[tuple[int, ...]]] = {}
        for bucket, indices in self.buckets.items():
            perm = rng.permutation(np.asarray(indices, dtype=np.int64))
            m = len(indices) // self.world
            shard = perm[self.rank * m:(self.rank + 1) * m].tolist()
            b = self.batch_size
            per_bucket[bucket] = [tuple(shard[i * b:(i + 1) * b]) for i in range(self.batches_per_bucket[bucket])]
        order = [b for b in self.buckets for _ in range(self.batches_per_bucket[b])]
        order = [order[i] for i in rng.permutation(len(order))]
        cursor = dict.fromkeys(self.buckets, 0)
        steps = []
        for step, bucket in enumerate(order):
            steps.append(Step(epoch, step, bucket, per_bucket[bucket][cursor[bucket]]))
            cursor[bucket] += 1
        return steps

    def identity(self) -> dict[str, int]:
        """What a saved position is only valid for."""
        return {"seed": self.seed, "rank": self.rank, "world": self.world, "batch_size": self.batch_size,
                "num_samples": sum(len(ix) for ix in self.buckets.values())}


def aug_seed(seed: int, epoch: int, index: int) -> int:
    """Seed of one sample's crop/flip draws in one epoch: independent of rank, worker and order."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])
