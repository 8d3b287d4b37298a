"""Pure epoch planning: shard shuffle, exact split across ranks and workers, batches per epoch.

The epoch's sample sequence is the shards in a shuffled order (a function of seed and epoch only),
each shard's samples in stored order. It is cut into ``world_size`` contiguous parts whose sizes differ
by at most one, and each rank's part into ``num_workers`` contiguous parts the same way. A part is a list
of :class:`Span` (a range of samples of one shard), so a shard at a boundary is read by two readers, each
keeping only its own samples: every sample is read exactly once per epoch and no reader reads more than
its share. This needs the per-shard sample counts from the manifest.

Every rank yields ``samples_per_rank = ceil(total / world_size)`` samples' worth of clips: a rank whose
part is one sample short (or that skipped corrupt samples) repeats clips it already produced, marked
invalid (see ``loader.py``), so all ranks step the same number of batches and distributed training never
waits at an epoch's end. Without counts (a ``pipe:`` or pattern without manifest), whole shards are dealt
round-robin and the batch count is not known in advance.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


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


def cut(spans: list[Span], sizes: list[int]) -> list[list[Span]]:
    """Cut a sequence of sized spans into consecutive parts of ``sizes`` samples each."""
    parts: list[list[Span]] = []
    queue = list(spans)
    for size in sizes:
        part: list[Span] = []
        while size > 0:
            head = queue.pop(0)
            take = min(size, len(head))
            part.append(Span(head.shard, head.start, head.start + take))
            if take < len(head):
                queue.insert(0, Span(head.shard, head.start + take, head.stop))
            size -= take
        parts.append(part)
    return parts


def epoch_spans(counts: list[int], seed: int, epoch: int, shuffle: bool = True) -> list[Span]:
    """The whole epoch's sample sequence as spans of whole shards in shuffled order."""
    return [Span(i, 0, counts[i]) for i in shard_order(len(counts), seed, epoch, shuffle) if counts[i] > 0]


def rank_spans(counts: list[int], seed: int, epoch: int, rank: int, world_size: int,
               shuffle: bool = True) -> list[Span]:
    """Rank ``rank``'s contiguous share of the epoch (sizes differ by at most one across ranks)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} not in [0, {world_size})")
    spans = epoch_spans(counts, seed, epoch, shuffle)
    return cut(spans, even_sizes(sum(counts), world_size))[rank]


def worker_spans(spans: list[Span], worker: int, num_workers: int) -> list[Span]:
    """Worker ``worker``'s contiguous share of a rank's spans."""
    if not 0 <= worker < num_workers:
        raise ValueError(f"worker {worker} not in [0, {num_workers})")
    return cut(spans, even_sizes(sum(len(s) for s in spans), num_workers))[worker]


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
    """Batches every rank yields per epoch: its clip quota over ``batch_size`` (floor with drop_last)."""
    clips = samples_per_rank(total, world_size) * clips_per_sample
    return clips // batch_size if drop_last else math.ceil(clips / batch_size)
