"""`vidshard preprocess`: raw videos in, a resumable shard set out.

Workers (a process pool, one ffmpeg process per video) encode into the staging
folder; this process alone writes shards, the journal, the manifest and
``failures.jsonl`` (see ``store.py`` for why that makes a kill at any moment safe).
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table
from vidshard.shards.schema import failure_record

from .config import PreprocessConfig
from .encode import EncodeFailure, EncodeJob, EncodeOutcome, encode_video, read_staged, segment_of
from .from_shards import extracted_source
from .inputs import InputError, InputItem, list_inputs
from .plan import chunk_bounds, class_list, output_size, part_of, part_prefix
from .pool import EncodePool
from .probe import ProbeError, probe
from .report import RunFigures, VideoProgress, balance, balance_lines, summary_lines, summary_table
from .space import AFTER, OutputFailure, check_margin, output_errors
from .store import STATE_DIR, OutputStore


@dataclass(frozen=True, kw_only=True)
class PreprocessResult:
    """What one call of :func:`preprocess` did."""

    output: Path
    """The shard-set folder."""
    run: RunFigures
    """Figures of this invocation."""
    total: RunFigures
    """Figures of the whole shard set after it."""
    skipped: int = 0
    """Inputs left alone because an earlier run finished (or failed) them."""
    resumed: int = 0
    """Videos an interrupted run had encoded (staged): packed now, not encoded again."""
    stopped: int = 0
    """Videos whose ffmpeg was stopped by a signal (not recorded as failed; a re-run retries them)."""
    failures: list[dict] = field(default_factory=list)
    """``failures.jsonl`` records added by this run."""
    service: bool = False
    """A ``--watch`` run, stopped by a signal as a service is (exit code 0)."""
    hours_by: dict[str, Counter] = field(default_factory=dict)
    """Seconds of video in the whole set per ``class`` and per ``source`` (top folder or host)."""

    @property
    def encoded(self) -> int:
        """Videos encoded by this run."""
        return self.run.videos_ok - self.resumed

    def exit_code(self, strict: bool = False) -> int:
        """0 when the shard set holds at least one video (and, with ``strict``, nothing failed);
        1 also when some encode was stopped from outside, so a job script knows to run again.
        A ``--watch`` service that was told to stop exits 0."""
        if self.service:
            return 0
        if self.total.videos_ok == 0 or self.stopped:
            return 1
        return 1 if strict and self.total.videos_failed else 0


def select_inputs(cfg: PreprocessConfig) -> tuple[list[InputItem], list[str] | None]:
    """This run's inputs (one part of them with ``cfg.part``) and the class names of all
    inputs, so every part numbers classes the same way."""
    items = list_inputs(cfg.input, labels_from_dirs=cfg.labels_from_dirs, exclude=cfg.output)
    unique = list({it.vid: it for it in items}.values())
    names = [it.label_name for it in unique]
    if cfg.part is not None:
        i, n = cfg.part
        unique = [it for it in unique if part_of(it.vid, n) == i]
    return unique, names


def check_folders(cfg: PreprocessConfig) -> None:
    """Refuse an OUTPUT that is the INPUT folder (its own shards, manifest and journal would be read
    back as input videos) or that holds INPUT (deleting or sharing the shard-set folder would take
    the raw videos along). OUTPUT inside INPUT is fine: the input walk skips it."""
    if not cfg.input.is_dir():
        return
    inp, out = cfg.input.resolve(), cfg.output.resolve()
    if inp == out:
        raise InputError(f"OUTPUT {cfg.output} is the INPUT folder {cfg.input}: the shard set would be "
                         f"read back as input videos. Use a separate folder, e.g. {inp}-shards")
    if out in inp.parents:
        raise InputError(f"INPUT {cfg.input} is inside OUTPUT {cfg.output}: the shard-set folder is what "
                         f"you copy, share and delete, so it must not hold the raw videos. Use another "
                         f"OUTPUT, e.g. {inp}-shards")


def preprocess(cfg: PreprocessConfig, console: Console | None = None) -> PreprocessResult:
    """Preprocess ``cfg.input`` into the shard set ``cfg.output`` (resuming / adding to it)."""
    console = console or Console(stderr=True, quiet=False)
    if cfg.watch:
        from .watch import watch

        return watch(cfg, console)
    t0 = time.monotonic()
    check_folders(cfg)
    items, names = select_inputs(cfg)
    store = OutputStore(cfg.output, cfg.settings(), part_prefix(cfg.prefix, cfg.part), cfg.shard_size)
    if cfg.dry_run:
        store.load()  # reads only: a dry run changes nothing on disk
    else:
        with output_errors(cfg.output):
            cfg.output.mkdir(parents=True, exist_ok=True)
            store.recover()
    classes = class_list(names, store.classes)
    if cfg.retry_failed:
        todo = [it for it in items if not store.is_done(it.vid)]
    else:
        todo = [it for it in items if not store.is_done(it.vid) and not store.is_failed(it.vid)]
    skipped = len(items) - len(todo)
    if cfg.dry_run:
        _show_plan(cfg, todo, skipped, console)
        return _result(cfg, store, _Tally(), t0, skipped)
    shards_before, bytes_before = len(store.shards), sum(s.bytes for s in store.shards)
    labels = {name: i for i, name in enumerate(classes or [])}
    jobs = [EncodeJob(item=it, label=labels.get(it.label_name), staging=store.staging) for it in todo]
    with output_errors(cfg.output):
        check_margin(cfg.output, cfg.min_free_space)
        store.begin(classes)
        tally = _encode_all(cfg, store, jobs, console)
        store.finish()
    tally.shards = len(store.shards) - shards_before
    tally.bytes_out = sum(s.bytes for s in store.shards) - bytes_before
    result = _result(cfg, store, tally, t0, skipped)
    _show_summary(cfg, result, console)
    return result


def _encode_all(cfg: PreprocessConfig, store: OutputStore, jobs: list[EncodeJob],
                console: Console) -> _Tally:
    """Encode the jobs on the pool and pack each video into the shards as soon as it is done."""
    tally = _Tally()
    ready = [j for j in jobs if store.staged(j.item.vid)]  # encoded before a kill: pack, never re-encode
    todo = [j for j in jobs if not store.staged(j.item.vid)]
    pool = EncodePool(cfg) if todo else None  # started before the progress thread (see pool.py)
    try:
        with VideoProgress(console, len(jobs), enabled=not cfg.quiet) as bar:
            for job in ready:
                _handle(encode_video(job, cfg), store, tally, bar, cfg, console)
                tally.resumed += 1
            for out in pool.results(todo) if pool else ():
                _handle(out, store, tally, bar, cfg, console)
                check_margin(cfg.output, cfg.min_free_space)  # stop before the disk is full
    except BaseException:
        store.abort()  # the open shard is dropped; its videos stay staged for the next run
        if pool is not None:
            pool.close(cancel=True)
        raise
    if pool is not None:
        pool.close()
    return tally


@dataclass
class _Tally:
    """Running figures of this invocation."""

    ok: int = 0
    resumed: int = 0
    stopped: int = 0
    seconds: float = 0.0
    samples: int = 0
    bytes_in: int = 0
    shards: int = 0
    bytes_out: int = 0
    failures: list[dict] = field(default_factory=list)


def _handle(out: EncodeOutcome, store: OutputStore, tally: _Tally,
            bar: VideoProgress, cfg: PreprocessConfig, console: Console) -> None:
    item = out.item
    if out.output_trouble:  # not the file's fault: record nothing, stop, a re-run encodes it
        raise OutputFailure(f"stopped while encoding {item.display}: {out.output_trouble}. {AFTER}")
    if out.stopped:  # not the file's fault: no failure record, the next run tries it again
        tally.stopped += 1
        console.print(f"stopped: {item.display}: {out.reason}; run again to finish it", markup=False,
                      highlight=False, soft_wrap=True)
    elif out.staged is None:
        segment = {} if item.start_s is None and item.end_s is None else {"start": item.start_s,
                                                                          "end": item.end_s}
        rec = failure_record(item.rel, out.reason or "unknown error", video_id=item.vid, **segment)
        store.add_failure(rec)
        tally.failures.append(rec)
        if cfg.quiet:
            console.print(f"failed: {item.display}: {out.reason}", markup=False, highlight=False,
                          soft_wrap=True)
    else:
        store.forget_failure(item.vid)
        meta = read_staged(out.staged)
        tally.samples += store.pack(out.staged)
        tally.ok += 1
        tally.seconds += meta["seconds"]
        tally.bytes_in += meta["bytes_in"]
    bar.advance(out.seconds)


def _result(cfg: PreprocessConfig, store: OutputStore, t: _Tally, t0: float,
            skipped: int) -> PreprocessResult:
    figures = RunFigures(videos_ok=t.ok, videos_failed=len(t.failures), seconds_in=t.seconds,
                         samples=t.samples, shards=t.shards, bytes_in=t.bytes_in, bytes_out=t.bytes_out,
                         wall_s=time.monotonic() - t0)
    total = RunFigures(
        videos_ok=len(store.videos), videos_failed=len(store.failures),
        seconds_in=sum(v["seconds"] for v in store.videos.values()),
        samples=sum(s.samples for s in store.shards),
        shards=len(store.shards), bytes_in=sum(v["bytes_in"] for v in store.videos.values()),
        bytes_out=sum(s.bytes for s in store.shards))
    return PreprocessResult(output=cfg.output, run=figures, total=total, skipped=skipped, resumed=t.resumed,
                            stopped=t.stopped, failures=t.failures, hours_by=balance(store.videos.values()))


def _show_summary(cfg: PreprocessConfig, result: PreprocessResult, console: Console) -> None:
    if cfg.quiet:
        for line in summary_lines(result.run, result.total) + balance_lines(result.hours_by):
            console.print(line, markup=False, highlight=False, soft_wrap=True)
        return
    title = f"vidshard preprocess -> {cfg.output}"
    if result.skipped:
        title += f" ({result.skipped} inputs done or failed before: skipped)"
    if result.resumed:
        title += f" ({result.resumed} videos encoded by an interrupted run: packed, not re-encoded)"
    console.print(summary_table(result.run, result.total, title))
    for line in balance_lines(result.hours_by):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    if result.failures:
        where = cfg.output / "failures.jsonl"
        console.print(f"[yellow]{len(result.failures)} input(s) failed; reasons in {where}")


def _show_plan(cfg: PreprocessConfig, todo: list[InputItem], skipped: int, console: Console) -> None:
    """``--dry-run``: probe each input and show its chunks and output size; encode nothing."""
    table = Table(title=f"plan: {len(todo)} inputs to encode, {skipped} already done/failed (dry run)",
                  title_justify="left")
    for col in ("input", "label", "seconds", "chunks", "output size", "note"):
        table.add_column(col)
    for it in todo:
        try:
            if it.invalid:
                raise EncodeFailure(it.invalid)
            with tempfile.TemporaryDirectory() as tmp, extracted_source(it, Path(tmp)) as path:
                info = probe(path)  # a shard-set input's video is copied out first
            start, duration = segment_of(it, info)
            chunks = len(chunk_bounds(duration, cfg.chunk_seconds, cfg.min_chunk_seconds))
            w, h = output_size(info.width, info.height, info.sar, info.rotation, cfg.short_side)
            table.add_row(it.display, it.label_name or "", f"{duration:.2f}", str(chunks), f"{w}x{h}",
                          f"{info.codec} {info.width}x{info.height} {info.fps:.3g} fps")
        except (ProbeError, EncodeFailure, ValueError, OSError) as e:
            table.add_row(it.display, it.label_name or "", "", "", "", f"[red]will fail: {e}")
    console.print(table)
    console.print(f"staging and journal would live in {cfg.output / STATE_DIR}")
