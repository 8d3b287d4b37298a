"""Encode one input (a worker's job): probe, plan, one ffmpeg run for all chunks, verify.

With ``--split-at-scenes`` the chunks follow shot cuts found while transcoding (``onepass.py``:
one decoder, one encoder per chunk); the source is still decoded once.

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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import av
from vidshard.shards.schema import SampleMeta

from .config import PreprocessConfig
from .ffmpeg import FFmpegError, TranscodeSpec, transcode
from .from_shards import SampleProblem, extracted_source
from .inputs import InputItem
from .onepass import transcode_at_scenes
from .plan import chunk_bounds, frame_rate, output_size, split_points
from .probe import ProbeError, ProbeInfo, open_local, probe
from .scenes import SceneRule
from .space import OUTPUT_ERRNOS, output_trouble

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
    output_trouble: str | None = None
    """The OUTPUT side failed (disk full, read-only, ...; see ``space.py``): not the file's fault;
    the run stops and a re-run encodes the file."""


class EncodeFailure(Exception):
    """One input cannot be used; ``str(e)`` is the reason for ``failures.jsonl``."""

    def __init__(self, reason: str, stderr: str = "") -> None:
        super().__init__(reason)
        self.stderr = stderr
        """ffmpeg's error output, when ffmpeg failed (read to tell a full disk from a bad input)."""


class Stopped(Exception):
    """The encode was stopped from outside (a signal); the input itself may be fine."""


def encode_video(job: EncodeJob, cfg: PreprocessConfig) -> EncodeOutcome:
    """Encode one input into its staging folder. Never raises."""
    done = job.staging / job.item.vid
    if (done / META).is_file():
        return EncodeOutcome(item=job.item, staged=done, seconds=read_staged(done)["seconds"])
    if job.item.invalid:
        return EncodeOutcome(item=job.item, reason=job.item.invalid)
    tmp = job.staging / f"{job.item.vid}.{os.getpid()}.tmp"
    try:
        with extracted_source(job.item, job.staging) as path:  # a shard-set input's video, copied out
            meta = _encode_into(replace(job, item=replace(job.item, path=path)), cfg, tmp)
    except SampleProblem as e:  # a shard-set input's sample that cannot be used
        return EncodeOutcome(item=job.item, reason=str(e))
    except Stopped as e:
        return EncodeOutcome(item=job.item, reason=str(e), stopped=True)
    except Exception as e:  # a bug or an unforeseen input must not stop the run
        return _failed(job, cfg, e)
    finally:
        if tmp.exists() and not (tmp / META).exists():
            shutil.rmtree(tmp, ignore_errors=True)
    try:
        os.rename(tmp, done)
    except OSError:  # another (orphaned) worker finished it first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return EncodeOutcome(item=job.item, staged=done, seconds=meta["seconds"])


def _failed(job: EncodeJob, cfg: PreprocessConfig, e: Exception) -> EncodeOutcome:
    """The outcome of a failed encode: the input's fault, unless the OUTPUT side is in trouble.

    Called before the partial output is deleted: deleting it frees the space that ran out."""
    reason = str(e) if isinstance(e, (EncodeFailure, ProbeError)) else \
        f"unexpected error ({type(e).__name__}: {e})"
    hint = e.stderr if isinstance(e, EncodeFailure) else ""
    if isinstance(e, OSError) and e.errno in OUTPUT_ERRNOS:
        hint += os.strerror(e.errno)
    trouble = output_trouble(job.staging, cfg.min_free_space, hint=hint)
    return EncodeOutcome(item=job.item, reason=reason, output_trouble=trouble)


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
                         preset=cfg.preset, tune=cfg.tune, bframes=cfg.bframes,
                         b_pyramid=cfg.b_pyramid, b_adapt=cfg.b_adapt, fps=cfg.fps,
                         keep_audio=cfg.keep_audio, start_s=start if segment else None,
                         duration_s=duration if segment else None,
                         split_s=split_points(bounds, None if segment else cfg.chunk_seconds))


def _encode_into(job: EncodeJob, cfg: PreprocessConfig, tmp: Path) -> dict[str, Any]:
    item = job.item
    info = probe(item.path)
    start, duration = segment_of(item, info)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        files, errors, cuts = _transcode(cfg, item, info, start, duration, tmp)
    except FFmpegError as e:
        if e.stopped:
            raise Stopped("ffmpeg was stopped by a signal") from None
        last = e.stderr_tail.strip().splitlines()[-1:] or [str(e).splitlines()[0]]
        raise EncodeFailure(f"ffmpeg could not decode the video: {last[0]}", e.stderr_tail) from None
    chunks = [_chunk_facts(f, cfg.short_side) for f in files]
    covered = sum(c["duration"] for c in chunks)
    if not chunks or covered <= 0:
        raise EncodeFailure("no video frame could be decoded; the file is damaged")
    if covered < duration - max(_SHORT_ABS_S, _SHORT_REL * duration) and errors:
        raise EncodeFailure(f"decoding failed at {start + covered:.1f} s of {start + duration:.1f} s: "
                            f"the file is truncated or damaged ({errors.splitlines()[-1][:160]})")
    metas = _sample_metas(job, info, start, chunks, cuts)
    share = min(1.0, duration / info.duration_s) if info.duration_s else 1.0  # of a segmented file
    meta = {"vid": item.vid, "video": metas[0].video, "seconds": covered,
            "samples": [m.to_dict() for m in metas],
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


def _transcode(cfg: PreprocessConfig, item: InputItem, info: ProbeInfo, start: float, duration: float,
               tmp: Path) -> tuple[list[Path], str, list[float] | None]:
    """Encode one input into ``tmp``: the chunk files in order, the decoder's error output, and with
    ``--split-at-scenes`` the shot cuts (seconds from ``start``) the chunks were cut at."""
    timeout = 120 + 20 * duration
    if not cfg.split_at_scenes:
        bounds = chunk_bounds(duration, cfg.chunk_seconds, cfg.min_chunk_seconds)
        files, errors = transcode(item.path, tmp, transcode_spec(cfg, item, start, duration, bounds),
                                  timeout=timeout)
        return files, errors, None
    size = output_size(info.width, info.height, info.sar, info.rotation, cfg.short_side)
    rule = SceneRule(threshold=cfg.scene_threshold, chunk_s=cfg.chunk_seconds,
                     min_chunk_s=cfg.min_chunk_seconds, min_shot_s=cfg.min_shot_seconds)
    return transcode_at_scenes(item.path, tmp, transcode_spec(cfg, item, start, duration, []), size=size,
                               rate=frame_rate(cfg.fps or info.fps), rule=rule, timeout=timeout)


def _at_cut(t: float, cuts: list[float] | None, fps: float) -> bool | None:
    """Whether a chunk starting ``t`` seconds into the input starts at a shot cut (half a frame)."""
    if cuts is None:
        return None
    return any(abs(t - c) <= 0.5 / max(fps, 1e-6) for c in cuts)


def _sample_metas(job: EncodeJob, info: ProbeInfo, start: float, chunks: list[dict],
                  cuts: list[float] | None = None) -> list[SampleMeta]:
    item, t = job.item, start
    origin = dict(item.origin or {})  # a shard-set input: times are in its original source's timeline
    video, offset = origin.pop("video", item.rel), origin.pop("start_s", 0.0)
    metas = []
    for i, c in enumerate(chunks):
        end = t + c["duration"]
        metas.append(SampleMeta(
            video=video, video_id=item.vid, chunk=i, start_s=round(offset + t, 6),
            end_s=round(offset + end, 6), frames=c["frames"], fps=round(c["fps"], 6), width=c["width"],
            height=c["height"], label=job.label,
            label_name=item.label_name if job.label is not None else None, caption=item.caption,
            captions=list(item.captions) or None,
            starts_at_cut=_at_cut(t - start, cuts, c["fps"]), extra=origin))
        t = end
    return metas


def read_staged(folder: Path) -> dict[str, Any]:
    """The ``meta.json`` of a complete staging folder."""
    return json.loads((folder / META).read_text(encoding="utf-8"))
