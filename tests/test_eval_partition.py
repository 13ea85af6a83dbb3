"""Exact partition of rows over ranks: disjoint, complete, no padding; the gather checks it."""

from __future__ import annotations

import pytest

from soar_fast.eval.generate import plan_items
from soar_fast.eval.partition import merge_records, shard
from soar_fast.eval.prompts import rows_from_list


def test_rows_split_exactly_over_three_ranks():
    rows = rows_from_list([f"p{i}" for i in range(10)])
    parts = [shard(rows, r, 3) for r in range(3)]
    assert [len(p) for p in parts] == [4, 3, 3]  # no padding to a multiple of 3
    indices = [r.index for p in parts for r in p]
    assert sorted(indices) == list(range(10)) and len(set(indices)) == 10
    with pytest.raises(ValueError):
        shard(rows, 3, 3)


def test_gathered_records_cover_each_image_once():
    rows = rows_from_list([f"p{i}" for i in range(7)])
    items = plan_items(rows, images_per_prompt=2, seed=100)
    assert [it.seed for it in items] == list(range(100, 114))  # seed + row * images_per_prompt + k
    per_rank = []
    for rank in range(3):
        mine = {r.index for r in shard(rows, rank, 3)}
        per_rank.append([{"row": it.row.index, "image_index": it.image_index, "scores": {"s": 1.0}}
                         for it in items if it.row.index in mine])
    expected = [it.key for it in items]
    merged = merge_records(per_rank, expected)
    assert [(r["row"], r["image_index"]) for r in merged] == expected  # sorted, complete, unique
    with pytest.raises(RuntimeError, match="came from two ranks"):
        merge_records(per_rank + [per_rank[0][:1]], expected)
    with pytest.raises(RuntimeError, match="missing"):
        merge_records(per_rank[:2], expected)
