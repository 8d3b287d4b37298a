"""Pure epoch planning: which samples each rank, worker and batch takes, and where a resumed epoch goes on.

The epoch starts as the shards in a shuffled order (a function of seed and epoch only), each shard's
samples in stored order, as a list of :class:`Span`. A :class:`Layout` (ranks, DataLoader workers,
samples per batch, shuffle block) cuts it:

1. into ``world`` contiguous rank parts whose sizes differ by at most one;
2. each rank steps ``rank_batches`` batches (the same count on every rank; batch ``j`` takes
   ``batch_sizes[j]`` samples, the last ones partial or empty on a rank one sample short);
3. batch ``j`` of a rank belongs to *slot* ``j % workers``: each slot is a contiguous piece of the
   rank part holding exactly the samples of its batches, so one worker reads it front to back;
4. a slot's samples pass a *block shuffle*: consecutive blocks of ``block`` samples, each permuted by
   a seeded key, and its batches take the permuted sequence in order.

The global consumption order follows: after ``k`` steps of every rank, slot ``s`` of each rank has
handed out the samples of its batches ``j < k``, and nothing else. So the position of an epoch is a
list of (layout, steps) segments, and the samples not yet consumed (:func:`remaining`) are computed by
arithmetic on spans, never by reading. A resumed epoch cuts those with the new layout (any number of
ranks or workers, any batch size): every sample is still taken exactly once in the epoch (the
guarantee of MosaicML streaming's elastic resumption). A rank's samples left over by ``drop_last``
stay in the remainder, so a later segment may take them.

Without counts (a ``pipe:`` or pattern without manifest) whole shards are dealt round-robin
(:func:`unsized_spans`) and the batch count is not known in advance.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Span:
    """Samples ``start`` to ``stop`` (exclusive) of shard ``shard`` (``stop`` None: to the end)."""

    shard: int
    start: int = 0
    stop: int | None = None

    def __len__(self) -> int:
        if self.stop is None:
            raise TypeError("span of a shard with unknown count has no length")
        return self.stop - self.start


@dataclass(frozen=True)
class Layout:
    """How one segment of an epoch was (or is) read, and how far it got."""

    world: int
    """Ranks."""
    workers: int
    """Slots per rank (DataLoader workers, at least 1)."""
    per_batch: int
    """Samples per batch (batch size / clips per sample)."""
    block: int
    """Shuffle block in samples (1: stored order)."""
    steps: int = 0
    """Batches every rank consumed in this segment."""

    def __post_init__(self) -> None:
        if min(self.world, self.workers, self.per_batch, self.block) < 1 or self.steps < 0:
            raise ValueError(f"bad layout {self}: world, workers, per_batch, block >= 1, steps >= 0")

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


Position = tuple[int, int]  # (shard, sample index in the shard)


def shard_order(num_shards: int, seed: int, epoch: int, shuffle: bool = True) -> list[int]:
    """A permutation of ``range(num_shards)`` that depends only on ``seed`` and ``epoch``."""
    order = list(range(num_shards))
    if shuffle:
        random.Random(f"vidshard-shards-{seed}-{epoch}").shuffle(order)
    return order


def even_sizes(total: int, parts: int) -> list[int]:
    """``parts`` sizes summing to ``total`` that differ by at most one (larger ones first)."""
    q, r = divmod(total, parts)
    return [q + (i < r) for i in range(parts)]


def size(spans: list[Span]) -> int:
    return sum(len(s) for s in spans)


def cut(spans: list[Span], sizes: list[int]) -> list[list[Span]]:
    """Cut a sequence of sized spans into consecutive parts of ``sizes`` samples each (the rest unused)."""
    parts: list[list[Span]] = []
    i, head = 0, spans[0] if spans else None
    for want in sizes:
        part: list[Span] = []
        while want > 0:
            if head is None or len(head) == 0:
                i += 1
                head = spans[i]
                continue
            take = min(want, len(head))
            part.append(Span(head.shard, head.start, head.start + take))
            head, want = Span(head.shard, head.start + take, head.stop), want - take
        parts.append(part)
    return parts


def positions(spans: list[Span]) -> list[Position]:
    return [(s.shard, i) for s in spans for i in range(s.start, s.stop)]


def merge(pos: list[Position]) -> list[Span]:
    """Positions as spans, consecutive samples of one shard joined."""
    spans: list[Span] = []
    for shard, i in pos:
        if spans and spans[-1].shard == shard and spans[-1].stop == i:
            spans[-1] = Span(shard, spans[-1].start, i + 1)
        else:
            spans.append(Span(shard, i, i + 1))
    return spans


def epoch_spans(counts: list[int], seed: int, epoch: int, shuffle: bool = True) -> list[Span]:
    """The whole epoch's sample sequence as spans of whole shards in shuffled order."""
    return [Span(i, 0, counts[i]) for i in shard_order(len(counts), seed, epoch, shuffle) if counts[i] > 0]


def rank_spans(counts: list[int], seed: int, epoch: int, rank: int, world_size: int,
               shuffle: bool = True) -> list[Span]:
    """Rank ``rank``'s contiguous share of a fresh epoch (sizes differ by at most one across ranks)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} not in [0, {world_size})")
    spans = epoch_spans(counts, seed, epoch, shuffle)
    return cut(spans, even_sizes(sum(counts), world_size))[rank]


def rank_batches(total: int, world: int, per_batch: int, drop_last: bool) -> int:
    """Batches every rank steps for ``total`` samples: its largest share over ``per_batch``."""
    largest = math.ceil(total / world)
    return largest // per_batch if drop_last else math.ceil(largest / per_batch)


def batch_sizes(samples: int, per_batch: int, batches: int) -> list[int]:
    """Samples in each of ``batches`` batches over ``samples`` (full ones first, then partial or empty)."""
    return [max(0, min(per_batch, samples - j * per_batch)) for j in range(batches)]


def slot_parts(part: list[Span], per_batch: int, workers: int, batches: int) -> list[list[Span]]:
    """A rank's part as ``workers`` contiguous slots; slot ``s`` holds the samples of batches ``j % workers
    == s`` (``j < batches``), in batch order."""
    sizes = batch_sizes(size(part), per_batch, batches)
    return cut(part, [sum(sizes[s::workers]) for s in range(workers)])


def blocks(part: list[Span], block: int) -> list[list[Span]]:
    """Consecutive blocks of ``block`` samples (the last one shorter)."""
    n = size(part)
    return cut(part, [block] * (n // block) + ([n % block] if n % block else []))


def block_order(spans: list[Span], key: str, shuffle: bool = True) -> list[Position]:
    """The samples of one block in the order its batches take them (seeded by ``key``)."""
    pos = positions(spans)
    if shuffle:
        random.Random(key).shuffle(pos)
    return pos


def slot_order(part: list[Span], block: int, key: str) -> Iterator[Position]:
    """A slot's samples in the order its batches take them: each block permuted (``block`` 1: as stored)."""
    for b, spans in enumerate(blocks(part, block)):
        yield from block_order(spans, f"{key}-{b}", block > 1)


def slot_rest(part: list[Span], block: int, key: str, consumed: int) -> list[Span]:
    """The samples of a slot not among the first ``consumed`` of :func:`slot_order`, by arithmetic: whole
    blocks are skipped as spans; only the block in progress is permuted to see which of it is left."""
    parts = blocks(part, block)
    done, partial = divmod(consumed, block)
    if done >= len(parts):
        return []
    current = parts[done]
    taken = set(block_order(current, f"{key}-{done}", block > 1)[:partial])
    left = merge([p for p in positions(current) if p not in taken])
    return left + [s for later in parts[done + 1:] for s in later]


def slot_blocks(part: list[Span], block: int, key: str, consumed: int = 0
                ) -> Iterator[tuple[list[Span], list[Position]]]:
    """What a slot reads and hands out after its first ``consumed`` samples, block by block: the spans
    to read (in reading order) and the order to hand their samples out in. Concatenated, the orders are
    ``slot_order(part, block, key)[consumed:]``; consumed samples are in no span."""
    done, partial = divmod(consumed, block)
    for b, spans in enumerate(blocks(part, block)[done:], start=done):
        order = block_order(spans, f"{key}-{b}", block > 1)
        if b == done and partial:
            order = order[partial:]
            keep = set(order)
            spans = merge([p for p in positions(spans) if p in keep])
        yield spans, order


def _tail(part: list[Span], used: int) -> list[Span]:
    """The samples of ``part`` after its first ``used`` (a rank's ``drop_last`` leftovers)."""
    return cut(part, [used, size(part) - used])[1]


def segment_rest(spans: list[Span], seg: Layout, drop_last: bool, key: str) -> list[Span]:
    """What ``seg`` (run for ``seg.steps`` steps on ``spans``) left of the epoch, as spans."""
    total = size(spans)
    batches = rank_batches(total, seg.world, seg.per_batch, drop_last)
    if seg.steps > batches:
        raise ValueError(f"a segment of {batches} batches cannot have run {seg.steps} steps")
    rest: list[Span] = []
    for r, part in enumerate(cut(spans, even_sizes(total, seg.world))):
        sizes = batch_sizes(size(part), seg.per_batch, batches)
        slots = slot_parts(part, seg.per_batch, seg.workers, batches)
        for s, slot in enumerate(slots):
            rest += slot_rest(slot, seg.block, f"{key}-{r}-{s}", sum(sizes[s:seg.steps:seg.workers]))
        rest += _tail(part, sum(sizes))
    return rest


def segment_key(seed: int, epoch: int, segment: int) -> str:
    """Seed of the block shuffles of one segment (a slot adds ``-{rank}-{slot}``, a block ``-{block}``)."""
    return f"vidshard-block-{seed}-{epoch}-{segment}"


def remaining(counts: list[int], seed: int, epoch: int, shuffle: bool, history: list[Layout],
              drop_last: bool) -> list[Span]:
    """The samples of the epoch that the segments of ``history`` did not consume (all of them when empty)."""
    spans = epoch_spans(counts, seed, epoch, shuffle)
    for i, seg in enumerate(history):
        spans = segment_rest(spans, seg, drop_last, segment_key(seed, epoch, i))
    return spans


def consumed(counts: list[int], seed: int, epoch: int, shuffle: bool, history: list[Layout],
             drop_last: bool) -> int:
    """Samples of the epoch consumed by the segments of ``history``."""
    return sum(counts) - size(remaining(counts, seed, epoch, shuffle, history, drop_last))


def unsized_spans(num_shards: int, seed: int, epoch: int, part: int, parts: int,
                  shuffle: bool = True) -> list[Span]:
    """Without counts: whole shards dealt round-robin to ``parts`` readers (``part``: this reader)."""
    order = shard_order(num_shards, seed, epoch, shuffle)
    return [Span(i) for i in order[part::parts]]


def samples_per_rank(total: int, world_size: int) -> int:
    """Samples every rank accounts for in one epoch (the largest share)."""
    return math.ceil(total / world_size)


def batches_per_epoch(total: int, world_size: int, clips_per_sample: int, batch_size: int,
                      drop_last: bool) -> int:
    """Batches every rank yields per fresh epoch (``batch_size`` a multiple of ``clips_per_sample``)."""
    return rank_batches(total, world_size, max(1, batch_size // clips_per_sample), drop_last)
