"""Invariants of the pure epoch planning: exact, balanced, deterministic."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from vidshard.shards.split import (
    Span,
    batches_per_epoch,
    even_sizes,
    rank_spans,
    samples_per_rank,
    shard_order,
    unsized_spans,
    worker_spans,
)


def _samples(spans: list[Span]) -> list[tuple[int, int]]:
    return [(s.shard, i) for s in spans for i in range(s.start, s.stop)]


def test_shard_order_is_a_permutation_fixed_by_seed_and_epoch() -> None:
    a = shard_order(50, seed=3, epoch=1)
    assert sorted(a) == list(range(50))
    assert a == shard_order(50, seed=3, epoch=1)
    assert a != shard_order(50, seed=3, epoch=2)
    assert a != shard_order(50, seed=4, epoch=1)
    assert shard_order(5, 0, 0, shuffle=False) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("world,workers", [(1, 1), (2, 2), (3, 2), (4, 3), (2, 5)])
def test_every_sample_once_per_epoch_and_ranks_balanced(world: int, workers: int) -> None:
    rng = random.Random(world * 10 + workers)
    for trial in range(20):
        counts = [rng.choice([0, 1, 2, 5, 17, 40]) for _ in range(rng.randint(1, 9))]
        seen: Counter = Counter()
        sizes = []
        for rank in range(world):
            spans = rank_spans(counts, seed=trial, epoch=trial, rank=rank, world_size=world)
            sizes.append(sum(len(s) for s in spans))
            parts = [worker_spans(spans, w, workers) for w in range(workers)]
            assert sorted(_samples([s for p in parts for s in p])) == sorted(_samples(spans))
            for p in parts:
                seen.update(_samples(p))
                assert all(0 <= s.start < s.stop <= counts[s.shard] for s in p)
        expected = {(i, j) for i, c in enumerate(counts) for j in range(c)}
        assert set(seen) == expected and all(v == 1 for v in seen.values())
        assert max(sizes) - min(sizes) <= 1
        assert max(sizes) == samples_per_rank(sum(counts), world)


def test_same_seed_same_split() -> None:
    counts = [7, 3, 9, 1, 4]
    a = [rank_spans(counts, 5, 2, r, 2) for r in range(2)]
    assert a == [rank_spans(counts, 5, 2, r, 2) for r in range(2)]
    assert a != [rank_spans(counts, 5, 3, r, 2) for r in range(2)]


def test_even_sizes() -> None:
    for total in range(30):
        for parts in range(1, 7):
            s = even_sizes(total, parts)
            assert sum(s) == total and len(s) == parts and max(s) - min(s) <= 1


def test_equal_batches_per_rank_with_uneven_shards() -> None:
    counts = [13, 1, 2, 30, 5]  # 51 samples: ranks get 26 and 25
    n = batches_per_epoch(sum(counts), 2, clips_per_sample=2, batch_size=4, drop_last=True)
    assert n == (26 * 2) // 4
    assert batches_per_epoch(sum(counts), 2, 2, 4, drop_last=False) == 13
    assert batches_per_epoch(51, 2, 1, 4, drop_last=False) == 7


def test_unsized_spans_deal_whole_shards() -> None:
    parts = [unsized_spans(10, seed=1, epoch=0, part=p, parts=4) for p in range(4)]
    shards = sorted(s.shard for p in parts for s in p)
    assert shards == list(range(10))
    assert all(s.stop is None for p in parts for s in p)
