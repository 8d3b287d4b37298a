"""The one module that builds ffmpeg commands (with ffmpeg-python) and runs them.

The ffmpeg binary is, in order: ``$VIDSHARD_FFMPEG``, an ``ffmpeg`` on ``PATH``,
or the one bundled with imageio-ffmpeg (so no system install is needed).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import IO

import ffmpeg


class FFmpegError(RuntimeError):
    """ffmpeg exited non-zero; ``stderr_tail`` holds its last lines."""

    def __init__(self, message: str, stderr_tail: str = "", returncode: int | None = None) -> None:
        super().__init__(message + (f"\n{stderr_tail}" if stderr_tail else ""))
        self.stderr_tail = stderr_tail
        self.returncode = returncode

    @property
    def stopped(self) -> bool:
        """ffmpeg was stopped from outside (SIGINT, SIGTERM, SIGHUP, SIGKILL: a user, a job
        scheduler, the out-of-memory killer), which says nothing about the input file."""
        rc = self.returncode
        return rc is not None and (rc == 255 or -rc in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP,
                                                        signal.SIGKILL))


@functools.cache
def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary to use (see module docstring)."""
    env = os.environ.get("VIDSHARD_FFMPEG")
    if env:
        if not (Path(env).is_file() or shutil.which(env)):
            raise FileNotFoundError(f"VIDSHARD_FFMPEG={env!r} is not an executable; unset it or fix the path")
        return env
    found = shutil.which("ffmpeg")
    if found:
        return found
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def run(args: list[str], timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run a full command line (``args[0]`` is the binary); raise FFmpegError on failure."""
    try:
        proc = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise FFmpegError(f"ffmpeg took longer than {timeout:.0f} s") from None
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.decode("utf-8", "replace").strip().splitlines()[-8:])
        raise FFmpegError(f"ffmpeg exited with code {proc.returncode}", tail, proc.returncode)
    return proc


def run_stream(stream: ffmpeg.nodes.OutputStream, timeout: float | None = None) -> None:
    """Compile an ffmpeg-python graph with our binary and run it."""
    args = stream.global_args("-hide_banner", "-nostdin", "-loglevel", "error").compile(cmd=ffmpeg_exe())
    run(args, timeout=timeout)


# --- Synthetic videos (tests, the demo, benchmarks) -------------------------------------------

# Encoder settings per codec name, so tests can make every codec real users have.
CODECS: dict[str, dict[str, str]] = {
    "h264": {"c:v": "libx264", "pix_fmt": "yuv420p", "preset": "veryfast"},
    "h264_444": {"c:v": "libx264", "pix_fmt": "yuv444p", "preset": "veryfast"},
    "mpeg4": {"c:v": "mpeg4", "pix_fmt": "yuv420p", "q:v": "5"},
    "msmpeg4": {"c:v": "msmpeg4", "pix_fmt": "yuv420p", "q:v": "5"},
    "mjpeg": {"c:v": "mjpeg", "pix_fmt": "yuvj420p", "q:v": "5"},
    "vp8": {"c:v": "libvpx", "pix_fmt": "yuv420p", "b:v": "500k", "deadline": "realtime", "cpu-used": "8"},
    "vp9": {"c:v": "libvpx-vp9", "pix_fmt": "yuv420p", "b:v": "500k", "deadline": "realtime",
            "cpu-used": "8"},
    "theora": {"c:v": "libtheora", "pix_fmt": "yuv420p", "q:v": "6"},
    "cinepak": {"c:v": "cinepak", "pix_fmt": "rgb24"},
    "hevc": {"c:v": "libx265", "pix_fmt": "yuv420p", "preset": "ultrafast", "x265-params": "log-level=error"},
}
AUDIO_CODECS = {".mp4": "aac", ".mov": "aac", ".mkv": "libvorbis", ".webm": "libopus",
                ".ogv": "libvorbis", ".avi": "pcm_s16le"}


@dataclass(frozen=True, kw_only=True)
class Synth:
    """A synthetic test video made from ffmpeg's own sources."""

    seconds: float = 2.0
    """Duration."""
    fps: float = 25.0
    """Frame rate."""
    width: int = 320
    """Width in stored pixels."""
    height: int = 240
    """Height in stored pixels."""
    pattern: str = "testsrc2"
    """``testsrc2``, ``mandelbrot``, ``counter`` (frame number as 10 black/white
    bars, see :func:`read_counter`) or ``moving`` (a white square on black moving
    at ``velocity``)."""
    codec: str = "h264"
    """A key of :data:`CODECS`."""
    audio: bool = False
    """Add a sine tone."""
    sar: str | None = None
    """Sample aspect ratio such as ``"4/3"`` for non-square pixels."""
    gop: int | None = None
    """Keyframe interval, if not the encoder's default."""
    velocity: tuple[float, float] = (40.0, 0.0)
    """``moving``: pixels per second (x, y)."""
    start: tuple[float, float] = (0.0, 0.0)
    """``moving``: top-left corner of the square at t=0."""
    checker: int = 0
    """``moving``: side in pixels of grey/white checker cells painted on the square, which move with it
    (0: a flat square)."""
    box: int = 32
    """``moving``: side of the square in pixels."""
    box_height: int = 0
    """``moving``: height of the box when it is not a square (0: ``box``, a square)."""
    color: str = "white"
    """``moving``: the box's colour (an ffmpeg colour name such as ``red`` or ``0x3366ff``)."""


COUNTER_BITS = 10


def _source(s: Synth) -> ffmpeg.nodes.FilterableStream:
    size = f"{s.width}x{s.height}"
    if s.pattern in ("testsrc2", "mandelbrot"):
        v = ffmpeg.input(f"{s.pattern}=size={size}:rate={s.fps}", f="lavfi", t=s.seconds)
    elif s.pattern == "counter":
        # Bar b (of COUNTER_BITS across the width) is white when bit b of the frame number is set.
        lum = f"255*mod(floor(N/pow(2,floor(X*{COUNTER_BITS}/W))),2)"
        v = ffmpeg.input(f"color=c=black:size={size}:rate={s.fps}", f="lavfi", t=s.seconds)
        v = v.filter("format", "yuv420p").filter("geq", lum=lum, cb="128", cr="128")
    elif s.pattern == "moving":
        bg = ffmpeg.input(f"color=c=black:size={size}:rate={s.fps}", f="lavfi", t=s.seconds)
        bh = s.box_height or s.box
        sq = ffmpeg.input(f"color=c={s.color}:size={s.box}x{bh}:rate={s.fps}", f="lavfi", t=s.seconds)
        (x0, y0), (vx, vy) = s.start, s.velocity
        if s.checker:  # a texture inside the square: tubelets on it vary within themselves
            cells = f"mod(floor(X/{s.checker})+floor(Y/{s.checker}),2)"
            sq = sq.filter("format", "yuv420p").filter("geq", lum=f"112+143*{cells}", cb="128", cr="128")
        # Wrap around the frame so the square never leaves the picture.
        x = f"mod({x0}+{vx}*t+{s.width * 4},{s.width - s.box})"
        y = f"mod({y0}+{vy}*t+{s.height * 4},{s.height - bh})"
        v = ffmpeg.overlay(bg, sq, x=x, y=y, eval="frame")
    else:
        raise ValueError(f"unknown synthetic pattern {s.pattern!r}")
    if s.sar:
        v = v.filter("setsar", s.sar)
    return v


def synth_video(path: str | Path, spec: Synth = Synth()) -> Path:
    """Write a synthetic video to ``path``; the container follows the extension."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if spec.codec not in CODECS:
        raise ValueError(f"unknown codec {spec.codec!r}; one of {sorted(CODECS)}")
    opts = dict(CODECS[spec.codec])
    if spec.gop:
        opts["g"] = str(spec.gop)
    streams = [_source(spec)]
    if spec.audio:
        streams.append(ffmpeg.input("sine=frequency=440:sample_rate=44100", f="lavfi", t=spec.seconds))
        opts["c:a"] = AUDIO_CODECS.get(path.suffix.lower(), "aac")
    out = ffmpeg.output(*streams, str(path), t=spec.seconds, **opts).overwrite_output()
    run_stream(out, timeout=300)
    return path


def read_counter(gray_row: list[int] | object, width: int) -> int:
    """Decode the frame number drawn by the ``counter`` pattern from one luma row.

    ``gray_row`` is a sequence of ``width`` luma values (0..255) across the picture.
    """
    n = 0
    for b in range(COUNTER_BITS):
        x = int((b + 0.5) * width / COUNTER_BITS)
        if int(gray_row[x]) > 127:
            n |= 1 << b
    return n


def remux(src: str | Path, dst: str | Path, *, rotation: int | None = None) -> Path:
    """Copy ``src`` to ``dst`` without re-encoding, optionally tagging a display rotation
    (degrees counter-clockwise, as a phone does), to make rotated test videos."""
    args = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y"]
    if rotation is not None:
        args += ["-display_rotation", str(rotation)]
    args += ["-i", local_url(src), "-c", "copy", local_url(dst)]
    run(args, timeout=120)
    return Path(dst)


def local_url(path: str | Path) -> str:
    """``file:`` plus the absolute path, so ffmpeg never reads a name such as
    ``concat:a.mp4``, ``http:x`` or ``-y.mp4`` as a protocol or an option."""
    return "file:" + os.path.abspath(os.fspath(path))


# --- The preprocessing transcode ------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class TranscodeSpec:
    """One ffmpeg run: decode a source (or a segment of it) once, emit every chunk."""

    short_side: int
    """Short side of the output in square pixels (even)."""
    crf: int
    """libx264 constant rate factor."""
    gop: int
    """Keyframe interval in frames."""
    preset: str = "veryfast"
    """libx264 preset."""
    tune: str | None = None
    """libx264 ``-tune`` (e.g. ``fastdecode``: no CABAC, no deblocking); ``None``: none."""
    bframes: int | None = None
    """libx264 B-frames (``-bf``); ``None``: the preset's choice."""
    b_pyramid: str | None = None
    """x264 ``b-pyramid`` (``none``, ``strict``, ``normal``); ``None``: the preset's choice."""
    b_adapt: int | None = None
    """x264 ``b-adapt`` (0 fixed B placement, 1, 2); ``None``: the preset's choice."""
    fps: float | None = None
    """Output frame rate; ``None`` keeps the source's."""
    keep_audio: bool = False
    """Keep the first audio stream (AAC) instead of dropping audio."""
    start_s: float | None = None
    """Start of the segment in the source, seconds (``None``: the beginning)."""
    duration_s: float | None = None
    """Length of the segment, seconds (``None``: to the end)."""
    split_s: tuple[float, ...] = ()
    """Chunk boundaries after the first, in seconds from the segment start."""
    threads: int = 0
    """Decoder and encoder threads each (0: ffmpeg's choice, about 1.5 per core)."""


def scale_filter(short_side: int) -> str:
    """Scale so the short side is ``short_side``, keeping the display aspect ratio.

    ``dar`` is evaluated on the frames as they reach the filter (after ffmpeg's
    autorotation), so rotation and non-square pixels are handled by ffmpeg itself;
    both sides come out even. :func:`vidshard.preprocess.plan.output_size` is the
    same rule in Python.
    """
    s = short_side
    w = f"if(gte(dar\\,1)\\,2*round({s}*dar/2)\\,{s})"
    h = f"if(gte(dar\\,1)\\,{s}\\,2*round({s}/dar/2))"
    return f"scale=w={w}:h={h}:flags=bilinear:out_range=tv,setsar=1"


def _source_args(src: str | Path, spec: TranscodeSpec) -> list[str]:
    """The input side of a decode: segment start and length, decoder threads, the file."""
    args = ["-ss", f"{spec.start_s:.6f}"] if spec.start_s else []
    if spec.threads:
        args += ["-threads", str(spec.threads)]  # as an input option: the decoder's
    args += ["-i", local_url(src)]
    if spec.duration_s is not None:
        args += ["-t", f"{spec.duration_s:.6f}"]
    return args


def _x264_args(spec: TranscodeSpec) -> list[str]:
    """The video encoder's options, shared by the batch transcode and the one-pass chunk encoder."""
    args = ["-c:v", "libx264", "-preset", spec.preset, "-crf", str(spec.crf), "-pix_fmt", "yuv420p",
            "-g", str(spec.gop), "-keyint_min", str(spec.gop), "-sc_threshold", "0"]
    if spec.tune:
        args += ["-tune", spec.tune]
    if spec.bframes is not None:
        args += ["-bf", str(spec.bframes)]
    x264 = {"b-pyramid": spec.b_pyramid, "b-adapt": spec.b_adapt}
    if params := ":".join(f"{k}={v}" for k, v in x264.items() if v is not None):
        args += ["-x264-params", params]  # applied after -preset and -tune, so it wins over both
    if spec.threads:
        args += ["-threads", str(spec.threads)]
    return args


def _times(ts: tuple[float, ...]) -> str:
    return ",".join(f"{t:.6f}" for t in ts)


def transcode_args(src: str | Path, out_dir: str | Path, spec: TranscodeSpec) -> list[str]:
    """The full ffmpeg command for ``spec`` (pure; no process is started).

    Chunks go to ``out_dir/00000.mp4``, ``00001.mp4``, ... through the segment muxer:
    one decode for all chunks, a forced keyframe at each chunk start so every chunk
    starts with one, timestamps reset per chunk.
    """
    args = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *_source_args(src, spec)]
    args += ["-map", "0:v:0"]
    fps = [f"fps={spec.fps:g}"] if spec.fps else []
    args += ["-vf", ",".join([*fps, scale_filter(spec.short_side), "format=yuv420p"])]
    args += _x264_args(spec)
    if spec.split_s:
        args += ["-force_key_frames", _times(spec.split_s)]
    if spec.keep_audio:
        args += ["-map", "0:a:0?", "-c:a", "aac", "-b:a", "128k"]
    else:
        args += ["-an"]
    args += ["-sn", "-dn", "-map_metadata", "-1", "-map_chapters", "-1"]
    args += ["-f", "segment", "-segment_format", "mp4", "-reset_timestamps", "1",
             "-segment_format_options", "movflags=+faststart"]
    if spec.split_s:
        # Without a small tolerance, timestamp rounding can move a cut to the next keyframe.
        args += ["-segment_times", _times(spec.split_s), "-segment_time_delta", "0.001"]
    else:
        args += ["-segment_time", "100000000"]  # one chunk: never split
    # The segment muxer expands '%' in the name: escape the folder's own.
    return args + [os.path.abspath(os.fspath(out_dir)).replace("%", "%%") + "/%05d.mp4"]


def transcode(src: str | Path, out_dir: Path, spec: TranscodeSpec,
              timeout: float | None = None) -> tuple[list[Path], str]:
    """Run :func:`transcode_args` into ``out_dir``; return the chunk files in order
    and ffmpeg's error output (non-empty when it met damaged data but went on)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    proc = run(transcode_args(src, out_dir, spec), timeout=timeout)
    chunks = sorted(out_dir.glob("[0-9][0-9][0-9][0-9][0-9].mp4"))
    return chunks, proc.stderr.decode("utf-8", "replace").strip()


# --- One decode pass with shot cuts (``--split-at-scenes``, see ``onepass.py``) ---------------


def rate_text(rate: Fraction) -> str:
    """A frame rate as ffmpeg reads it exactly: ``30000/1001``, ``25/1``."""
    return f"{rate.numerator}/{rate.denominator}"


def decode_args(src: str | Path, spec: TranscodeSpec, rate: Fraction) -> list[str]:
    """The decoder of the one-pass transcode (pure): the transcode's input options and filter chain,
    raw yuv420p frames to stdout on a constant grid of ``rate`` frames per second.

    Frames are ``plan.output_size`` large, ``W*H*3/2`` bytes each (Y, then U and V at half size).
    Without ``--fps`` the rate is the probed one: a variable-rate source is put on a constant grid,
    as the raw frames carry no timestamps."""
    args = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", *_source_args(src, spec)]
    args += ["-map", "0:v:0", "-an", "-sn", "-dn"]
    args += ["-vf", ",".join([f"fps={rate_text(rate)}", scale_filter(spec.short_side), "format=yuv420p"])]
    return args + ["-f", "rawvideo", "-pix_fmt", "yuv420p", "pipe:1"]


def chunk_encode_args(dst: str | Path, spec: TranscodeSpec, size: tuple[int, int], rate: Fraction, *,
                      audio_src: str | Path | None = None, audio_start_s: float = 0.0,
                      audio_max_s: float = 0.0) -> list[str]:
    """The encoder of one chunk of the one-pass transcode (pure): raw frames from stdin, the x264
    settings of :func:`transcode_args`, an MP4 at ``dst``.

    With ``audio_src`` the chunk's audio is read from the source (audio only: ``-vn``, no video
    decode) from ``audio_start_s``, at most ``audio_max_s`` seconds, and cut where the video ends."""
    w, h = size
    args = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
            "-f", "rawvideo", "-pix_fmt", "yuv420p", "-s", f"{w}x{h}", "-r", rate_text(rate), "-i", "pipe:0"]
    if audio_src is not None:
        args += ["-ss", f"{audio_start_s:.6f}", "-t", f"{audio_max_s:.6f}", "-vn", "-i", local_url(audio_src)]
    args += ["-map", "0:v:0", *_x264_args(spec)]
    if audio_src is not None:
        args += ["-map", "1:a:0?", "-c:a", "aac", "-b:a", "128k", "-shortest"]
    else:
        args += ["-an"]
    args += ["-sn", "-dn", "-map_metadata", "-1", "-map_chapters", "-1", "-movflags", "+faststart"]
    return args + ["-f", "mp4", local_url(dst)]


@functools.cache
def _pipe_size() -> int:
    """Pipes of 1 MiB (Linux's limit for a user): several raw frames in flight between two processes,
    so neither waits for the other on every frame. -1 (the system's default) elsewhere."""
    try:
        return min(1 << 20, int(Path("/proc/sys/fs/pipe-max-size").read_text()))
    except (OSError, ValueError):
        return -1


class Processes:
    """ffmpeg processes joined by pipes, run as one unit.

    Leaving the ``with`` block kills and reaps every one still running, so no error path (a failed
    encoder, a timeout, an exception in Python) leaves an ffmpeg behind; after ``timeout`` seconds
    a timer kills them all. Error output goes to temporary files, so no pipe ever fills up.
    """

    def __init__(self, timeout: float | None = None) -> None:
        self.timeout = timeout
        self.timed_out = False
        self._procs: list[tuple[subprocess.Popen, IO[bytes]]] = []
        self._timer = threading.Timer(timeout, self._expire) if timeout else None

    def __enter__(self) -> Processes:
        if self._timer:
            self._timer.daemon = True
            self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._timer:
            self._timer.cancel()
        for proc, err in self._procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for f in (proc.stdin, proc.stdout, err):
                if f is not None:
                    with contextlib.suppress(OSError):
                        f.close()

    def _expire(self) -> None:
        self.timed_out = True
        for proc, _ in list(self._procs):
            if proc.poll() is None:
                proc.kill()

    def start(self, args: list[str], *, stdin: bool = False, stdout: bool = False) -> subprocess.Popen:
        """Start ``args`` with a pipe to its stdin and/or from its stdout."""
        err = tempfile.TemporaryFile()  # noqa: SIM115 (closed in __exit__, after the process ends)
        proc = subprocess.Popen(args, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                stdout=subprocess.PIPE if stdout else subprocess.DEVNULL, stderr=err,
                                pipesize=_pipe_size())
        self._procs.append((proc, err))
        if self.timed_out:  # the timer fired while this one started
            proc.kill()
        return proc

    def stderr(self, proc: subprocess.Popen) -> str:
        """Everything ``proc`` wrote to its error output so far."""
        err = next(e for p, e in self._procs if p is proc)
        err.seek(0)
        return err.read().decode("utf-8", "replace").strip()

    def error(self, proc: subprocess.Popen) -> FFmpegError:
        """Why ``proc`` failed (waits for it to end): the timeout, or its exit code and last lines."""
        rc = proc.wait()
        if self.timed_out:
            return FFmpegError(f"ffmpeg took longer than {self.timeout:.0f} s")
        tail = "\n".join(self.stderr(proc).splitlines()[-8:])
        return FFmpegError(f"ffmpeg exited with code {rc}", tail, rc)

    def finish(self, proc: subprocess.Popen) -> str:
        """Close ``proc``'s stdin and wait for it; its error output, or :class:`FFmpegError`."""
        if proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.close()
        if proc.wait() != 0 or self.timed_out:
            raise self.error(proc)
        return self.stderr(proc)


# --- Shot cuts, the reference pass (tests and ``vidshard bench scenes``) ---------------------

# Rows of the picture scdet compares: small enough to cost little next to the decode, large
# enough to keep a cut between two shots of similar brightness (see ``vidshard bench scenes``).
SCENE_ROWS = 72


def scene_cut_args(src: str | Path, *, threshold: float, fps: float | None = None,
                   start_s: float | None = None, duration_s: float | None = None,
                   threads: int = 0) -> list[str]:
    """The ffmpeg command that prints the time of every shot cut in ``src`` (pure).

    Frames pass the same ``fps`` filter as the transcode, so cut times fall on output frames;
    ``scdet`` flags a frame whose difference to the one before scores above ``threshold``
    (0-100) and ``metadata=print`` writes ``lavfi.scd.time=T`` lines to stdout.
    """
    args = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error"]
    if start_s:
        args += ["-ss", f"{start_s:.6f}"]
    if threads:
        args += ["-threads", str(threads)]
    # The deblocking filter changes no cut and costs about a fifth of an H.264 decode.
    args += ["-skip_loop_filter", "all", "-i", local_url(src)]
    if duration_s is not None:
        args += ["-t", f"{duration_s:.6f}"]
    filters = [f"fps={fps:g}"] if fps else []
    filters += [f"scale=-2:{SCENE_ROWS}:flags=fast_bilinear", f"scdet=threshold={threshold:g}",
                "metadata=print:key=lavfi.scd.time:file='pipe\\:1'"]
    return args + ["-map", "0:v:0", "-an", "-sn", "-dn", "-vf", ",".join(filters), "-f", "null", "-"]


def concat_videos(parts: list[Path], dst: str | Path, fps: float = 25.0) -> Path:
    """Join videos of one size back to back into ``dst`` (H.264), re-encoded at ``fps``, so each
    join is a shot cut at a known time (tests and ``vidshard bench scenes``)."""
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    args = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y"]
    for p in parts:
        args += ["-i", local_url(p)]
    joined = "".join(f"[{i}:v:0]" for i in range(len(parts)))
    args += ["-filter_complex", f"{joined}concat=n={len(parts)}:v=1:a=0,fps={fps:g},format=yuv420p",
             "-c:v", "libx264", "-preset", "veryfast", "-an", local_url(dst)]
    run(args, timeout=300)
    return Path(dst)


# --- Quality against the source (how the encoding defaults are chosen) ------------------------

_SSIM_RE = re.compile(r"SSIM .*All:([0-9.]+)")
_PSNR_RE = re.compile(r"PSNR .*average:([0-9.]+|inf)")


def quality_args(encoded: str | Path, source: str | Path, short_side: int) -> list[str]:
    """ffmpeg's own ``ssim`` and ``psnr`` filters: ``encoded`` against ``source`` scaled the way
    :func:`transcode_args` scales it (both yuv420p, frames matched by timestamp)."""
    graph = (f"[0:v]format=yuv420p,split[e1][e2];"
             f"[1:v]{scale_filter(short_side)},format=yuv420p,split[s1][s2];[e1][s1]ssim;[e2][s2]psnr")
    return [ffmpeg_exe(), "-hide_banner", "-nostdin", "-nostats", "-loglevel", "info",
            "-i", local_url(encoded), "-i", local_url(source), "-lavfi", graph, "-f", "null", "-"]


def measure_quality(encoded: str | Path, source: str | Path, short_side: int) -> dict[str, float]:
    """``{"ssim": all-planes SSIM, "psnr": average PSNR in dB}`` of ``encoded`` against ``source``."""
    err = run(quality_args(encoded, source, short_side), timeout=600).stderr.decode("utf-8", "replace")
    ssim, psnr = _SSIM_RE.search(err), _PSNR_RE.search(err)
    if not ssim or not psnr:
        raise FFmpegError("ffmpeg printed no SSIM/PSNR summary", err[-500:])
    return {"ssim": float(ssim[1]), "psnr": float(psnr[1])}
