"""Invariants of the pure epoch planning: exact, balanced, deterministic, and elastic on resume."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from vidshard.shards.split import (
    Layout,
    Span,
    batch_sizes,
    batches_per_epoch,
    blocks,
    consumed,
    cut,
    epoch_spans,
    even_sizes,
    positions,
    rank_batches,
    rank_spans,
    remaining,
    samples_per_rank,
    segment_key,
    shard_order,
    size,
    slot_order,
    slot_parts,
    unsized_spans,
)


def run_segment(spans: list[Span], seg: Layout, key: str, drop_last: bool, steps: int | None = None
                ) -> list[list[list[tuple[int, int]]]]:
    """What the loader does with ``spans`` under ``seg``: per rank, its batches' samples in step order."""
    total = size(spans)
    n = rank_batches(total, seg.world, seg.per_batch, drop_last)
    out = []
    for r, part in enumerate(cut(spans, even_sizes(total, seg.world))):
        sizes = batch_sizes(size(part), seg.per_batch, n)
        slots = [iter(slot_order(p, seg.block, f"{key}-{r}-{s}"))
                 for s, p in enumerate(slot_parts(part, seg.per_batch, seg.workers, n))]
        out.append([[next(slots[j % seg.workers]) for _ in range(sizes[j])]
                    for j in range(n if steps is None else steps)])
    return out


def _random_counts(rng: random.Random) -> list[int]:
    return [rng.choice([0, 1, 2, 5, 17, 40]) for _ in range(rng.randint(1, 9))]


@pytest.mark.parametrize("world,workers", [(1, 1), (2, 2), (3, 2), (4, 3), (2, 5)])
def test_every_sample_once_per_epoch_and_ranks_step_together(world: int, workers: int) -> None:
    rng = random.Random(world * 10 + workers)
    for trial in range(20):
        counts = _random_counts(rng)
        seg = Layout(world, workers, per_batch=rng.randint(1, 6), block=rng.choice([1, 3, 8]))
        ranks = run_segment(epoch_spans(counts, trial, trial), seg, segment_key(trial, trial, 0), False)
        seen = Counter(p for batches in ranks for b in batches for p in b)
        assert seen == Counter({(i, j): 1 for i, c in enumerate(counts) for j in range(c)})
        assert len({len(batches) for batches in ranks}) == 1  # every rank steps the same count
        shares = [sum(len(b) for b in batches) for batches in ranks]
        assert max(shares) - min(shares) <= 1 and max(shares) == samples_per_rank(sum(counts), world)


def test_slot_order_shuffles_within_blocks_only() -> None:
    part = [Span(3, 0, 10), Span(1, 4, 9), Span(7, 0, 6)]  # 21 samples
    order = list(slot_order(part, 8, "k"))
    assert sorted(order) == sorted(positions(part)) and order != positions(part)
    for b, spans in enumerate(blocks(part, 8)):
        assert sorted(order[8 * b:8 * b + 8]) == sorted(positions(spans))
    assert order == list(slot_order(part, 8, "k")) and order != list(slot_order(part, 8, "other"))
    assert list(slot_order(part, 1, "k")) == positions(part)


@pytest.mark.parametrize("drop_last", [False, True])
def test_remaining_is_exactly_what_the_steps_did_not_consume(drop_last: bool) -> None:
    rng = random.Random(5 + drop_last)
    for trial in range(60):
        counts = _random_counts(rng)
        seg = Layout(rng.randint(1, 4), rng.randint(1, 3), rng.randint(1, 5), rng.choice([1, 4, 16]))
        total_steps = rank_batches(sum(counts), seg.world, seg.per_batch, drop_last)
        steps = rng.randint(0, total_steps)
        done = run_segment(epoch_spans(counts, 1, trial), seg, segment_key(1, trial, 0), drop_last, steps)
        taken = Counter(p for batches in done for b in batches for p in b)
        left = positions(remaining(counts, 1, trial, True, [Layout(**{**seg.to_dict(), "steps": steps})],
                                   drop_last))
        assert not set(left) & set(taken) and max(taken.values(), default=1) == 1
        assert sorted(left + list(taken)) == sorted((i, j) for i, c in enumerate(counts) for j in range(c))
        history = [Layout(**{**seg.to_dict(), "steps": steps})]
        assert consumed(counts, 1, trial, True, history, drop_last) == len(taken)


@pytest.mark.parametrize("before,after", [((2, 2), (1, 3)), ((1, 1), (3, 1)), ((1, 2), (3, 2)),
                                          ((3, 1), (2, 4)), ((2, 3), (4, 1))])
def test_elastic_resume_sees_every_sample_exactly_once(before: tuple[int, int],
                                                       after: tuple[int, int]) -> None:
    """Stopped mid-epoch on one layout, continued on another (and a third): each sample once in the epoch."""
    rng = random.Random(hash(before + after) % 1000)
    for trial in range(25):
        counts = _random_counts(rng)
        seed, epoch = trial, 2
        layouts = [Layout(*before, rng.randint(1, 4), rng.choice([1, 5, 32])),
                   Layout(*after, rng.randint(1, 4), rng.choice([1, 5, 32])),
                   Layout(1, 2, 3, 8)]
        seen: Counter = Counter()
        history: list[Layout] = []
        for i, seg in enumerate(layouts):
            spans = remaining(counts, seed, epoch, True, history, drop_last=False)
            n = rank_batches(size(spans), seg.world, seg.per_batch, False)
            steps = n if i == len(layouts) - 1 else rng.randint(0, n)
            done = run_segment(spans, seg, segment_key(seed, epoch, i), False, steps)
            seen.update(p for batches in done for b in batches for p in b)
            history.append(Layout(**{**seg.to_dict(), "steps": steps}))
        assert seen == Counter({(i, j): 1 for i, c in enumerate(counts) for j in range(c)})


def test_a_segment_cannot_claim_more_steps_than_it_has() -> None:
    with pytest.raises(ValueError, match="cannot have run"):
        remaining([4, 4], 0, 0, True, [Layout(1, 1, 2, 1, steps=5)], False)


def test_shard_order_is_a_permutation_fixed_by_seed_and_epoch() -> None:
    a = shard_order(50, seed=3, epoch=1)
    assert sorted(a) == list(range(50))
    assert a == shard_order(50, seed=3, epoch=1)
    assert a != shard_order(50, seed=3, epoch=2)
    assert a != shard_order(50, seed=4, epoch=1)
    assert shard_order(5, 0, 0, shuffle=False) == [0, 1, 2, 3, 4]


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


def test_unsized_spans_deal_whole_shards() -> None:
    parts = [unsized_spans(7, 0, 1, p, 3) for p in range(3)]
    assert sorted(s.shard for p in parts for s in p) == list(range(7))
    assert all(s.stop is None for p in parts for s in p)


def test_equal_batches_per_rank_with_uneven_shards() -> None:
    counts = [13, 1, 2, 30, 5]  # 51 samples: ranks get 26 and 25
    n = batches_per_epoch(sum(counts), 2, clips_per_sample=2, batch_size=4, drop_last=True)
    assert n == (26 * 2) // 4
    assert batches_per_epoch(sum(counts), 2, 2, 4, drop_last=False) == 13


def test_slot_blocks_continue_the_slot_order_without_the_consumed_samples() -> None:
    from vidshard.shards.split import slot_blocks, slot_rest

    part = [Span(3, 2, 12), Span(1, 0, 9), Span(7, 0, 6)]  # 25 samples
    full = list(slot_order(part, 8, "k"))
    for consumed_n in (0, 3, 8, 13, 24, 25):
        got = list(slot_blocks(part, 8, "k", consumed_n))
        assert [p for _, order in got for p in order] == full[consumed_n:]
        read = [p for spans, _ in got for p in positions(spans)]
        assert sorted(read) == sorted(full[consumed_n:])  # nothing consumed is read again
        assert sorted(positions(slot_rest(part, 8, "k", consumed_n))) == sorted(full[consumed_n:])
        for spans, order in got:
            assert sorted(positions(spans)) == sorted(order)
