"""The streaming clip loader that ``vidshard train`` and ``vidshard eval`` read shard sets with.

Batch layout (one dict per batch, all uint8 video; normalise to float on the device, in the trainer):

- ``"video"``: uint8 ``(B, C, T, H, W)`` for training, ``(B, V, C, T, H, W)`` for evaluation with
  ``V = temporal_views * spatial_views`` views (temporal major), C = 3 in RGB order, H = W = ``size``.
  In pinned memory when CUDA is available.
- ``"label"``: int64 ``(B,)`` from ``KEY.cls`` (else the ``label`` of ``KEY.json``), -1 when unlabeled.
- ``"key"``: ``list[str]`` of sample keys.
- ``"valid"``: bool ``(B,)``; False for clips repeated to fill the rank's quota (see below), which an
  evaluation should not count.

Epoch: ``ClipLoader.set_epoch(e)`` fixes the order, a pure function of (seed, epoch) (``split.py``): shards
are shuffled, the sample sequence is cut exactly across ranks, DataLoader workers and batches (every
sample read once per epoch), each worker's share is shuffled in blocks of ``shuffle_buffer`` encoded
samples, each sample is decoded once into the frames of its ``clips_per_sample`` clips (``decode.py``,
with a random generator of its own: the clips of a sample do not depend on who reads it), and each
batch is cropped, resized and converted straight into one of the worker's reused shared-memory slots
(``stream.py``). ``len(loader)`` is the same on every rank: ``ceil(samples / world_size) *
clips_per_sample`` clips per rank, batched (the last partial batch dropped with ``drop_last``). A batch
short of clips (a corrupt sample, or a rank one sample short) repeats clips it or the batch before made,
marked ``valid=False``, so every rank yields exactly ``len(loader)`` batches of equal size.

Workers live across epochs: the loader keeps one DataLoader iterator and its workers go on to the next
epoch by themselves, so many short epochs or a small evaluation set run at the steady rate. Leaving an
epoch early (``break``) stops the workers; :meth:`ClipLoader.close` stops them for good.

Resume: :meth:`ClipLoader.state_dict` is the epoch, the seed and the position in the epoch (the layouts
it was read with and the batches consumed in each; ``samples`` consumed in the global order), checked
against the shard set. After :meth:`ClipLoader.load_state_dict` the epoch goes on from there without
reading or decoding a consumed sample: with the same ranks, workers and batch size exactly as it would
have, with others (elastic) over the samples not yet consumed, so every sample is still seen exactly
once in the epoch.

A corrupt sample (bytes that do not decode, a missing video member, a sample missing from its shard, an
unreadable shard) is skipped, logged, and counted in ``loader.stats``; it never ends an epoch.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch.utils.data import DataLoader

from . import cache
from .batches import SLOTS, LoaderStats, copy_out, nothing_decoded, pad_to, rebatch
from .decode import INTERPOLATIONS
from .location import ShardSource, resolve
from .sampling import SAMPLINGS, SHORT_MODES, ClipSpec
from .schema import MIN_SAMPLE_BYTES, ManifestError
from .split import (
    Layout,
    batch_sizes,
    batches_per_epoch,
    even_sizes,
    rank_batches,
    remaining,
    samples_per_rank,
    size,
)
from .stream import Start, Stream
from .stream import read_label as read_label  # re-exported: the label rule belongs to the loader's API

log = logging.getLogger(__name__)

STATE_VERSION = 1


@dataclass(frozen=True, kw_only=True)
class LoaderConfig:
    """How to read clips from a shard set (clip defaults come from ``ClipSpec``, their one home)."""

    source: str
    """Shard set: folder, manifest.json path/URL, http(s):// prefix, brace pattern or pipe: command."""
    frames: int = ClipSpec.frames
    """Frames per clip (T)."""
    stride: int = ClipSpec.stride
    """Dense sampling: take every ``stride``-th frame."""
    size: int = 224
    """Output height and width in pixels."""
    sampling: str = ClipSpec.sampling
    """``dense`` (T frames at ``stride``) or ``uniform`` (T frames spread over the whole sample)."""
    short: str = ClipSpec.short
    """Dense clips longer than the sample: ``repeat`` the last frame or ``loop`` back to the start."""
    train: bool = ClipSpec.train
    """Training (random start, random resized crop, flip, shuffling) or evaluation (centre, views)."""
    scale: tuple[float, float] = ClipSpec.scale
    """Training crop: range of the crop's area as a fraction of the frame."""
    ratio: tuple[float, float] = ClipSpec.ratio
    """Training crop: range of the crop's aspect ratio (width / height)."""
    flip: bool = ClipSpec.flip
    """Training: flip half of the clips horizontally."""
    temporal_views: int = ClipSpec.temporal_views
    """Evaluation: clips per sample spread over time."""
    spatial_views: int = ClipSpec.spatial_views
    """Evaluation: square crops per clip along the long side (1 = centre, 3 = left/centre/right)."""
    clips_per_sample: int = ClipSpec.clips_per_sample
    """Training: clips cut from each decoded sample (different offsets and crops), sharing its decode."""
    batch_size: int = 8
    """Clips per batch (training: a multiple of ``clips_per_sample``; a sample's clips share a batch)."""
    workers: int = 2
    """DataLoader worker processes (0 decodes in the main process)."""
    shuffle_buffer: int = 256
    """Training: encoded samples shuffled together, as consecutive blocks of this many samples of each
    worker's share (0 or 1: stored order). Memory: one block of encoded samples per worker."""
    seed: int = 0
    """Seed of every random choice; the order is a pure function of (seed, epoch)."""
    drop_last: bool = True
    """Drop each rank's last partial batch."""
    decoder_threads: int | None = None
    """Decoder threads per worker process (0 = FFmpeg's choice). None: the cores left per worker, so
    threads are used only when there are fewer workers than cores (1 thread with a worker per core)."""
    interpolation: str = "bilinear"
    """swscale filter for the fused crop and resize: bilinear, area, bicubic or fast_bilinear."""
    cache_dir: str | None = None
    """Cache http(s) shards here (downloaded once, sha256-checked); None streams them. Object storage
    (s3://, gs://, ...) is always cached, by default in ~/.cache/vidshard."""
    timeout_s: float = cache.RetryPolicy.timeout_s
    """http(s) sources: seconds a connection or a read may stall; a shard's whole transfer must end within
    timeout_s + its bytes / 256 KiB/s (a stalled or dripping server fails instead of hanging)."""
    cache_limit: int | None = None
    """Bytes the cache may hold; least-recently-used shards not being read are evicted (None: no limit)."""
    follow: bool = False
    """A growing set (``preprocess --watch``): re-read the manifest at the start of each epoch and take
    in the shards added since. Off: the set, and so the epoch length, is fixed when the loader opens."""
    text: Any = None
    """Contrastive runs: a picklable ``f(captions, rng) -> {name: tensor}`` run in the workers on each
    sample's captions (``train.text.CaptionTokens``: pick one, tokenise); its tensors join the batch
    like ``label``. A sample without any caption is then skipped and counted."""

    def __post_init__(self) -> None:
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, not {self.sampling!r}")
        if self.short not in SHORT_MODES:
            raise ValueError(f"short must be one of {SHORT_MODES}, not {self.short!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, not {self.interpolation!r}")
        for name in ("frames", "stride", "size", "batch_size", "clips_per_sample", "temporal_views",
                     "spatial_views"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if min(self.workers, self.shuffle_buffer, self.decoder_threads or 0) < 0:
            raise ValueError("workers, shuffle_buffer and decoder_threads must be >= 0")
        if self.cache_limit is not None and self.cache_limit < 1:
            raise ValueError(f"cache_limit must be a positive number of bytes, got {self.cache_limit}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        if self.batch_size % self.clips_per_batch_sample:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of clips_per_sample "
                             f"({self.clips_per_sample}): the clips of a sample go into one batch")
        self.clip_spec()  # validates scale and ratio

    def threads(self) -> int:
        """Decoder threads each worker uses (see ``decoder_threads``)."""
        if self.decoder_threads is not None:
            return self.decoder_threads
        return max(1, (os.cpu_count() or 1) // max(1, self.workers))

    @property
    def clips_per_batch_sample(self) -> int:
        """Clips each sample puts into a batch (``clips_per_sample`` when training, else 1)."""
        return self.clips_per_sample if self.train else 1

    def layout(self, world: int, workers: int) -> Layout:
        """How an epoch is cut for ``world`` ranks of ``workers`` DataLoader workers (``split.py``)."""
        block = self.shuffle_buffer if self.train and self.shuffle_buffer > 1 else 1
        return Layout(world, max(1, workers), self.batch_size // self.clips_per_batch_sample, block)

    def order_epoch(self, epoch: int) -> int:
        """The epoch the order and clips depend on: evaluation passes are all alike."""
        return epoch if self.train else 0

    def clip_spec(self) -> ClipSpec:
        return ClipSpec(frames=self.frames, stride=self.stride, sampling=self.sampling, train=self.train,
                        scale=tuple(self.scale), ratio=tuple(self.ratio), flip=self.flip,
                        temporal_views=self.temporal_views, spatial_views=self.spatial_views,
                        clips_per_sample=self.clips_per_sample if self.train else 1, short=self.short)


def check_claims(source: ShardSource) -> None:
    """Refuse a manifest that claims more samples than a shard's bytes can hold (``MIN_SAMPLE_BYTES``
    each), checked against the manifest's byte count and, for a local shard, the bytes on disk: the
    batch count of an epoch and its padding grow with the claim."""
    for url, info in zip(source.urls, source.infos or [], strict=False):
        present = info.bytes
        if "://" not in url and not url.startswith("pipe:"):  # a local shard: the bytes really there
            with contextlib.suppress(OSError):  # a missing shard is reported when it is read
                present = min(present, os.path.getsize(url))
        if info.samples > present // MIN_SAMPLE_BYTES:
            raise ManifestError(f"{source.base}: manifest entry {info.name} claims {info.samples} samples "
                                f"in {present} bytes, more than {present // MIN_SAMPLE_BYTES} can fit; the "
                                "manifest or the shard is damaged (run `vidshard verify` on the set)")


def _dist_defaults(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is not None and world_size is not None:
        return rank, world_size
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return (dist.get_rank() if rank is None else rank,
                dist.get_world_size() if world_size is None else world_size)
    return rank or 0, world_size or 1


def shard_set_id(source: ShardSource) -> str | None:
    """A fingerprint of the shard set (names, counts, hashes); None without a manifest."""
    if source.infos is None:
        return None
    text = "\n".join(f"{i.name} {i.samples} {i.sha256}" for i in source.infos)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class _Live:
    """The long-lived DataLoader iterator, its batches copied out, and the start of its next batch."""

    workers: Iterator[dict[str, Any]]
    batches: Iterator[dict[str, Any]]
    layout: Layout
    next: Start

    def close(self) -> None:
        self.batches.close()
        shutdown = getattr(self.workers, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


class ClipLoader:
    """Batches of clips from a shard set for one rank (see the module docstring for the layout).

    ``rank`` and ``world_size`` default to torch.distributed's when it is initialized, else 0 and 1.
    Call :meth:`set_epoch` before each epoch; iterating yields the epoch's batches (``len(self)`` for a
    whole epoch, the rest of it after :meth:`load_state_dict`).
    """

    def __init__(self, cfg: LoaderConfig, rank: int | None = None, world_size: int | None = None) -> None:
        self.cfg = cfg
        self.rank, self.world_size = _dist_defaults(rank, world_size)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} not in [0, {self.world_size})")
        policy = replace(cache.DEFAULT_POLICY, timeout_s=cfg.timeout_s)
        self.source = resolve(cfg.source, cfg.cache_dir, cfg.cache_limit, policy=policy)
        check_claims(self.source)
        self.stats = LoaderStats()
        self.epoch = 0
        self._history: tuple[Layout, ...] = ()  # segments of this epoch read before the current one
        self._layout: Layout | None = None  # the current segment's layout (None: not started)
        self._step = 0  # batches of the current segment consumed
        self._done = False  # this epoch was read to its end
        self._batches = -1  # batches of the current segment (-1: not started)
        self._live: _Live | None = None
        self._skip = 0  # without counts: batches of this epoch to read again and drop (a resume)

    @property
    def classes(self) -> list[str] | None:
        """Label names from the manifest (index = label), or None when unlabeled or unknown."""
        return self.source.classes

    @property
    def cache_stats(self) -> dict[str, int]:
        """Cache hits, misses, bytes_downloaded, evicted, evicted_bytes of this loader's processes since
        it was made ({} without a cache)."""
        counters = self.source.counters
        return {} if counters is None else counters.snapshot()

    @property
    def num_classes(self) -> int:
        return len(self.classes or [])

    @property
    def num_samples(self) -> int | None:
        """Samples in the whole shard set (None without a manifest)."""
        counts = self.source.counts
        return None if counts is None else sum(counts)

    @property
    def clip_quota(self) -> int | None:
        """Clips this rank yields per whole epoch (the same on every rank)."""
        total = self.num_samples
        if total is None:
            return None
        return samples_per_rank(total, self.world_size) * self.cfg.clips_per_batch_sample

    def set_epoch(self, epoch: int) -> None:
        """Read ``epoch`` next (from its start, unless a loaded state stopped inside it); with ``follow``,
        a fresh epoch first takes in the shards the manifest lists now."""
        if epoch != self.epoch or self._done:
            self.epoch, self._history, self._layout, self._step, self._done = epoch, (), None, 0, False
            self._batches = -1
            if self.cfg.follow:
                self._follow()

    def _followed(self, state: dict[str, Any]) -> dict[str, Any]:
        """A growing set's position from before it grew: its epoch order is gone, so the next whole
        epoch (this one, when the state was at its start) reads the set as it is now."""
        here = shard_set_id(self.source)
        if not self.cfg.follow or not isinstance(state, dict) or state.get("set") in (None, here):
            return state
        epoch = int(state.get("epoch", 0)) + bool(state.get("segments") or state.get("batches"))
        log.warning("follow: %s changed since the checkpoint; going on at the start of epoch %d",
                    self.cfg.source, epoch)
        return {**state, "set": here, "epoch": epoch, "segments": [], "batches": 0, "samples": 0}

    def _follow(self) -> None:
        """Re-read the manifest; when its shards changed, read the new list from this epoch on (the
        workers hold the old list, so they are restarted). A manifest that cannot be read now (being
        replaced, a server hiccup) leaves the set as it was for one more epoch."""
        if self.source.counts is None:
            return  # a pattern or pipe: has no manifest to follow
        try:
            fresh = resolve(self.cfg.source, self.cfg.cache_dir, policy=self.source.policy)
            check_claims(fresh)
        except (OSError, ValueError) as exn:
            log.warning("follow: %s: manifest not re-read (%s); the set stays as it was", self.cfg.source,
                        exn)
            return
        if fresh.classes != self.source.classes:  # the model's head was sized for the old classes
            log.warning("follow: %s: the classes changed (%s); new shards not taken in, restart training to "
                        "use them", self.cfg.source, fresh.classes)
            return
        if shard_set_id(fresh) != shard_set_id(self.source):
            log.info("follow: %s now holds %d samples in %d shards (was %d)", self.cfg.source,
                     sum(fresh.counts), len(fresh.counts), sum(self.source.counts))
            self._close_live()
            self.source = fresh

    def __len__(self) -> int:
        total = self.num_samples
        if total is None:
            raise TypeError(f"{self.cfg.source}: batches per epoch need the manifest's sample counts; "
                            "open the shard set by folder or manifest.json instead of a pattern/pipe:")
        return batches_per_epoch(total, self.world_size, self.cfg.clips_per_batch_sample,
                                 self.cfg.batch_size, self.cfg.drop_last)

    # -- resume -------------------------------------------------------------------------------------

    def position(self) -> tuple:
        """A cheap snapshot of where this loader is, for :meth:`state_dict` later (a trainer that fetches
        ahead takes it with each batch and saves the one of the last batch it trained on)."""
        done = self._done or (self._layout is not None and self._step == self._batches)  # at its last batch
        return self.epoch, done, self._history, self._layout, self._step

    def state_dict(self, position: tuple | None = None) -> dict[str, Any]:
        """Where this rank is (or was at ``position``): the same on every rank after the same number of
        steps, so one rank saves it.

        ``segments`` are the layouts the epoch was read with and the steps of each; ``samples`` is how
        many samples of the epoch they consumed in the global order. A shard set without counts keeps
        only ``batches`` (its resume reads those batches again to drop them)."""
        epoch, done, history, layout, step = self.position() if position is None else position
        cfg, counts = self.cfg, self.source.counts
        segments = [*history, *([replace(layout, steps=step)] if layout is not None and step else [])]
        state = {"version": STATE_VERSION, "seed": cfg.seed, "train": cfg.train, "drop_last": cfg.drop_last,
                 "set": shard_set_id(self.source), "epoch": epoch + done, "segments": [], "samples": 0,
                 "batches": 0 if done or counts is not None else step}
        if not done and counts is not None:
            state["segments"] = [s.to_dict() for s in segments]
            left = remaining(counts, cfg.seed, cfg.order_epoch(epoch), cfg.train, segments, cfg.drop_last)
            state["samples"] = sum(counts) - size(left)
        return state

    def batches_left(self) -> int:
        """Batches the current epoch still yields on this rank (``len(self)`` when it has not started)."""
        if self.source.counts is None or self._done:
            return len(self)
        here = self._layout_here()
        history = list(self._history) + ([replace(self._layout, steps=self._step)]
                                         if self._layout not in (None, here) and self._step else [])
        step = self._step if self._layout == here else 0
        total = size(remaining(self.source.counts, self.cfg.seed, self.cfg.order_epoch(self.epoch),
                               self.cfg.train, history, self.cfg.drop_last))
        return rank_batches(total, self.world_size, here.per_batch, self.cfg.drop_last) - step

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Go on from ``state`` (refusing one that cannot continue here, with the reason). With ``follow``,
        a state saved on the set as it was before it grew goes on at the start of the next epoch."""
        state = self._followed(state)
        why = _refusal(state, self.cfg, shard_set_id(self.source))
        if why:
            raise ValueError(f"cannot resume the loader: {why}")
        self._close_live()
        self.epoch, self._done, self._step, self._layout = int(state["epoch"]), False, 0, None
        self._batches = -1
        self._history = tuple(Layout(**s) for s in state["segments"])
        self._skip = int(state.get("batches", 0))
        if self.source.counts is not None:
            try:  # steps a layout cannot have run mean the state belongs to other data
                remaining(self.source.counts, self.cfg.seed, self.cfg.order_epoch(self.epoch), self.cfg.train,
                          list(self._history), self.cfg.drop_last)
            except (ValueError, IndexError) as exn:
                raise ValueError(f"cannot resume the loader: its position does not fit this shard set ({exn})"
                                 ) from None
        if self._history and self._history[-1] == replace(self._layout_here(), steps=self._history[-1].steps):
            self._layout, self._step, self._history = self._layout_here(), self._history[-1].steps, \
                self._history[:-1]  # the same layout: continue its segment exactly

    def _layout_here(self) -> Layout:
        return self.cfg.layout(self.world_size, self.cfg.workers)

    # -- iteration ----------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self.source.counts is None:
            yield from self._unsized()
            return
        if self._done:  # read again: the same epoch from its start
            self.set_epoch(self.epoch)
        here = self._layout_here()
        if self._layout is not None and self._layout != here:  # another layout: a new segment
            done = (replace(self._layout, steps=self._step),) if self._step else ()
            self._history, self._step = (*self._history, *done), 0
        self._layout = here
        start = Start(self.cfg.order_epoch(self.epoch), self._history, self._step)
        total = size(remaining(self.source.counts, self.cfg.seed, start.epoch, self.cfg.train,
                               list(start.history), self.cfg.drop_last))
        batches = rank_batches(total, self.world_size, here.per_batch, self.cfg.drop_last)
        yield from self._run(start, batches, total)

    def _run(self, start: Start, batches: int, total: int) -> Iterator[dict[str, Any]]:
        targets = batch_sizes(even_sizes(total, self.world_size)[0], self._layout.per_batch, batches)
        self._batches = batches
        self.stats = LoaderStats(epoch=self.epoch)
        live = self._live_for(start) if start.step < batches else None
        recent, finished = None, False
        try:
            for j in range(start.step, batches):
                piece = next(live.batches)
                if piece.get("index") != j:
                    raise RuntimeError(f"loader out of step: batch {piece.get('index')} where {j} was due")
                batch = self._deliver(piece, targets[j] * self.cfg.clips_per_batch_sample, recent)
                recent, self._step = batch, j + 1
                yield batch
            finished = True
            if batches and not self.stats.valid:
                raise nothing_decoded(self.stats, f"on rank {self.rank} in this epoch")
        finally:
            if finished:
                self._done = True
                if live is not None:  # its workers have gone on to the next epoch by themselves
                    live.next = Start(self.cfg.order_epoch(self.epoch + 1))
            else:  # left early: its workers are ahead of the consumer; stop them
                self._close_live()
        self._report()

    def _deliver(self, piece: dict[str, Any], target: int, recent: dict[str, Any] | None) -> dict[str, Any]:
        self.stats.add_skipped(piece.pop("skipped", []))
        self.stats.add_missing(piece.pop("missing", []))
        self.stats.decoded += piece.pop("decoded", 0)
        for k in ("epoch", "index", "target"):
            piece.pop(k, None)
        batch = pad_to(piece, target, recent, self.stats)
        self.stats.batches += 1
        self.stats.clips += len(batch["key"])
        self.stats.valid += int(batch["valid"].sum())
        if torch.cuda.is_available() and not batch["video"].is_pinned():
            batch["video"] = batch["video"].pin_memory()
        return batch

    def _live_for(self, start: Start) -> _Live:
        live = self._live
        if live is None or live.next != start or live.layout != self._layout:
            self._close_live()
            cfg = self.cfg
            busy = torch.zeros((max(1, cfg.workers), SLOTS), dtype=torch.uint8).share_memory_()
            stream = Stream(cfg, self.source, self.rank, self.world_size, start, busy)
            loader = DataLoader(stream, batch_size=None, num_workers=cfg.workers,
                                prefetch_factor=2 if cfg.workers else None, generator=_generator(cfg))
            workers = iter(loader)
            live = self._live = _Live(workers, copy_out(workers, busy, torch.cuda.is_available()),
                                      self._layout, start)
        return live

    def _close_live(self) -> None:
        if self._live is not None:
            self._live.close()
            self._live = None

    def close(self) -> None:
        """Stop the worker processes now (they also stop when the loader is garbage collected)."""
        self._close_live()

    def _unsized(self) -> Iterator[dict[str, Any]]:
        """Without counts: one DataLoader per epoch, whole shards round-robin, batches merged."""
        cfg = self.cfg
        self.stats = LoaderStats(epoch=self.epoch)
        busy = torch.zeros((max(1, cfg.workers), SLOTS), dtype=torch.uint8).share_memory_()
        stream = Stream(cfg, self.source, self.rank, self.world_size, Start(self.epoch), busy)
        loader = DataLoader(stream, batch_size=None, num_workers=cfg.workers,
                            prefetch_factor=2 if cfg.workers else None, generator=_generator(cfg))
        pieces = copy_out(iter(loader), busy, torch.cuda.is_available())
        skip, self._skip, self._step, self._done = self._skip, 0, 0, False
        for batch in rebatch(_count_decoded(pieces, self.stats), cfg.batch_size, None, cfg.drop_last,
                             self.stats):
            self._step += 1
            if self._step <= skip:
                continue
            self.stats.batches += 1
            self.stats.clips += len(batch["key"])
            yield batch
        self._done = True
        self._report()

    def _report(self) -> None:
        if self.stats.skipped:
            log.warning("epoch %d, rank %d: skipped %d corrupt samples (first: %s)", self.epoch, self.rank,
                        self.stats.skipped, self.stats.skipped_keys[:3])
        if self.stats.missing:
            log.warning("epoch %d, rank %d: %d samples the manifest lists were not read (%s); "
                        "run `vidshard verify` on the set", self.epoch, self.rank, self.stats.missing,
                        self.stats.shortfalls[:3])


def _generator(cfg: LoaderConfig) -> torch.Generator:
    """The DataLoader's own seed source: starting workers must not draw from torch's global generator
    (a resumed run restores that generator and must see the same draws as the run it continues)."""
    return torch.Generator().manual_seed(cfg.seed)


def _count_decoded(pieces: Iterator[dict[str, Any]], stats: LoaderStats) -> Iterator[dict[str, Any]]:
    for piece in pieces:
        stats.decoded += piece.pop("decoded", 0)
        yield piece


def _refusal(state: dict[str, Any], cfg: LoaderConfig, set_id: str | None) -> str | None:
    """Why ``state`` cannot continue with ``cfg`` on this shard set (None: it can)."""
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        return f"unknown loader state (version {state.get('version') if isinstance(state, dict) else '?'})"
    if state.get("set") != set_id:
        return ("it was saved reading another shard set (its shard names, counts or hashes differ); "
                "resume with the same data, or start a new run")
    if state.get("seed") != cfg.seed:
        return f"it was saved with seed {state.get('seed')}, this run has seed {cfg.seed}; the order differs"
    if state.get("train") != cfg.train or state.get("drop_last") != cfg.drop_last:
        return "it was saved by a training (or evaluation) loader with other drop_last; not this one"
    if set_id is None and state.get("segments"):
        return "a position inside an epoch needs the manifest's sample counts (a pattern/pipe: has none)"
    try:
        for s in state["segments"]:
            Layout(**s)
        int(state["epoch"])
    except (KeyError, TypeError, ValueError) as exn:
        return f"malformed loader state ({exn})"
    return None
