"""Batches between the DataLoader workers and the main process.

- :class:`SlotRing`: each worker fills reused shared-memory batch buffers (fresh shared memory per batch
  costs more CPU in page faults than the copy it saves); :func:`copy_out` in the main process copies each
  batch out (into pinned memory with CUDA) and frees its slot at once, so a delivered batch is never
  overwritten.
- :func:`pad_to`: fills a batch that came short (a corrupt sample, a rank one sample short) to the clip
  count every rank delivers, repeating clips marked invalid, one batch at a time.
- :func:`rebatch`: merges the workers' batches into batches of ``batch_size`` (shard sets without
  counts, whose batches cannot be planned), optionally to an exact clip quota; its repeats are made one
  batch at a time too: memory never grows with the size of the shortfall.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class LoaderStats:
    """What one epoch did on this rank."""

    epoch: int = 0
    batches: int = 0
    clips: int = 0
    padded: int = 0
    """Clips repeated (``valid=False``) to fill the rank's quota."""
    skipped: int = 0
    """Corrupt samples skipped."""
    decoded: int = 0
    """Samples decoded (each once, for all its clips)."""
    valid: int = 0
    """Clips delivered with ``valid`` True."""
    skipped_keys: list[tuple[str, str]] = field(default_factory=list)
    """(key or shard, reason) of the first skipped samples."""
    missing: int = 0
    """Samples the manifest lists for this rank that were never read (shard truncated, missing, broken)."""
    shortfalls: list[tuple[str, str]] = field(default_factory=list)
    """(shard, what was missing and why) for the first shards that fell short of the manifest."""

    def add_skipped(self, items: list[tuple[str, str]]) -> None:
        self.skipped += len(items)
        self.skipped_keys.extend(items[: max(0, 100 - len(self.skipped_keys))])

    def add_missing(self, items: list[tuple[str, int, str]]) -> None:
        """``(shard, samples missing, reason)`` reported by the readers."""
        self.missing += sum(n for _, n, _ in items)
        room = max(0, 100 - len(self.shortfalls))
        self.shortfalls.extend((shard, reason) for shard, _, reason in items[:room])


SLOTS = 4  # shared batch buffers per worker: the DataLoader's prefetch (2) + the one being filled + spare


class SlotRing:
    """A worker's reusable shared-memory batch buffers.

    Fresh shared memory costs more (page faults on first write) than a copy, so each worker fills one
    of ``SLOTS`` buffers, the main process copies the batch out as soon as it arrives and marks the slot
    free again (``busy[worker, slot]``: 1 while the main process may still read it).
    """

    def __init__(self, busy: torch.Tensor, worker: int) -> None:
        self.busy, self.worker = busy, worker
        self.buffers: dict[int, torch.Tensor] = {}

    def take(self, shape: tuple[int, ...]) -> tuple[tuple[int, int], torch.Tensor]:
        """A free slot, as (worker, slot) and a ``shape`` tensor (waiting for the main process if needed)."""
        while True:
            for slot in range(self.busy.shape[1]):
                if int(self.busy[self.worker, slot]) == 0:
                    buf = self.buffers.get(slot)
                    if buf is None or buf.shape[1:] != shape[1:] or buf.shape[0] < shape[0]:
                        buf = self.buffers[slot] = torch.empty(shape, dtype=torch.uint8).share_memory_()
                    self.busy[self.worker, slot] = 1
                    return (self.worker, slot), buf[: shape[0]]
            time.sleep(0.001)


def _cat(pieces: list[dict[str, Any]]) -> dict[str, Any]:
    """Pieces joined along the batch: tensors concatenated, lists (keys) chained; any further tensor
    fields (e.g. a contrastive run's ``text``) travel like ``label``."""
    pieces = [p for p in pieces if len(p["key"])] or pieces[:1]  # an empty piece may lack extra fields
    if len(pieces) == 1:
        return pieces[0]
    return {k: [x for p in pieces for x in p[k]] if isinstance(v, list) else torch.cat([p[k] for p in pieces])
            for k, v in pieces[0].items()}


def _slice(batch: dict[str, Any], start: int, stop: int) -> dict[str, Any]:
    return {k: v[start:stop] for k, v in batch.items()}


def _repeats(recent: dict[str, Any], count: int, start: int = 0) -> dict[str, Any]:
    """``count`` clips cycled from ``recent`` (from its ``start``-th, modulo its length), marked invalid;
    every field travels (a contrastive run's ``text`` like ``label``)."""
    idx = (torch.arange(count) + start) % len(recent["key"])
    out = {k: [v[i] for i in idx.tolist()] if isinstance(v, list) else v[idx] for k, v in recent.items()}
    return out | {"valid": torch.zeros(count, dtype=torch.bool)}


def pad_to(piece: dict[str, Any], target: int, recent: dict[str, Any] | None,
           stats: LoaderStats) -> dict[str, Any]:
    """``piece`` filled up to ``target`` clips by repeating its own clips (or, when it has none, those of
    ``recent``, the batch before; blank clips labelled -1 when there is none yet), marked invalid: one
    batch at a time, never more than it needs."""
    have = len(piece["key"])
    if have >= target:
        return piece
    stats.padded += target - have
    pool = piece if have else recent
    if pool is None or not len(pool["key"]):
        blank = {k: torch.zeros((target, *v.shape[1:]), dtype=v.dtype) for k, v in piece.items()
                 if isinstance(v, torch.Tensor)}  # e.g. a contrastive run's text, like the video
        return blank | {"label": torch.full((target,), -1, dtype=torch.int64), "key": [""] * target,
                        "valid": torch.zeros(target, dtype=torch.bool)}
    fill = _repeats(pool, target - have)
    return _cat([piece, fill]) if have else fill


def nothing_decoded(stats: LoaderStats, where: str) -> RuntimeError:
    """The error for a rank that got no clip at all (``where``: e.g. "on rank 0 in this epoch"); when every
    skip was a missing caption (a contrastive run on an uncaptioned set), it says that instead."""
    if stats.skipped and all("no caption" in why for _, why in stats.skipped_keys):
        return RuntimeError(f"no sample {where} has a caption ({stats.skipped} skipped): a contrastive run "
                            "needs 'caption' or 'captions' in KEY.json; preprocess a list with a caption "
                            "column")
    first = (stats.skipped_keys + stats.shortfalls)[:3]
    return RuntimeError(f"no clip could be decoded {where}: every sample failed ({stats.skipped} skipped, "
                        f"{stats.missing} missing, first: {first})")


def rebatch(pieces: Iterator[dict[str, Any]], batch_size: int, quota: int | None, drop_last: bool,
            stats: LoaderStats) -> Iterator[dict[str, Any]]:
    """Merge the workers' batches into batches of ``batch_size`` holding exactly ``quota`` clips.

    Clips beyond ``quota`` are dropped; a shortfall is filled by repeating the last clips, marked invalid.
    ``quota`` None (unknown counts) passes everything through.
    """
    buf: list[dict[str, Any]] = []
    pending = emitted = 0
    recent: dict[str, Any] | None = None
    for piece in pieces:
        stats.add_skipped(piece.pop("skipped", []))
        stats.add_missing(piece.pop("missing", []))
        if "video" not in piece:
            continue
        room = len(piece["key"]) if quota is None else min(len(piece["key"]), quota - emitted - pending)
        if room <= 0:
            continue
        buf.append(piece if room == len(piece["key"]) else _slice(piece, 0, room))
        pending += room
        while pending >= batch_size:
            whole = _cat(buf)
            batch, rest = _slice(whole, 0, batch_size), _slice(whole, batch_size, pending)
            buf, pending, emitted, recent = ([rest] if pending > batch_size else []), pending - batch_size, \
                emitted + batch_size, batch
            yield batch
    rest = _cat(buf) if buf else None  # fewer than batch_size clips
    pool, fill, made = rest if rest is not None else recent, 0, 0
    if quota is not None and emitted + pending < quota:
        if pool is None:
            raise nothing_decoded(stats, "on this rank")
        fill = quota - emitted - pending
        stats.padded += fill
    while pending + fill >= batch_size or (pending + fill > 0 and not drop_last):
        n = min(batch_size, pending + fill) - pending  # repeats in this batch, made only now
        parts = ([rest] if pending else []) + ([_repeats(pool, n, made)] if n else [])
        made, fill, pending = made + n, fill - n, 0
        yield _cat(parts)


def copy_out(pieces: Iterator[dict[str, Any]], busy: torch.Tensor, pin: bool) -> Iterator[dict[str, Any]]:
    """Copy each worker batch out of its shared slot (into pinned memory with CUDA) and free the slot."""
    held: dict[tuple[int, int], torch.Tensor] = {}  # keeps slot mappings alive, so reuse maps nothing new
    for piece in pieces:
        slot = piece.pop("slot", None)
        if slot is not None:
            worker, index = (int(x) for x in slot)
            held[worker, index] = video = piece["video"]
            piece["video"] = torch.empty(video.shape, dtype=torch.uint8, pin_memory=pin).copy_(video)
            busy[worker, index] = 0
        yield piece
