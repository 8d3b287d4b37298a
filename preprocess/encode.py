"""Encode one input (a worker's job): probe, plan, one ffmpeg run for all chunks, verify.

The worker writes into the staging folder only: chunks go to
``STAGING/<video_id>.<pid>.tmp/`` and, once every chunk is verified and
``meta.json`` is written, the folder is renamed to ``STAGING/<video_id>/`` in
one step. A complete staging folder is never encoded again; the parent packs
it into shards. :func:`encode_video` never raises: failures come back as a
reason a person understands.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
from vidshard.shards.schema import SampleMeta

from .config import PreprocessConfig
from .ffmpeg import FFmpegError, TranscodeSpec, transcode
from .inputs import InputItem
from .plan import chunk_bounds, split_points
from .probe import ProbeError, ProbeInfo, open_local, probe

META = "meta.json"
# Shortfall that counts as a stream failing half-way (with ffmpeg reporting errors).
_SHORT_ABS_S, _SHORT_REL = 0.5, 0.05


@dataclass(frozen=True, kw_only=True)
class EncodeJob:
    """Everything a worker needs for one input."""

    item: InputItem
    """The input."""
    label: int | None
    """Class id of ``item.label_name`` in the manifest's classes."""
    staging: Path
    """The staging root folder."""


@dataclass(frozen=True, kw_only=True)
class EncodeOutcome:
    """What came back from a worker."""

    item: InputItem
    """The input."""
    staged: Path | None = None
    """The complete staging folder, on success."""
    reason: str | None = None
    """Why the input could not be used, on failure."""
    seconds: float = 0.0
    """Seconds of source video covered (for progress)."""
    stopped: bool = False
    """ffmpeg was stopped from outside: not the file's fault, so not a failure; a re-run retries it."""


class EncodeFailure(Exception):
    """One input cannot be used; ``str(e)`` is the reason for ``failures.jsonl``."""


class Stopped(Exception):
    """The encode was stopped from outside (a signal); the input itself may be fine."""


def encode_video(job: EncodeJob, cfg: PreprocessConfig) -> EncodeOutcome:
    """Encode one input into its staging folder. Never raises."""
    done = job.staging / job.item.vid
    if (done / META).is_file():
        return EncodeOutcome(item=job.item, staged=done, seconds=read_staged(done)["seconds"])
    tmp = job.staging / f"{job.item.vid}.{os.getpid()}.tmp"
    try:
        meta = _encode_into(job, cfg, tmp)
    except (EncodeFailure, ProbeError) as e:
        return EncodeOutcome(item=job.item, reason=str(e))
    except Stopped as e:
        return EncodeOutcome(item=job.item, reason=str(e), stopped=True)
    except Exception as e:  # a bug or an unforeseen input must not stop the run
        return EncodeOutcome(item=job.item, reason=f"unexpected error ({type(e).__name__}: {e})")
    finally:
        if tmp.exists() and not (tmp / META).exists():
            shutil.rmtree(tmp, ignore_errors=True)
    try:
        os.rename(tmp, done)
    except OSError:  # another (orphaned) worker finished it first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return EncodeOutcome(item=job.item, staged=done, seconds=meta["seconds"])


def segment_of(item: InputItem, info: ProbeInfo) -> tuple[float, float]:
    """``(start, duration)`` of the part of the source to use, clipped to the video."""
    start = item.start_s or 0.0
    end = info.duration_s if item.end_s is None else min(item.end_s, info.duration_s)
    if start >= info.duration_s:
        raise EncodeFailure(f"the segment starts at {start:g} s, after the end of the video "
                            f"({info.duration_s:.2f} s)")
    return start, end - start


def transcode_spec(cfg: PreprocessConfig, item: InputItem, start: float, duration: float,
                   bounds: list[tuple[float, float]]) -> TranscodeSpec:
    """The ffmpeg run for one input under ``cfg``."""
    segment = item.start_s is not None or item.end_s is not None
    # One process per core already keeps every core busy; ffmpeg's default of ~1.5 threads per core
    # in every process would put cores^2 threads on a many-core machine.
    threads = max(1, (os.cpu_count() or 1) // cfg.num_workers)
    return TranscodeSpec(threads=threads, short_side=cfg.short_side, crf=cfg.crf, gop=cfg.gop,
                         preset=cfg.preset, fps=cfg.fps,
                         keep_audio=cfg.keep_audio, start_s=start if segment else None,
                         duration_s=duration if segment else None,
                         split_s=split_points(bounds, None if segment else cfg.chunk_seconds))


def _encode_into(job: EncodeJob, cfg: PreprocessConfig, tmp: Path) -> dict[str, Any]:
    item = job.item
    info = probe(item.path)
    start, duration = segment_of(item, info)
    bounds = chunk_bounds(duration, cfg.chunk_seconds, cfg.min_chunk_seconds)
    spec = transcode_spec(cfg, item, start, duration, bounds)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        files, errors = transcode(item.path, tmp, spec, timeout=120 + 20 * duration)
    except FFmpegError as e:
        if e.stopped:
            raise Stopped("ffmpeg was stopped by a signal") from None
        last = e.stderr_tail.strip().splitlines()[-1:] or [str(e).splitlines()[0]]
        raise EncodeFailure(f"ffmpeg could not decode the video: {last[0]}") from None
    chunks = [_chunk_facts(f, cfg.short_side) for f in files]
    covered = sum(c["duration"] for c in chunks)
    if not chunks or covered <= 0:
        raise EncodeFailure("no video frame could be decoded; the file is damaged")
    if covered < duration - max(_SHORT_ABS_S, _SHORT_REL * duration) and errors:
        raise EncodeFailure(f"decoding failed at {start + covered:.1f} s of {start + duration:.1f} s: "
                            f"the file is truncated or damaged ({errors.splitlines()[-1][:160]})")
    metas = _sample_metas(job, info, start, chunks)
    share = min(1.0, duration / info.duration_s) if info.duration_s else 1.0  # of a segmented file
    meta = {"vid": item.vid, "video": item.rel, "seconds": covered, "samples": [m.to_dict() for m in metas],
            "bytes_in": int(info.bytes * share),
            "source": {"codec": info.codec, "width": info.width, "height": info.height,
                       "fps": round(info.fps, 3)}}
    # No fsync needed: renaming the folder (in encode_video) is what publishes it.
    (tmp / META).write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
    return meta


def _chunk_facts(path: Path, short_side: int) -> dict[str, Any]:
    """Frames, duration, rate and size of one encoded chunk, checked."""
    try:
        with open_local(path) as c:
            s = c.streams.video[0]
            frames = s.frames or sum(1 for p in c.demux(s) if p.size)
            dur = float(s.duration * s.time_base) if s.duration else 0.0
            w, h = s.codec_context.width, s.codec_context.height
            rate = float(s.average_rate) if s.average_rate else (frames / dur if dur else 0.0)
    except (av.error.FFmpegError, IndexError) as e:
        raise EncodeFailure(f"an encoded chunk is unreadable ({e}); the source is probably damaged") from None
    if frames < 1 or min(w, h) != short_side or w % 2 or h % 2:
        raise EncodeFailure(f"an encoded chunk is malformed ({frames} frames, {w}x{h})")
    return {"path": path.name, "frames": frames, "duration": dur or frames / max(rate, 1e-6), "fps": rate,
            "width": w, "height": h, "bytes": path.stat().st_size}


def _sample_metas(job: EncodeJob, info: ProbeInfo, start: float, chunks: list[dict]) -> list[SampleMeta]:
    item, t = job.item, start
    metas = []
    for i, c in enumerate(chunks):
        end = t + c["duration"]
        metas.append(SampleMeta(
            video=item.rel, video_id=item.vid, chunk=i, start_s=round(t, 6), end_s=round(end, 6),
            frames=c["frames"], fps=round(c["fps"], 6), width=c["width"], height=c["height"],
            label=job.label, label_name=item.label_name if job.label is not None else None,
            caption=item.caption, captions=list(item.captions) or None))
        t = end
    return metas


def read_staged(folder: Path) -> dict[str, Any]:
    """The ``meta.json`` of a complete staging folder."""
    return json.loads((folder / META).read_text(encoding="utf-8"))
