"""``--split-at-scenes`` in one decode pass: shot cuts are found on the frames being transcoded.

The segment muxer of the batch transcode must know the split times before it encodes, so here the
work is split differently: one ffmpeg decodes the source through the transcode's own filter chain
into raw yuv420p frames (``ffmpeg.decode_args``); Python scores each frame's luma the way ``scdet``
does (``scenes.SceneScore``), lets ``scenes.SceneChunker`` decide each frame's chunk by the rule of
``plan.scene_bounds``, and pipes it to that chunk's encoder (``ffmpeg.chunk_encode_args``, one
ffmpeg per chunk, started at the chunk's first frame). Every source is decoded once.

::

    source ─► decoder ─► raw frames ─► score ─► chunker ─► encoder of chunk k ─► 0000k.mp4
                                                  (holds at most --min-chunk-seconds of frames)
"""

from __future__ import annotations

import subprocess
from collections import deque
from fractions import Fraction
from pathlib import Path

import numpy as np

from .ffmpeg import FFmpegError, Processes, TranscodeSpec, chunk_encode_args, decode_args
from .scenes import SceneChunker, SceneRule, SceneScore


def transcode_at_scenes(src: str | Path, out_dir: Path, spec: TranscodeSpec, *, size: tuple[int, int],
                        rate: Fraction, rule: SceneRule,
                        timeout: float | None = None) -> tuple[list[Path], str, list[float]]:
    """Decode ``src`` once (``spec``'s segment, filters and threads; ``spec.split_s`` unused) and
    write chunks that never span a shot cut to ``out_dir/00000.mp4``, ``00001.mp4``, ...

    ``size`` is the output ``(W, H)`` (``plan.output_size``, the rule of ``ffmpeg.scale_filter``),
    ``rate`` the constant output frame rate. Returns the chunk files in order, the decoder's error
    output (non-empty when it met damaged data but went on) and the kept cut times in seconds from
    the segment start, as :func:`ffmpeg.transcode` returns its first two. Raises
    :class:`FFmpegError` when a process fails (``.stopped`` after a signal), or after ``timeout``
    seconds; every ffmpeg started here has ended when this returns or raises.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    w, h = size
    frame_bytes = w * h * 3 // 2  # yuv420p: Y at W x H, U and V at W/2 x H/2
    chunker, score = SceneChunker(rule, float(rate)), SceneScore()
    with Processes(timeout) as procs:
        decoder = procs.start(decode_args(src, spec, rate), stdout=True)
        writer = _ChunkWriter(procs, src, out_dir, spec, size, rate, chunker)
        held: deque[bytes] = deque()  # frames the chunker has not released yet
        while len(frame := decoder.stdout.read(frame_bytes)) == frame_bytes:
            held.append(frame)
            is_cut = score(np.frombuffer(frame, np.uint8, count=w * h)) > rule.threshold  # on the Y plane
            writer.write(chunker.push(is_cut), held)
        errors = procs.finish(decoder)
        if frame:  # the decoder ended well but mid-frame: its frames are not the size planned
            raise FFmpegError(f"the decoder's frames are not {w}x{h} yuv420p ({len(frame)} bytes left over); "
                              "the output size rule and ffmpeg's scale filter disagree")
        writer.write(chunker.end(), held)
        writer.close()
    return writer.files, errors, chunker.cuts


class _ChunkWriter:
    """Feeds released frames to the encoder of their chunk, starting one encoder per chunk."""

    def __init__(self, procs: Processes, src: str | Path, out_dir: Path, spec: TranscodeSpec,
                 size: tuple[int, int], rate: Fraction, chunker: SceneChunker) -> None:
        self.procs, self.src, self.out_dir, self.spec = procs, src, out_dir, spec
        self.size, self.rate, self.chunker = size, rate, chunker
        self.files: list[Path] = []
        self._encoder: subprocess.Popen | None = None

    def write(self, chunks: list[int], held: deque[bytes]) -> None:
        """Write the ``len(chunks)`` oldest held frames, ``chunks[i]`` being the i-th one's chunk."""
        for k in chunks:
            frame = held.popleft()
            if k >= len(self.files):
                self._start(k)
            try:
                self._encoder.stdin.write(frame)
            except BrokenPipeError:  # the encoder died (a full disk, a signal): say why
                raise self.procs.error(self._encoder) from None

    def _start(self, k: int) -> None:
        self.close()
        dst = self.out_dir / f"{k:05d}.mp4"
        audio = {}
        if self.spec.keep_audio:
            rule = self.chunker.rule  # a chunk never lasts longer than chunk + min chunk seconds
            start = (self.spec.start_s or 0.0) + self.chunker.starts[k][0]
            audio = {"audio_src": self.src, "audio_start_s": start,
                     "audio_max_s": rule.chunk_s + rule.min_chunk_s + 1.0}
        args = chunk_encode_args(dst, self.spec, self.size, self.rate, **audio)
        self._encoder = self.procs.start(args, stdin=True)
        self.files.append(dst)

    def close(self) -> None:
        """Finish the current chunk's encoder (raises :class:`FFmpegError` if it failed)."""
        if self._encoder is not None:
            encoder, self._encoder = self._encoder, None
            self.procs.finish(encoder)
