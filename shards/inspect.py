"""Look into a shard set: a summary of what it holds and a contact sheet of a few clips.

The summary reads every sample's ``KEY.json`` (a local shard is read by seeking
from header to header, so the videos are skipped; a URL is streamed once). The
contact sheet decodes a few frames of a few samples, spread evenly over the set.

A sample with a member that is not a regular file, is over its size cap or has
metadata of the wrong shape is skipped and counted by reason; a manifest entry
outside the shard-name rule, or a shard linking out of the set, is an unreadable
shard that is never opened.
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
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

from .cache import FetchError
from .localset import open_set_file
from .remote import read_file
from .schema import (
    FAILURES,
    META_EXT,
    VIDEO_EXT,
    Manifest,
    MemberError,
    Rejected,
    SampleMeta,
    check_tar_member,
    sample_captions,
)
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
    skipped: Counter = field(default_factory=Counter)
    """Samples skipped, per reason (``bad metadata``, ``not a regular file``, ``oversize member``, ...)."""
    class_seconds: Counter = field(default_factory=Counter)
    """Seconds of clips per ``label_name`` (``None``: unlabeled), the data balance of the set."""
    source_seconds: Counter = field(default_factory=Counter)
    """Seconds of clips per source (:func:`source_of` the sample's ``video``)."""

    @property
    def bad_metadata(self) -> int:
        """Samples skipped for their ``KEY.json``."""
        return self.skipped["bad metadata"]

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
        self.class_seconds[meta.label_name] += duration
        self.source_seconds[source_of(meta.video)] += duration
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


def source_of(video: str) -> str:
    """Where a sample's video came from, for the balance of a growing set: the host of a URL, else the
    top folder of its path under the input root (a camera, a site, a batch); ``.`` for a file at the root."""
    scheme, sep, rest = video.partition("://")
    if sep and scheme.isalpha():
        return rest.split("/", 1)[0] or video
    head, slash, _ = video.lstrip("/").partition("/")
    return head if slash else "."


def sheet_picks(counts: list[int], n: int) -> set[int]:
    """Global indices of ``n`` samples spread evenly over a set whose shards hold ``counts``."""
    total = sum(counts)
    return {int(i * total / n) for i in range(n)} if total else set()


def _iter_samples(base: str, name: str, want_video: Callable[[int], bool]
                  ) -> Iterator[tuple[str, dict[str, bytes], MemberError | None]]:
    """Yield ``(key, {ext: bytes}, problem)`` per sample of one shard, in order: the metadata (and
    the wanted videos), or the first problem of its members (checked from the headers)."""
    if is_url(base):
        f, mode = open_shard(base, name), "r|"
    else:
        f, mode = open_set_file(base, name), "r:"  # "r:" seeks past the videos
    with f, tarfile.open(fileobj=f, mode=mode) as tf:
        index, last, members, problem = -1, None, {}, None
        for m in tf:
            try:
                key, ext = check_tar_member(m)
            except MemberError as e:
                key, ext, bad = m.name.rpartition("/")[2].partition(".")[0], "", e
            else:
                bad = None
            if key != last:
                if last is not None:
                    yield last, members, problem
                index, last, members, problem = index + 1, key, {}, None
            problem = problem or bad
            if bad is None and (ext == META_EXT or (ext == VIDEO_EXT and want_video(index))):
                members[ext] = tf.extractfile(m).read()
        if last is not None:
            yield last, members, problem


def summarize(cfg: InspectConfig) -> tuple[Summary, list[tuple[SampleMeta, bytes]]]:
    """Read every sample's metadata; also return the (metadata, mp4) of the sheet's samples."""
    rejects: list[Rejected] = []
    manifest, base = open_manifest(cfg.location, rejects)
    summary = Summary(location=str(cfg.location), manifest=manifest, failures=_count_failures(base))
    summary.unreadable += [f"{r.name} (refused: {r.reason})" for r in rejects]
    picks = sheet_picks([s.samples for s in manifest.shards], cfg.samples) if cfg.sheet else set()
    chosen: list[tuple[SampleMeta, bytes]] = []
    offset = 0
    with Progress(disable=not cfg.progress, transient=True) as bar:
        for info in bar.track(manifest.shards, description=f"inspect {cfg.location}"):
            try:
                for _, members, problem in _iter_samples(base, info.name, lambda i, o=offset: o + i in picks):
                    meta = _meta(members, summary) if problem is None else None
                    if problem is not None:
                        summary.skipped[problem.reason] += 1
                    elif meta is not None:
                        summary.add(meta)
                        if VIDEO_EXT in members:
                            chosen.append((meta, members[VIDEO_EXT]))
            except (OSError, ValueError, tarfile.TarError, EOFError) as e:  # missing, broken, refused
                summary.unreadable.append(f"{info.name} ({type(e).__name__})")
            offset += info.samples
    return summary, chosen


def sample_metadata(location: str) -> Iterator[tuple[str, dict]]:
    """``(key, parsed KEY.json)`` of every sample of a shard set, in order, without reading videos
    (``vidshard eval --retrieval`` takes the captions from here). A sample whose ``KEY.json`` is
    missing, oversize, not a regular member or does not parse to an object gives an empty dict; an
    unreadable shard raises ``OSError`` naming it."""
    manifest, base = open_manifest(location)
    for info in manifest.shards:
        try:
            for key, members, problem in _iter_samples(base, info.name, lambda i: False):
                meta: object = {}
                if problem is None and META_EXT in members:
                    try:
                        meta = json.loads(members[META_EXT])
                    except ValueError:
                        meta = {}
                yield key, meta if isinstance(meta, dict) else {}
        except (tarfile.TarError, EOFError) as e:
            raise OSError(f"{info.name}: unreadable shard ({e}); run vidshard verify") from None


def _meta(members: dict[str, bytes], summary: Summary) -> SampleMeta | None:
    """The sample's metadata, or ``None`` (counted in ``summary.skipped``) when it has none or bad."""
    if META_EXT not in members:
        summary.skipped["no metadata"] += 1
        return None
    try:
        return SampleMeta.from_json(members[META_EXT])
    except MemberError as e:
        summary.skipped[e.reason] += 1
        return None


def _count_failures(base: str) -> int | None:
    try:
        data = read_file(base, FAILURES)
    except FileNotFoundError:
        return 0
    except (FetchError, OSError, ValueError):
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
    overview = Table(title=escape(s.location), show_header=False, title_justify="left")
    d, size = s.durations, sum(i.bytes for i in m.shards)
    rows = [("samples", f"{s.samples} (manifest: {m.num_samples})"), ("videos", str(len(s.videos))),
            ("hours", _hours(s.seconds)), ("shards", f"{len(m.shards)}, {size / 1e6:,.1f} MB"),
            ("clip seconds", f"min {min(d):.2f} / median {statistics.median(d):.2f} / max {max(d):.2f}"
             if d else "-"),
            ("failed inputs", "?" if s.failures is None else str(s.failures))]
    if s.unreadable:
        rows.append(("unreadable shards",
                     f"{len(s.unreadable)}: {', '.join(s.unreadable[:3])}; run vidshard verify"))
    if s.skipped:
        why = ", ".join(f"{reason}: {n}" for reason, n in s.skipped.most_common())
        rows.append(("skipped samples", f"{sum(s.skipped.values())} ({why}); run vidshard verify"))
    if s.captioned:
        examples = "; ".join(f"\"{c}\"" for c in s.caption_examples)
        rows.append(("captions", f"{s.captioned} of {s.samples} samples captioned, {s.captions} captions "
                                 f"(e.g. {examples})"))
    rows.append(("settings", ", ".join(f"{k}={v}" for k, v in m.settings.items())))
    for k, v in rows:
        overview.add_row(k, escape(v))  # names and settings come from the set: text, not markup
    tables = [overview]
    if any(name is not None for name in s.classes):
        classes = Table("id", "class", "samples", "hours", title="classes", title_justify="left")
        names = m.classes or sorted(n for n in s.classes if n is not None)
        for i, name in enumerate(names):
            classes.add_row(str(i), escape(name), str(s.classes.get(name, 0)),
                            f"{s.class_seconds.get(name, 0.0) / 3600:.3f}")
        if s.classes.get(None):
            classes.add_row("-", "(unlabeled)", str(s.classes[None]), f"{s.class_seconds[None] / 3600:.3f}")
        tables.append(classes)
    tables.append(hours_table("sources (top folder or host)", s.source_seconds))
    spreads = (("resolutions", "WxH", s.resolutions), ("frame rates", "fps", s.frame_rates))
    for title, head, counter in spreads:
        t = Table(head, "samples", title=title, title_justify="left")
        for value, n in counter.most_common():
            t.add_row(escape(str(value)), str(n))
        tables.append(t)
    return tables


def hours_table(title: str, seconds: Counter, top: int = 20) -> Table:
    """Hours per name, most first; beyond ``top`` names, one row for the rest."""
    t = Table("name", "hours", "share", title=title, title_justify="left")
    total = sum(seconds.values()) or 1.0
    ranked = seconds.most_common()
    rest = sum(v for _, v in ranked[top:])
    for name, v in ranked[:top]:
        t.add_row(escape(str(name)), f"{v / 3600:.3f}", f"{v / total:.0%}")
    if rest:
        t.add_row(f"({len(ranked) - top} more)", f"{rest / 3600:.3f}", f"{rest / total:.0%}")
    return t
