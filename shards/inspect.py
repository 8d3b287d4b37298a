"""Look into a shard set: a summary of what it holds and a contact sheet of a few clips.

The summary reads every sample's ``KEY.json`` (a local shard is read by seeking
from header to header, so the videos are skipped; a URL is streamed once). The
contact sheet decodes a few frames of a few samples, spread evenly over the set.
"""

from __future__ import annotations

import io
import json
import statistics
import tarfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.progress import Progress
from rich.table import Table

from .cache import FetchError, fetch_bytes
from .schema import FAILURES, META_EXT, VIDEO_EXT, Manifest, SampleMeta, sample_captions
from .sheet import save_sheet
from .verify import is_url, open_manifest, open_shard


@dataclass(frozen=True, kw_only=True)
class InspectConfig:
    """What to look at."""

    location: str
    """Shard-set folder, its ``manifest.json``, or an ``http(s)://`` URL serving it."""
    sheet: Path | None = None
    """Write a contact sheet (PNG) of a few samples' frames here."""
    samples: int = 6
    """Rows of the contact sheet: samples spread evenly over the set."""
    frames: int = 8
    """Frames per row, spread evenly over each clip."""
    progress: bool = True
    """Show a progress bar over the shards."""

    def __post_init__(self) -> None:
        if self.samples < 1 or self.frames < 1:
            raise ValueError(f"samples and frames must be >= 1, got {self.samples}, {self.frames}")
        if self.sheet is not None and Path(self.sheet).suffix.lower() not in (".png", ".jpg", ".jpeg"):
            raise ValueError(f"--sheet {self.sheet}: give a .png (or .jpg) file name")


@dataclass(kw_only=True)
class Summary:
    """What a shard set holds, from its samples' metadata."""

    location: str
    manifest: Manifest
    samples: int = 0
    videos: set[str] = field(default_factory=set)
    """Distinct ``video_id`` values."""
    seconds: float = 0.0
    """Summed clip durations."""
    classes: Counter = field(default_factory=Counter)
    """Samples per ``label_name`` (``None`` for unlabeled samples)."""
    resolutions: Counter = field(default_factory=Counter)
    """Samples per ``WxH``."""
    frame_rates: Counter = field(default_factory=Counter)
    """Samples per frame rate (rounded to 0.01)."""
    durations: list[float] = field(default_factory=list)
    """Clip durations in seconds, one per sample."""
    failures: int | None = None
    """Lines of ``failures.jsonl`` (``None`` when it could not be read)."""
    unreadable: list[str] = field(default_factory=list)
    """Shards that could not be read (missing or broken; ``vidshard verify`` says more)."""
    bad_metadata: int = 0
    """``KEY.json`` members that do not parse."""
    captioned: int = 0
    """Samples with at least one caption (``caption`` / ``captions``)."""
    captions: int = 0
    """Distinct captions summed over the samples."""
    caption_examples: list[str] = field(default_factory=list)
    """The first few distinct captions, to show."""

    def add(self, meta: SampleMeta) -> None:
        duration = meta.end_s - meta.start_s
        self.samples += 1
        self.videos.add(meta.video_id)
        self.seconds += duration
        self.classes[meta.label_name] += 1
        self.resolutions[f"{meta.width}x{meta.height}"] += 1
        self.frame_rates[round(meta.fps, 2)] += 1
        self.durations.append(duration)
        texts = meta_captions(meta)
        self.captioned += bool(texts)
        self.captions += len(texts)
        new = [t for t in texts if t not in self.caption_examples]
        self.caption_examples += new[: max(0, 3 - len(self.caption_examples))]


def meta_captions(meta: SampleMeta) -> list[str]:
    """A sample's distinct captions (malformed caption fields count as none)."""
    try:
        return sample_captions(meta.to_dict())
    except ValueError:
        return []


def sheet_picks(counts: list[int], n: int) -> set[int]:
    """Global indices of ``n`` samples spread evenly over a set whose shards hold ``counts``."""
    total = sum(counts)
    return {int(i * total / n) for i in range(n)} if total else set()


def _iter_members(base: str, name: str,
                  want_video: Callable[[int], bool]) -> Iterator[tuple[str, str, bytes]]:
    """Yield ``(key, ext, bytes)`` for the metadata (and wanted videos) of one shard, in order."""
    if is_url(base):
        f, mode = open_shard(base, name), "r|"
    else:
        f, mode = open(Path(base) / name, "rb"), "r:"  # noqa: SIM115 (closed below); "r:" seeks past videos
    with f, tarfile.open(fileobj=f, mode=mode) as tf:
        index, last = -1, None
        for m in tf:
            key, _, ext = Path(m.name).name.partition(".")
            if key != last:
                index, last = index + 1, key
            if ext == META_EXT or (ext == VIDEO_EXT and want_video(index)):
                yield key, ext, tf.extractfile(m).read()


def summarize(cfg: InspectConfig) -> tuple[Summary, list[tuple[SampleMeta, bytes]]]:
    """Read every sample's metadata; also return the (metadata, mp4) of the sheet's samples."""
    manifest, base = open_manifest(cfg.location)
    summary = Summary(location=str(cfg.location), manifest=manifest, failures=_count_failures(base))
    picks = sheet_picks([s.samples for s in manifest.shards], cfg.samples) if cfg.sheet else set()
    chosen: list[tuple[SampleMeta, bytes]] = []
    offset = 0
    with Progress(disable=not cfg.progress, transient=True) as bar:
        for info in bar.track(manifest.shards, description=f"inspect {cfg.location}"):
            videos: dict[str, bytes] = {}
            metas: dict[str, SampleMeta] = {}
            try:
                for key, ext, data in _iter_members(base, info.name, lambda i, o=offset: o + i in picks):
                    if ext == VIDEO_EXT:
                        videos[key] = data
                    elif (meta := _meta(data)) is None:
                        summary.bad_metadata += 1
                    else:
                        metas[key] = meta
                        summary.add(meta)
            except (OSError, tarfile.TarError, EOFError) as e:  # a missing or broken shard: count it, go on
                summary.unreadable.append(f"{info.name} ({type(e).__name__})")
            chosen += [(metas[k], mp4) for k, mp4 in videos.items() if k in metas]
            offset += info.samples
    return summary, chosen


def sample_metadata(location: str) -> Iterator[tuple[str, dict]]:
    """``(key, parsed KEY.json)`` of every sample of a shard set, in order, without reading videos
    (``vidshard eval --retrieval`` takes the captions from here). A ``KEY.json`` that does not parse
    gives an empty dict; an unreadable shard raises ``OSError`` naming it."""
    manifest, base = open_manifest(location)
    for info in manifest.shards:
        try:
            for key, _, data in _iter_members(base, info.name, lambda i: False):
                try:
                    meta = json.loads(data)
                except ValueError:
                    meta = {}
                yield key, meta if isinstance(meta, dict) else {}
        except (tarfile.TarError, EOFError) as e:
            raise OSError(f"{info.name}: unreadable shard ({e}); run vidshard verify") from None


def _meta(data: bytes) -> SampleMeta | None:
    try:
        return SampleMeta.from_dict(json.loads(data))
    except (ValueError, TypeError, KeyError):
        return None


def _count_failures(base: str) -> int | None:
    try:
        data = fetch_bytes(base + FAILURES) if is_url(base) else (Path(base) / FAILURES).read_bytes()
    except FileNotFoundError:
        return 0
    except (FetchError, OSError):
        return None
    return sum(1 for line in data.splitlines() if line.strip())


def clip_frames(mp4: bytes, n: int) -> list[np.ndarray]:
    """``n`` frames ``(H, W, 3)`` uint8 spread evenly over the clip in ``mp4``."""
    import av

    with av.open(io.BytesIO(mp4)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    if not frames:
        raise ValueError("clip has no frames")
    return [frames[int(i * len(frames) / n)] for i in range(min(n, len(frames)))]


def write_sheet(chosen: list[tuple[SampleMeta, bytes]], path: Path, frames: int) -> Path:
    """One row per chosen sample: its class, source and time span above ``frames`` frames."""
    rows, titles = [], []
    for meta, mp4 in chosen:
        try:
            rows.append(clip_frames(mp4, frames))
        except Exception as e:  # a broken clip gets a note on the sheet, not a crash
            titles.append(f"{meta.key}: does not decode ({e})")
            rows.append([np.zeros((meta.height or 64, meta.width or 64, 3), np.uint8)])
            continue
        label = f"[{meta.label_name}] " if meta.label_name else ""
        title = (f"{label}{meta.video} #{meta.chunk}  {meta.start_s:.1f}-{meta.end_s:.1f}s  "
                 f"{meta.width}x{meta.height} {meta.fps:g}fps")
        texts = meta_captions(meta)
        if texts:  # the captions on a second line, shortened to fit
            joined = " | ".join(texts)
            title += "\n" + (joined if len(joined) <= 120 else joined[:117] + "...")
        titles.append(title)
    return save_sheet(rows, path, row_titles=titles)


def inspect(cfg: InspectConfig) -> Summary:
    """Summarise ``cfg.location`` and, when asked, write the contact sheet."""
    summary, chosen = summarize(cfg)
    if cfg.sheet is not None:
        if not chosen:
            raise ValueError(f"{cfg.location}: no samples to draw")
        write_sheet(chosen, Path(cfg.sheet), cfg.frames)
    return summary


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h ({seconds:.0f} s)"


def summary_tables(s: Summary) -> list[Table]:
    """Rich tables: an overview, the classes with counts, resolutions and frame rates."""
    m = s.manifest
    overview = Table(title=f"{s.location}", show_header=False, title_justify="left")
    d, size = s.durations, sum(i.bytes for i in m.shards)
    rows = [("samples", f"{s.samples} (manifest: {m.num_samples})"), ("videos", str(len(s.videos))),
            ("hours", _hours(s.seconds)), ("shards", f"{len(m.shards)}, {size / 1e6:,.1f} MB"),
            ("clip seconds", f"min {min(d):.2f} / median {statistics.median(d):.2f} / max {max(d):.2f}"
             if d else "-"),
            ("failed inputs", "?" if s.failures is None else str(s.failures))]
    if s.unreadable:
        rows.append(("unreadable shards",
                     f"{len(s.unreadable)}: {', '.join(s.unreadable[:3])}; run vidshard verify"))
    if s.bad_metadata:
        rows.append(("bad metadata", f"{s.bad_metadata} samples"))
    if s.captioned:
        examples = "; ".join(f"\"{c}\"" for c in s.caption_examples)
        rows.append(("captions", f"{s.captioned} of {s.samples} samples captioned, {s.captions} captions "
                                 f"(e.g. {examples})"))
    rows.append(("settings", ", ".join(f"{k}={v}" for k, v in m.settings.items())))
    for k, v in rows:
        overview.add_row(k, v)
    tables = [overview]
    if any(name is not None for name in s.classes):
        classes = Table("id", "class", "samples", title="classes", title_justify="left")
        names = m.classes or sorted(n for n in s.classes if n is not None)
        for i, name in enumerate(names):
            classes.add_row(str(i), name, str(s.classes.get(name, 0)))
        if s.classes.get(None):
            classes.add_row("-", "(unlabeled)", str(s.classes[None]))
        tables.append(classes)
    spreads = (("resolutions", "WxH", s.resolutions), ("frame rates", "fps", s.frame_rates))
    for title, head, counter in spreads:
        t = Table(head, "samples", title=title, title_justify="left")
        for value, n in counter.most_common():
            t.add_row(str(value), str(n))
        tables.append(t)
    return tables
