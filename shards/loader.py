"""The streaming clip loader that ``vidshard train`` and ``vidshard eval`` read shard sets with.

Batch layout (one dict per batch, all uint8 video; normalise to float on the device, in the trainer):

- ``"video"``: uint8 ``(B, C, T, H, W)`` for training, ``(B, V, C, T, H, W)`` for evaluation with
  ``V = temporal_views * spatial_views`` views (temporal major), C = 3 in RGB order, H = W = ``size``.
  In pinned memory when CUDA is available.
- ``"label"``: int64 ``(B,)`` from ``KEY.cls`` (else the ``label`` of ``KEY.json``), -1 when unlabeled.
- ``"key"``: ``list[str]`` of sample keys.
- ``"valid"``: bool ``(B,)``; False for clips repeated to fill the rank's quota (see below), which an
  evaluation should not count.

Epoch: ``ClipLoader.set_epoch(e)`` fixes the order, a pure function of (seed, epoch): shards are shuffled,
the sample sequence is cut exactly across ranks and DataLoader workers (``split.py``: every sample read
once per epoch), samples go through a shuffle buffer of ``shuffle_buffer`` encoded samples, each is decoded
once into the frames of ``clips_per_sample`` clips (``decode.py``; with more than one, they go through a
buffer of ``clip_buffer`` clips), and each batch is cropped, resized and converted straight into one of
the worker's reused shared-memory slots, which the main process copies out of (into pinned memory when
CUDA is available) and frees. ``len(loader)`` is the same on every rank: ``ceil(samples / world_size) *
clips_per_sample`` clips per rank, batched (the last partial batch dropped with ``drop_last``). A rank
that comes up short (one sample fewer in the split, or corrupt samples skipped) repeats clips it already
made, marked ``valid=False``, so every rank yields exactly ``len(loader)`` batches.

A corrupt sample (bytes that do not decode, a missing video member, an unreadable shard) is skipped,
logged, and counted in ``loader.stats``; it never ends an epoch.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .batches import SLOTS, LoaderStats, SlotRing, copy_out, rebatch
from .decode import INTERPOLATIONS, crop_resize, decode_views
from .location import ShardSource, resolve
from .sampling import SAMPLINGS, SHORT_MODES, ClipSpec, plan_sample
from .schema import sample_captions
from .split import Span, batches_per_epoch, rank_spans, samples_per_rank, unsized_spans, worker_spans

log = logging.getLogger(__name__)

VIDEO_EXTS = ("mp4", "webm", "mkv", "mov", "avi")


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
    """Clips per batch."""
    workers: int = 2
    """DataLoader worker processes (0 decodes in the main process)."""
    shuffle_buffer: int = 256
    """Training: encoded samples in the shuffle buffer before decoding (0 or 1 disables it)."""
    clip_buffer: int = 16
    """Training with clips_per_sample > 1: decoded clips in a second shuffle buffer, so the clips of one
    sample spread out."""
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
    """Cache http(s) shards here (downloaded once, sha256-checked); None streams them."""
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
        if min(self.workers, self.shuffle_buffer, self.clip_buffer, self.decoder_threads or 0) < 0:
            raise ValueError("workers, shuffle_buffer, clip_buffer and decoder_threads must be >= 0")
        self.clip_spec()  # validates scale and ratio

    def threads(self) -> int:
        """Decoder threads each worker uses (see ``decoder_threads``)."""
        if self.decoder_threads is not None:
            return self.decoder_threads
        return max(1, (os.cpu_count() or 1) // max(1, self.workers))

    def clip_spec(self) -> ClipSpec:
        return ClipSpec(frames=self.frames, stride=self.stride, sampling=self.sampling, train=self.train,
                        scale=tuple(self.scale), ratio=tuple(self.ratio), flip=self.flip,
                        temporal_views=self.temporal_views, spatial_views=self.spatial_views,
                        clips_per_sample=self.clips_per_sample if self.train else 1, short=self.short)


def read_label(sample: dict[str, Any]) -> int:
    """``KEY.cls`` as int, else the ``label`` of ``KEY.json``, else -1."""
    if "cls" in sample:
        return int(bytes(sample["cls"]).decode("ascii").strip())
    if "json" in sample:
        label = json.loads(sample["json"]).get("label")
        return -1 if label is None else int(label)
    return -1


class _Report:
    """Corrupt samples a worker skipped since its last batch."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def handler(self, exn: Exception) -> bool:
        """webdataset exception handler: note the problem, keep going."""
        self.items.append((str(exn.args[-1]) if exn.args else "shard", repr(exn)[:300]))
        log.warning("skipping unreadable shard data: %r", exn)
        return True

    def drain(self) -> list[tuple[str, str]]:
        items, self.items = self.items, []
        return items


class _EpochPipeline(IterableDataset):
    """One rank's epoch as a webdataset pipeline; built inside each DataLoader worker."""

    def __init__(self, cfg: LoaderConfig, source: ShardSource, epoch: int, rank: int, world: int,
                 busy: torch.Tensor | None = None) -> None:
        super().__init__()
        self.cfg, self.source, self.epoch, self.rank, self.world = cfg, source, epoch, rank, world
        self.busy = busy

    def _spans(self, worker: int, workers: int) -> list[Span]:
        counts, cfg = self.source.counts, self.cfg
        if counts is None:
            return unsized_spans(len(self.source.urls), cfg.seed, self.epoch, self.rank * workers + worker,
                                 self.world * workers, shuffle=cfg.train)
        spans = rank_spans(counts, cfg.seed, self.epoch, self.rank, self.world, shuffle=cfg.train)
        return worker_spans(spans, worker, workers)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        cfg, report = self.cfg, _Report()
        rng = random.Random(f"vidshard-clips-{cfg.seed}-{self.epoch}-{self.rank}-{worker}")
        shuffle, spec_k = cfg.train, cfg.clip_spec().clips_per_sample
        spans = self._spans(worker, workers)
        ring = SlotRing(self.busy, worker) if info is not None and self.busy is not None else None
        stages = [
            lambda: iter([{"span": s} for s in spans]),
            lambda src: _read_spans(src, self.source, report),
            wds.shuffle(cfg.shuffle_buffer, initial=min(cfg.shuffle_buffer, 64), rng=rng)
            if shuffle and cfg.shuffle_buffer > 1 else None,
            lambda src: _decode_clips(src, cfg, rng, report),
            # Clips of one sample are spread by a buffer of decoded clips; with one clip per sample the
            # sample buffer already did the shuffling, and filling this one would only delay the first batch.
            wds.shuffle(cfg.clip_buffer, initial=min(cfg.clip_buffer, 2 * spec_k), rng=rng)
            if shuffle and cfg.clip_buffer > 1 and spec_k > 1 else None,
            wds.batched(cfg.batch_size, partial=True,
                        collation_fn=functools.partial(_collate, cfg=cfg, report=report, ring=ring)),
            lambda src: _attach_reports(src, report),
        ]
        return iter(wds.DataPipeline(*stages))


def _read_spans(src: Iterator[dict], source: ShardSource, report: _Report) -> Iterator[dict[str, Any]]:
    """Samples of each span: webdataset reads the shard, we keep samples ``start`` to ``stop``."""
    for item in src:
        span: Span = item["span"]
        try:
            url = source.open_url(span.shard)
        except Exception as exn:  # a shard that cannot be fetched: its samples count as skipped
            report.handler(exn)
            continue
        samples = wds.tarfile_to_samples(handler=report.handler)(iter([{"url": url}]))
        for i, sample in enumerate(samples):
            if span.stop is not None and i >= span.stop:
                break  # stop reading: the rest of the shard belongs to another reader
            if i >= span.start:
                yield sample


def _decode_clips(src: Iterator[dict], cfg: LoaderConfig, rng: random.Random,
                  report: _Report) -> Iterator[dict[str, Any]]:
    """Decode each sample once into its clips' frames; a sample that fails is reported and skipped.

    Frames are converted (crop, resize, RGB) only in :func:`_collate`, straight into the batch.
    """
    spec = cfg.clip_spec()
    for sample in src:
        key = sample.get("__key__", "?")
        try:
            ext = next((e for e in VIDEO_EXTS if e in sample), None)
            if ext is None:
                raise ValueError(f"no video member (one of {VIDEO_EXTS})")
            label = read_label(sample)
            extra = _caption_fields(sample, cfg, rng)
            clips = decode_views(sample[ext], lambda n, w, h: plan_sample(n, w, h, spec, rng), cfg.threads())
        except Exception as exn:  # any failure of one sample must not end the epoch
            log.warning("skipping corrupt sample %s in %s: %s", key, sample.get("__url__", "?"), exn)
            report.items.append((key, f"{type(exn).__name__}: {exn}"[:300]))
            continue
        for views in clips:
            yield {"views": views, "label": label, "key": key, **extra}


def _caption_fields(sample: dict[str, Any], cfg: LoaderConfig, rng: random.Random) -> dict[str, Any]:
    """``cfg.text`` applied to the sample's captions (nothing without ``cfg.text``)."""
    if cfg.text is None:
        return {}
    captions = sample_captions(json.loads(sample["json"])) if "json" in sample else []
    if not captions:
        raise ValueError("no caption (a contrastive run needs 'caption' or 'captions' in KEY.json: "
                         "preprocess a list with a caption column)")
    return cfg.text(captions, rng)


def _collate(clips: list[dict[str, Any]], cfg: LoaderConfig, report: _Report,
             ring: SlotRing | None = None) -> dict[str, Any]:
    """Crop, resize and convert every clip's frames straight into the batch tensor."""
    views = len(clips[0]["views"])
    clip = (3, cfg.frames, cfg.size, cfg.size)  # (C, T, H, W)
    shape = (len(clips), *clip) if cfg.train else (len(clips), views, *clip)  # (B, [V,] C, T, H, W)
    batch: dict[str, Any] = {}
    if ring is None:
        video = torch.empty(shape, dtype=torch.uint8)
    else:  # in a worker: a reused shared buffer, so sending the batch copies and allocates nothing
        batch["slot"], video = ring.take(shape)
    out, valid = video.numpy(), torch.ones(len(clips), dtype=torch.bool)
    for i, c in enumerate(clips):
        try:
            for v, (plan, frames) in enumerate(c["views"]):
                crop_resize(frames, plan.box, cfg.size, plan.flip, cfg.interpolation,
                            out=out[i] if cfg.train else out[i, v])
        except Exception as exn:  # a clip that will not convert: reported, kept as an invalid blank
            log.warning("skipping clip of %s: %s", c["key"], exn)
            report.items.append((c["key"], f"{type(exn).__name__}: {exn}"[:300]))
            out[i], valid[i] = 0, False
    extra = {k: torch.stack([c[k] for c in clips]) for k in clips[0] if k not in ("views", "label", "key")}
    return batch | {"video": video, "label": torch.tensor([c["label"] for c in clips], dtype=torch.int64),
                    "key": [c["key"] for c in clips], "valid": valid} | extra


def _attach_reports(src: Iterator[dict], report: _Report) -> Iterator[dict[str, Any]]:
    for batch in src:
        batch["skipped"] = report.drain()
        yield batch
    if report.items:  # problems after the last batch still reach the main process
        yield {"skipped": report.drain()}


def _dist_defaults(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is not None and world_size is not None:
        return rank, world_size
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return (dist.get_rank() if rank is None else rank,
                dist.get_world_size() if world_size is None else world_size)
    return rank or 0, world_size or 1


class ClipLoader:
    """Batches of clips from a shard set for one rank (see the module docstring for the layout).

    ``rank`` and ``world_size`` default to torch.distributed's when it is initialized, else 0 and 1.
    Call :meth:`set_epoch` before each epoch; iterating yields exactly ``len(self)`` batches.
    """

    def __init__(self, cfg: LoaderConfig, rank: int | None = None, world_size: int | None = None) -> None:
        self.cfg = cfg
        self.rank, self.world_size = _dist_defaults(rank, world_size)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} not in [0, {self.world_size})")
        self.source = resolve(cfg.source, cfg.cache_dir)
        self.epoch = 0
        self.stats = LoaderStats()

    @property
    def classes(self) -> list[str] | None:
        """Label names from the manifest (index = label), or None when unlabeled or unknown."""
        return self.source.classes

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
        """Clips this rank yields per epoch (the same on every rank)."""
        total = self.num_samples
        if total is None:
            return None
        return samples_per_rank(total, self.world_size) * self.cfg.clip_spec().clips_per_sample

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        total = self.num_samples
        if total is None:
            raise TypeError(f"{self.cfg.source}: batches per epoch need the manifest's sample counts; "
                            "open the shard set by folder or manifest.json instead of a pattern/pipe:")
        return batches_per_epoch(total, self.world_size, self.cfg.clip_spec().clips_per_sample,
                                 self.cfg.batch_size, self.cfg.drop_last)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        cfg = self.cfg
        self.stats = LoaderStats(epoch=self.epoch)
        busy = torch.zeros((max(1, cfg.workers), SLOTS), dtype=torch.uint8).share_memory_()
        pipeline = _EpochPipeline(cfg, self.source, self.epoch, self.rank, self.world_size, busy)
        pin = torch.cuda.is_available()
        loader = DataLoader(pipeline, batch_size=None, num_workers=cfg.workers,
                            prefetch_factor=2 if cfg.workers else None)
        pieces = copy_out(iter(loader), busy, pin)
        for batch in rebatch(pieces, cfg.batch_size, self.clip_quota, cfg.drop_last, self.stats):
            self.stats.batches += 1
            self.stats.clips += len(batch["key"])
            if pin and not batch["video"].is_pinned():  # merged from pieces, or decoded in this process
                batch["video"] = batch["video"].pin_memory()
            yield batch
        if self.stats.skipped:
            log.warning("epoch %d, rank %d: skipped %d corrupt samples (first: %s)", self.epoch, self.rank,
                        self.stats.skipped, self.stats.skipped_keys[:3])

