"""What a person sees: a live progress bar (videos and seconds of video) and the summary table."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from vidshard.shards.inspect import source_of


@dataclass(frozen=True, kw_only=True)
class RunFigures:
    """Counts of one invocation (``run``) or of the whole shard set (``total``)."""

    videos_ok: int
    """Inputs that produced samples."""
    videos_failed: int
    """Inputs listed in failures.jsonl."""
    seconds_in: float
    """Seconds of source video turned into samples."""
    samples: int
    """Samples written."""
    shards: int
    """Shards written."""
    bytes_in: int
    """Bytes of the source files used."""
    bytes_out: int
    """Bytes of the shards written."""
    wall_s: float = 0.0
    """Wall-clock seconds (0 for the shard-set totals)."""

    @property
    def ratio(self) -> float:
        return self.bytes_out / self.bytes_in if self.bytes_in else 0.0

    @property
    def realtime(self) -> float:
        return self.seconds_in / self.wall_s if self.wall_s else 0.0


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


class VideoProgress:
    """Two counters: videos done (of the total) and seconds of video encoded."""

    def __init__(self, console: Console, total_videos: int, enabled: bool) -> None:
        self.enabled = enabled
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[video_s]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=console, transient=False, disable=not enabled)
        self.task = self.progress.add_task("videos", total=total_videos, video_s="0 s of video")
        self.seconds = 0.0

    def __enter__(self) -> VideoProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def advance(self, seconds: float) -> None:
        self.seconds += seconds
        self.progress.update(self.task, advance=1, video_s=f"{_hms(self.seconds)} of video")


def _hms(s: float) -> str:
    h, rest = divmod(int(s), 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def balance(videos: Iterable[dict]) -> dict[str, Counter]:
    """Seconds of video per class (``None``: unlabeled) and per source (``shards.inspect.source_of``:
    top folder or host) of the journal's ``videos`` entries: the data balance of a (growing) set."""
    by_class: Counter = Counter()
    by_source: Counter = Counter()
    for v in videos:
        by_class[v.get("label_name")] += v["seconds"]
        by_source[source_of(v["video"])] += v["seconds"]
    return {"class": by_class, "source": by_source}


def balance_lines(hours_by: dict[str, Counter], top: int = 10) -> list[str]:
    """``hours by class: a 1.200, b 0.300`` (most first; the classes only when labeled)."""
    lines = []
    for what, seconds in hours_by.items():
        if what == "class" and set(seconds) <= {None}:
            continue
        ranked = seconds.most_common()
        parts = [f"{'(unlabeled)' if k is None else k} {v / 3600:.3f}" for k, v in ranked[:top]]
        more = f", {len(ranked) - top} more" if len(ranked) > top else ""
        lines.append(f"hours by {what}: {', '.join(parts)}{more}")
    return lines


def summary_table(run: RunFigures, total: RunFigures, title: str) -> Table:
    """The end-of-run table: this run next to the whole shard set."""
    table = Table(title=title, title_justify="left")
    table.add_column("")
    table.add_column("this run", justify="right")
    table.add_column("shard set", justify="right")
    rows = [
        ("videos ok", f"{run.videos_ok}", f"{total.videos_ok}"),
        ("videos failed", f"{run.videos_failed}", f"{total.videos_failed}"),
        ("hours of video in", f"{run.seconds_in / 3600:.3f}", f"{total.seconds_in / 3600:.3f}"),
        ("samples", f"{run.samples}", f"{total.samples}"),
        ("shards", f"{run.shards}", f"{total.shards}"),
        ("bytes in", human_bytes(run.bytes_in), human_bytes(total.bytes_in)),
        ("bytes out", human_bytes(run.bytes_out), human_bytes(total.bytes_out)),
        ("size ratio (out / in)", f"{run.ratio:.3f}", f"{total.ratio:.3f}"),
        ("speed (x real time)", f"{run.realtime:.1f}" if run.wall_s else "-", "-"),
    ]
    for row in rows:
        table.add_row(*row)
    return table


def summary_lines(run: RunFigures, total: RunFigures) -> list[str]:
    """The same figures as plain log lines (``--quiet``)."""
    return [
        f"this run: {run.videos_ok} videos ok, {run.videos_failed} failed, {run.seconds_in / 3600:.3f} h in, "
        f"{run.samples} samples, {run.shards} shards, {human_bytes(run.bytes_in)} in, "
        f"{human_bytes(run.bytes_out)} out (ratio {run.ratio:.3f}), "
        f"{run.realtime:.1f}x real time in {run.wall_s:.1f} s",
        f"shard set: {total.videos_ok} videos ok, {total.videos_failed} failed, {total.samples} samples in "
        f"{total.shards} shards, {human_bytes(total.bytes_out)}",
    ]
