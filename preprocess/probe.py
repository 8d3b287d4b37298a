"""Probe a source file with PyAV: is it a video, how long, how big, which way up.

A file counts as a video because PyAV can open it and decode a frame of a video
stream, never because of its extension. Every way a file can fail to be one
raises :class:`ProbeError` with a reason a person understands.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

# Demuxers of single still images (a .jpg is not a video), and of images that may be animated.
_STILL_FORMATS = ("image2", "_pipe")
_ANIMATED_FORMATS = ("gif", "webp", "apng")
_MAX_FPS = 1000.0


class ProbeError(Exception):
    """The file is not a usable video; ``str(e)`` says why in plain words."""


@dataclass(frozen=True, kw_only=True)
class ProbeInfo:
    """What preprocessing needs to know about one source video."""

    duration_s: float
    """Duration of the video stream in seconds."""
    fps: float
    """Average frame rate (frames per second)."""
    width: int
    """Stored width in pixels (before rotation and pixel aspect)."""
    height: int
    """Stored height in pixels."""
    sar: Fraction
    """Sample (pixel) aspect ratio; 1 for square pixels."""
    rotation: int
    """Display rotation in degrees (0, 90, 180 or 270) from the display matrix."""
    codec: str
    """Video codec name, e.g. ``h264``, ``vp9``."""
    container: str
    """Container (demuxer) name, e.g. ``mov,mp4,m4a,3gp,3g2,mj2``."""
    has_audio: bool
    """The file has at least one audio stream."""
    bytes: int
    """File size in bytes."""


def open_local(path: str | Path) -> av.container.InputContainer:
    """Open a local file with PyAV; ``file:`` + absolute path so names such as
    ``concat:a.mp4`` or ``http:b.mp4`` are never read as protocols."""
    return av.open("file:" + os.path.abspath(os.fspath(path)), mode="r", timeout=60)


def probe(path: str | Path) -> ProbeInfo:
    """Probe ``path``; raise :class:`ProbeError` when it is not a usable video."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise ProbeError(f"cannot read the file ({e.strerror or e})") from None
    if size == 0:
        raise ProbeError("empty file (0 bytes)")
    if not os.access(path, os.R_OK):
        raise ProbeError("permission denied: the file is not readable by this user")
    try:
        with open_local(path) as container:
            return _probe_open(container, size)
    except ProbeError:
        raise
    except av.error.InvalidDataError:
        raise ProbeError("not a video file: ffmpeg cannot recognise its format (damaged, or not media)"
                         ) from None
    except PermissionError:
        raise ProbeError("permission denied: the file is not readable by this user") from None
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise ProbeError(f"cannot open as a video: {e}") from None


def _probe_open(container: av.container.InputContainer, size: int) -> ProbeInfo:
    fmt = container.format.name
    videos = [s for s in container.streams.video if not _is_attached_picture(s)]
    has_audio = bool(container.streams.audio)
    if not videos:
        raise ProbeError("audio-only file: it has no video stream" if has_audio
                         else "no video stream in the file")
    stream = videos[0]
    if any(tag in fmt for tag in _STILL_FORMATS) or (
            fmt in _ANIMATED_FORMATS and not _has_two_frames(container, stream)):
        raise ProbeError(f"a still image ({fmt}), not a video")
    frame = _first_frame(container, stream)
    fps = _frame_rate(stream)
    duration = _duration(container, stream)
    sar = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio or Fraction(1)
    return ProbeInfo(
        duration_s=duration, fps=fps, width=frame.width, height=frame.height,
        sar=Fraction(sar) if sar > 0 else Fraction(1), rotation=int(getattr(frame, "rotation", 0) or 0) % 360,
        codec=stream.codec_context.name, container=fmt, has_audio=has_audio, bytes=size,
    )


def _has_two_frames(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> bool:
    packets = (p for p in container.demux(stream) if p.size)
    two = next(packets, None) is not None and next(packets, None) is not None
    container.seek(0, any_frame=True)
    return two


def _is_attached_picture(stream: av.video.stream.VideoStream) -> bool:
    disp = stream.disposition
    return bool(disp & av.stream.Disposition.attached_pic) if disp is not None else False


def _first_frame(container: av.container.InputContainer,
                 stream: av.video.stream.VideoStream) -> av.VideoFrame:
    """Decode the first frame: proves the codec is supported and the data is sane."""
    codec = stream.codec_context.name
    stream.thread_type = "NONE"  # one frame: threads would cost more than they save
    try:
        for i, frame in enumerate(container.decode(stream)):
            if frame.width > 0 and frame.height > 0:
                return frame
            if i > 100:
                break
    except av.error.FFmpegError as e:
        raise ProbeError(f"the {codec} video stream cannot be decoded ({e}); "
                         "the file is damaged or truncated") from None
    raise ProbeError(f"no frame of the {codec} video stream could be decoded; "
                     "the file is damaged or truncated")


def _frame_rate(stream: av.video.stream.VideoStream) -> float:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate and 0 < float(rate) <= _MAX_FPS:
            return float(rate)
    return 25.0  # no usable rate anywhere: ffmpeg's own default


def _duration(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float:
    """Stream duration, else container duration, else demux to the end (no decode)."""
    if stream.duration and stream.time_base and stream.duration > 0:
        return float(stream.duration * stream.time_base)
    if container.duration and container.duration > 0:
        return container.duration / av.time_base
    return _scan_duration(container, stream)


def _scan_duration(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float:
    container.seek(0, any_frame=True)
    first = last = None
    try:
        for packet in container.demux(stream):
            if packet.pts is None:
                continue
            end = packet.pts + (packet.duration or 0)
            first = packet.pts if first is None else min(first, packet.pts)
            last = end if last is None else max(last, end)
    except av.error.FFmpegError:
        pass  # a damaged tail: the readable part counts
    if first is None or last is None or last <= first:
        raise ProbeError("the video stream holds no timed frames (length unknown)")
    return float((last - first) * stream.time_base)
