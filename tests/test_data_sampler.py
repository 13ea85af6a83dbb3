"""Bucket sampler invariants (docs/data.md, "Batches, shards, order": disjoint shards)."""

from __future__ import annotations

import pytest

from soar_fast.data.sampler import BucketSampler, aug_seed

# Uneven buckets, one smaller than a batch on every rank for world 3.
BUCKETS = {(64, 64): list(range(50)), (80, 48): list(range(50, 73)), (48, 80): list(range(73, 80))}


def _samplers(world: int, batch: int = 3, seed: int = 7) -> list[BucketSampler]:
    return [BucketSampler(BUCKETS, batch, rank=r, world=world, seed=seed) for r in range(world)]


@pytest.mark.parametrize("world", [1, 2, 3])
def test_no_mixed_batch_and_same_bucket_per_step(world: int) -> None:
    samplers = _samplers(world)
    owner = {i: b for b, ix in BUCKETS.items() for i in ix}
    for epoch in (0, 1, 5):
        plans = [s.epoch(epoch) for s in samplers]
        assert len({len(p) for p in plans}) == 1 and len(plans[0]) == samplers[0].steps_per_epoch > 0
        for steps in zip(*plans):
            assert len({st.bucket for st in steps}) == 1, "ranks disagree on the bucket of a step"
            for st in steps:
                assert len(st.indices) == 3 and {owner[i] for i in st.indices} == {st.bucket}


@pytest.mark.parametrize("world", [2, 3])
def test_shards_are_disjoint_and_no_sample_repeats(world: int) -> None:
    samplers = _samplers(world)
    for epoch in (0, 3):
        seen: list[int] = []
        for s in samplers:
            seen += [i for st in s.epoch(epoch) for i in st.indices]
        assert len(seen) == len(set(seen)), "a sample appears twice in one epoch (across or within ranks)"
        per_bucket_batches = sum((len(ix) // world) // 3 for ix in BUCKETS.values())
        assert len(seen) == per_bucket_batches * 3 * world


def test_order_is_deterministic_per_seed_and_epoch() -> None:
    a, b = BucketSampler(BUCKETS, 3, seed=7), BucketSampler(BUCKETS, 3, seed=7)
    assert a.epoch(2) == b.epoch(2)
    assert a.epoch(2) != a.epoch(3)
    assert a.epoch(2) != BucketSampler(BUCKETS, 3, seed=8).epoch(2)
    # Over epochs the dropped remainder rotates: every sample of a big bucket gets trained.
    covered = {i for e in range(20) for st in a.epoch(e) for i in st.indices}
    assert set(range(73)) <= covered


def test_small_buckets_are_reported() -> None:
    small = BucketSampler(BUCKETS, 3, rank=0, world=3, seed=0).too_small()
    assert small == {(48, 80): 7}
    assert BucketSampler(BUCKETS, 3, world=1).too_small() == {}


def test_aug_seed_is_a_pure_function() -> None:
    assert aug_seed(1, 2, 3) == aug_seed(1, 2, 3)
    assert len({aug_seed(1, 2, 3), aug_seed(1, 3, 3), aug_seed(1, 2, 4), aug_seed(2, 2, 3)}) == 4
