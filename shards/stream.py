"""Inside each DataLoader worker: the batches of one rank, epoch after epoch, as ``split.py`` plans them.

A worker is started once and keeps going from epoch to epoch (decoders, buffers and processes stay
alive), so short epochs and small evaluation sets run at the steady rate. The DataLoader hands batch
``g`` of its life to worker ``g % workers``; a worker therefore computes which slot (``split.py``) of
each epoch is its own and makes exactly that slot's batches, in order:

    slot spans --blocks--> ShardReader.read --block order--> decode (one Random per sample) --> collate

Each batch comes out as the clips of its samples, converted straight into one of the worker's reused
shared-memory slots, tagged with its epoch and index and the clip count the rank must deliver for it
(the main process pads a shortfall: a corrupt or missing sample, or a rank one sample short). The
clips of a sample depend only on (seed, epoch, shard, index), not on the layout, so a resumed or
re-laid-out epoch makes the same clips of the same sample.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

from .batches import SlotRing
from .decode import crop_resize, decode_views
from .location import ShardSource
from .reader import ShardReader
from .sampling import plan_sample
from .schema import sample_captions
from .split import (
    Layout,
    Position,
    batch_sizes,
    cut,
    epoch_spans,
    even_sizes,
    rank_batches,
    remaining,
    segment_key,
    size,
    slot_blocks,
    slot_parts,
    unsized_spans,
)

if TYPE_CHECKING:
    from .loader import LoaderConfig

log = logging.getLogger(__name__)

VIDEO_EXTS = ("mp4", "webm", "mkv", "mov", "avi")
UNLABELED = -1  # the label of a sample without one
MAX_LABEL = 2**31 - 1  # bound on a label when the manifest names no classes


@dataclass(frozen=True)
class Start:
    """Where a stream begins: ``epoch``, the segments of it already done, and ``step`` batches into the
    current one (whose layout is the stream's own)."""

    epoch: int
    history: tuple[Layout, ...] = ()
    step: int = 0


@dataclass(frozen=True)
class EpochPlan:
    """One rank's view of one (remaining) epoch."""

    batches: int
    """Batches every rank steps in this segment."""
    sizes: list[int]
    """Samples this rank has for each batch."""
    targets: list[int]
    """Samples the largest rank has for each batch (what every rank delivers, padding the rest)."""
    slots: list[list]
    """This rank's slots (span lists)."""
    key: str
    """Block-shuffle key of this segment (a slot adds ``-{rank}-{slot}``)."""


def plan_epoch(counts: list[int], *, seed: int, epoch: int, shuffle: bool, drop_last: bool,
               history: tuple[Layout, ...], layout: Layout, rank: int) -> EpochPlan:
    """The segment ``layout`` of ``epoch`` after ``history``, from rank ``rank``'s side (pure)."""
    spans = (remaining(counts, seed, epoch, shuffle, list(history), drop_last) if history
             else epoch_spans(counts, seed, epoch, shuffle))
    total = size(spans)
    n = rank_batches(total, layout.world, layout.per_batch, drop_last)
    part = cut(spans, even_sizes(total, layout.world))[rank]
    largest = even_sizes(total, layout.world)[0]
    return EpochPlan(batches=n, sizes=batch_sizes(size(part), layout.per_batch, n),
                     targets=batch_sizes(largest, layout.per_batch, n),
                     slots=slot_parts(part, layout.per_batch, layout.workers, n),
                     key=f"{segment_key(seed, epoch, len(history))}-{rank}")


def read_label(sample: dict[str, Any], num_classes: int | None = None) -> int:
    """``KEY.cls`` as int, else the ``label`` of ``KEY.json``, else -1 (unlabeled).

    Raises ``ValueError`` for a label that is not a class: below -1, at or above ``num_classes`` (the
    manifest's classes; ``None`` when it names none, then above ``MAX_LABEL``), or not an integer.
    """
    label: Any = UNLABELED
    if "cls" in sample:
        label = int(bytes(sample["cls"]).decode("ascii").strip())
    elif "json" in sample:
        meta = json.loads(sample["json"])
        label = meta.get("label", UNLABELED) if isinstance(meta, dict) else UNLABELED
        label = UNLABELED if label is None else label
    if type(label) is not int:
        raise ValueError(f"label {label!r} is not an integer")
    top = MAX_LABEL if num_classes is None else num_classes - 1
    if label != UNLABELED and not 0 <= label <= top:
        named = "" if num_classes is None else f" of the manifest's {num_classes} classes"
        raise ValueError(f"label {label} is not one{named} (0..{top}, or {UNLABELED} for none)")
    return label


class Report:
    """Samples a worker skipped, found missing, and decoded since its last batch."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []
        self.missing: list[tuple[str, int, str]] = []  # (shard, samples it fell short by, why)
        self.decoded = 0

    def skip(self, what: str, why: str) -> None:
        log.warning("skipping %s: %s", what, why)
        self.items.append((what, why[:300]))

    def drain(self) -> dict[str, Any]:
        out = {"skipped": self.items, "missing": self.missing, "decoded": self.decoded}
        self.items, self.missing, self.decoded = [], [], 0
        return out


class Stream(IterableDataset):
    """One rank's batches from ``start`` on: endless over epochs with counts, one epoch without."""

    def __init__(self, cfg: LoaderConfig, source: ShardSource, rank: int, world: int, start: Start,
                 busy: torch.Tensor | None = None) -> None:
        super().__init__()
        self.cfg, self.source, self.rank, self.world, self.start = cfg, source, rank, world, start
        self.busy = busy

    def _ring(self, worker: int) -> SlotRing | None:
        in_worker = get_worker_info() is not None
        return SlotRing(self.busy, worker) if in_worker and self.busy is not None else None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        reader = ShardReader(self.source.open, lambda i: self.source.urls[i])
        if self.source.counts is None:
            return self._unsized(worker, workers, reader)
        return self._epochs(worker, workers, reader)

    def _name(self, shard: int) -> str:
        return self.source.urls[shard].rsplit("/", 1)[-1]

    def _epochs(self, worker: int, workers: int, reader: ShardReader) -> Iterator[dict[str, Any]]:
        cfg, ring, report = self.cfg, self._ring(worker), Report()
        epoch, history, step = self.start.epoch, self.start.history, self.start.step
        layout = cfg.layout(self.world, workers)
        life = 0  # batches of all workers so far: the DataLoader gives batch `life` to worker life % workers
        while True:
            key_epoch = cfg.order_epoch(epoch)
            plan = plan_epoch(self.source.counts, seed=cfg.seed, epoch=key_epoch, shuffle=cfg.train,
                              drop_last=cfg.drop_last, history=history, layout=layout, rank=self.rank)
            slot = (worker - life + step) % workers
            order = self._samples(plan, slot, step, workers, reader, report)
            for j in range(slot + workers * max(0, -(-(step - slot) // workers)), plan.batches, workers):
                picked = [next(order) for _ in range(plan.sizes[j])]
                clips = self._decode(picked, key_epoch, report)
                batch = collate(clips, cfg, ring)
                yield batch | report.drain() | {"epoch": epoch, "index": j,
                                                "target": plan.targets[j] * cfg.clips_per_batch_sample}
            life += plan.batches - step
            epoch, history, step = epoch + 1, (), 0

    def _samples(self, plan: EpochPlan, slot: int, step: int, workers: int, reader: ShardReader,
                 report: Report) -> Iterator[tuple[Position, dict[str, Any] | str]]:
        """The slot's samples from ``step`` on, in hand-out order, each read once (a block at a time)."""
        consumed = sum(plan.sizes[slot:step:workers])
        block = self.cfg.layout(self.world, workers).block
        for spans, order in slot_blocks(plan.slots[slot], block, f"{plan.key}-{slot}", consumed):
            got = reader.read(spans)
            report.items += reader.problems  # a shard that would not open or broke off, once
            reader.problems.clear()
            for pos in order:
                yield pos, got[pos]

    def _decode(self, picked: list[tuple[Position, dict[str, Any] | str]], epoch: int,
                report: Report) -> list[dict[str, Any]]:
        """Each sample decoded once into its clips; a missing or corrupt one is reported and left out."""
        clips, missing = [], {}
        for (shard, index), sample in picked:
            if isinstance(sample, str):  # listed by the manifest, not in the shard (or unreadable)
                missing.setdefault((shard, sample), []).append(index)
                continue
            rng = random.Random(f"vidshard-clips-{self.cfg.seed}-{epoch}-{shard}-{index}")
            clips += decode_sample(sample, self.cfg, rng, report, self.source.classes)
        for (shard, why), indices in missing.items():  # one line per shard and batch
            text = f"{len(indices)} of its samples ({', '.join(map(str, sorted(indices)))}) not read: {why}"
            log.warning("shard %s: %s", self._name(shard), text)
            report.missing.append((self._name(shard), len(indices), text))
        return clips

    def _unsized(self, worker: int, workers: int, reader: ShardReader) -> Iterator[dict[str, Any]]:
        """Without counts: whole shards round-robin, the block shuffle over the stream, one epoch."""
        cfg, ring, report = self.cfg, self._ring(worker), Report()
        epoch = cfg.order_epoch(self.start.epoch)
        shards = unsized_spans(len(self.source.urls), cfg.seed, epoch, self.rank * workers + worker,
                               self.world * workers, shuffle=cfg.train)
        block, per = cfg.layout(self.world, workers).block, cfg.layout(self.world, workers).per_batch
        pending: list[dict[str, Any]] = []
        buffer: list[tuple[Position, dict[str, Any] | str]] = []

        def flush_block(b: int) -> Iterator[dict[str, Any]]:
            random.Random(f"vidshard-stream-{cfg.seed}-{epoch}-{self.rank}-{worker}-{b}").shuffle(buffer)
            for picked in buffer:
                pending.extend(self._decode([picked], epoch, report))
                if len(pending) >= per * cfg.clips_per_batch_sample:
                    yield collate(pending, cfg, ring) | report.drain()
                    pending.clear()
            buffer.clear()

        blocks_done = 0
        for span in shards:
            samples = reader.read_all(span.shard)
            report.items += reader.problems
            reader.problems.clear()
            for index, sample in enumerate(samples):
                buffer.append(((span.shard, index), sample))
                if len(buffer) >= block:
                    yield from flush_block(blocks_done)
                    blocks_done += 1
        yield from flush_block(blocks_done)
        if pending or report.items or report.missing:
            yield (collate(pending, cfg, ring) if pending else {}) | report.drain()


def decode_sample(sample: dict[str, Any], cfg: LoaderConfig, rng: random.Random, report: Report,
                  classes: list[str] | None = None) -> list[dict[str, Any]]:
    """One sample's clips (frames not yet converted); a sample that fails is reported and gives none."""
    key = sample.get("__key__", "?")
    try:
        if "__error__" in sample:
            raise ValueError(sample["__error__"])
        ext = next((e for e in VIDEO_EXTS if e in sample), None)
        if ext is None:
            raise ValueError(f"no video member (one of {VIDEO_EXTS})")
        label = read_label(sample, None if classes is None else len(classes))
        extra = caption_fields(sample, cfg, rng)
        spec = cfg.clip_spec()
        clips = decode_views(sample[ext], lambda n, w, h: plan_sample(n, w, h, spec, rng), cfg.threads())
    except Exception as exn:  # any failure of one sample must not end the epoch
        report.skip(f"{key} in {sample.get('__url__', '?')}", f"{type(exn).__name__}: {exn}")
        return []
    report.decoded += 1
    return [{"views": views, "label": label, "key": key, **extra} for views in clips]


def caption_fields(sample: dict[str, Any], cfg: LoaderConfig, rng: random.Random) -> dict[str, Any]:
    """``cfg.text`` applied to the sample's captions (nothing without ``cfg.text``): a contrastive run
    tokenises one caption per sample here, in the worker. A sample without a caption raises."""
    if cfg.text is None:
        return {}
    meta = json.loads(sample["json"]) if "json" in sample else {}
    captions = sample_captions(meta) if isinstance(meta, dict) else []
    if not captions:
        raise ValueError("no caption (a contrastive run needs 'caption' or 'captions' in KEY.json: "
                         "preprocess a list with a caption column)")
    return cfg.text(captions, rng)


def collate(clips: list[dict[str, Any]], cfg: LoaderConfig, ring: SlotRing | None = None) -> dict[str, Any]:
    """Crop, resize and convert every clip's frames straight into the batch tensor (B may be 0)."""
    views = cfg.temporal_views * cfg.spatial_views
    clip = (3, cfg.frames, cfg.size, cfg.size)  # (C, T, H, W)
    shape = (len(clips), *clip) if cfg.train else (len(clips), views, *clip)  # (B, [V,] C, T, H, W)
    batch: dict[str, Any] = {}
    if ring is None or not clips:
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
            out[i], valid[i] = 0, False
    extra = {k: torch.stack([c[k] for c in clips]) for k in (clips[0] if clips else ())
             if k not in ("views", "label", "key")}  # e.g. a contrastive run's tokenised caption
    return batch | {"video": video, "label": torch.tensor([c["label"] for c in clips], dtype=torch.int64),
                    "key": [c["key"] for c in clips], "valid": valid} | extra
