"""Shot cuts for ``--split-at-scenes``, found on the frames the transcode decodes anyway.

:class:`SceneScore` is ffmpeg's ``scdet`` score (libavfilter/vf_scdet.c) in numpy, on the decoded
output frames; :class:`SceneChunker` is :func:`plan.scene_bounds` online: frames go in one by one
and each leaves with its chunk as soon as that is decided. ``onepass.py`` joins them to one
decoder and one encoder per chunk.

``scdet`` was picked over PySceneDetect's content detector by ``vidshard bench scenes``
(generated videos with known cuts): on clean cuts both find every cut within a frame, scdet for
about a third of the CPU and no extra dependency (PySceneDetect does better on strobing footage;
``--min-shot-seconds`` limits scdet's false cuts there). :func:`detect_cuts` runs ffmpeg's own
scdet in a decode-only pass: the reference the tests and the benchmark compare against.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .ffmpeg import FFmpegError, run, scene_cut_args
from .plan import chunk_bounds

DEFAULT_THRESHOLD = 10.0
_TIME_RE = re.compile(r"^lavfi\.scd\.time=(-?[0-9.]+(?:e-?\d+)?)\s*$", re.MULTILINE)
# Frame times and chunk starts are rounded to 1e-6 s: equal within half of that.
_TOL = 5e-7
_EPS = 1e-6


class SceneError(RuntimeError):
    """The cut-detection pass failed; the message says why."""


@dataclass(frozen=True, kw_only=True)
class SceneRule:
    """How chunks follow shot cuts: the ``--split-at-scenes`` settings of a run."""

    threshold: float = DEFAULT_THRESHOLD
    """A frame whose :class:`SceneScore` is above this (0-100) starts a new shot."""
    chunk_s: float = 10.0
    """Longest chunk the length rule makes inside a shot, seconds."""
    min_chunk_s: float = 2.0
    """A last piece of a shot shorter than this joins the chunk before it, seconds."""
    min_shot_s: float = 0.4
    """A cut less than this after the previous kept cut (or the start) is ignored, seconds."""


class SceneScore:
    """ffmpeg's ``scdet`` score of each frame against the one before, on the luma plane.

    ``mafd`` is the mean absolute difference of the luma planes in percent of 256; the score is
    ``clip(min(mafd, |mafd - previous mafd|), 0, 100)``, 0 for the first frame, and a frame whose
    score is above the threshold starts a shot. The arithmetic of vf_scdet.c, on the luma plane as
    the scdet of ffmpeg 9 computes it, so on the same frames the scores are the same numbers.
    """

    def __init__(self) -> None:
        self._prev: np.ndarray | None = None
        self._prev_mafd = 0.0

    def __call__(self, luma: np.ndarray) -> float:
        """Score of a frame from its luma plane, uint8, ``(H, W)`` or flat ``(H*W,)``."""
        prev, self._prev = self._prev, luma
        if prev is None or prev.shape != luma.shape:
            return 0.0
        sad = int((np.maximum(luma, prev) - np.minimum(luma, prev)).sum(dtype=np.uint64))
        mafd = sad * 100.0 / luma.size / 256
        score = min(mafd, abs(mafd - self._prev_mafd))
        self._prev_mafd = mafd
        return min(max(score, 0.0), 100.0)


class SceneChunker:
    """:func:`plan.scene_bounds` (with :func:`plan.kept_cuts`) over a stream of frames.

    Frame ``i`` is at ``i / fps`` seconds. :meth:`push` takes the next frame and whether it scored
    a cut, and returns the chunk index of every frame it releases, oldest first; :meth:`end` releases
    the rest. A frame is released once its chunk is certain: at most ``min_chunk_s`` of frames wait
    (those past a possible length-rule boundary, until the shot has gone on long enough for it or has
    ended). ``starts`` holds ``(time of the chunk's first frame, starts at a cut)`` per chunk and
    ``cuts`` the kept cut times.
    """

    def __init__(self, rule: SceneRule, fps: float) -> None:
        self.rule, self.fps = rule, fps
        self.frames = 0
        self.cuts: list[float] = []
        self.starts: list[tuple[float, bool]] = []
        self._shot = 0.0  # start of the current shot, seconds
        self._piece = -1  # length-rule piece of the current shot the last released frame is in
        self._waiting: deque[int] = deque()

    def _time(self, i: int) -> float:
        return round(i / self.fps, 6)

    def push(self, is_cut: bool) -> list[int]:
        """Take the next frame; the chunk of each frame released by it."""
        i, self.frames = self.frames, self.frames + 1
        t, out = self._time(i), []
        last = self.cuts[-1] if self.cuts else 0.0
        if is_cut and t > _EPS and t - last >= self.rule.min_shot_s - _EPS:  # the kept_cuts rule
            out = self._release(t, final=True)
            self.cuts.append(t)
            self._shot, self._piece = t, -1
        self._waiting.append(i)
        return out + self._release(self._time(i + 1), final=False)

    def end(self) -> list[int]:
        """No more frames: the chunk of each frame still waiting."""
        return self._release(self._time(self.frames), final=True)

    def _release(self, end: float, final: bool) -> list[int]:
        """Release the waiting frames whose chunk is decided once the current shot lasts until
        ``end`` (``final``: ends exactly there). The length rule's starts only grow with the shot's
        length, and all are multiples of ``chunk_s`` after its start, so a frame before the last
        certain start plus ``chunk_s`` is in that chunk or an earlier one, whatever comes next."""
        pieces = chunk_bounds(round(end - self._shot, 6), self.rule.chunk_s, self.rule.min_chunk_s)
        starts = [round(self._shot + a, 6) for a, _ in pieces]
        out: list[int] = []
        while self._waiting:
            t = self._time(self._waiting[0])
            if not final and t >= starts[-1] + self.rule.chunk_s - _TOL:
                break  # a boundary may yet come before this frame
            piece = max(p for p, s in enumerate(starts) if s <= t + _TOL)
            if piece != self._piece:
                self._piece = piece
                self.starts.append((t, piece == 0 and self._shot > 0))
            out.append(len(self.starts) - 1)
            self._waiting.popleft()
        return out


def parse_cut_times(text: str) -> list[float]:
    """Times (seconds) from ``metadata=print`` output, sorted, without repeats or negatives."""
    times = {round(float(m), 6) for m in _TIME_RE.findall(text)}
    return sorted(t for t in times if t > 0)


def detect_cuts(path: Path, *, threshold: float = DEFAULT_THRESHOLD, fps: float | None = None,
                start_s: float | None = None, duration_s: float | None = None, threads: int = 0,
                timeout: float | None = None) -> list[float]:
    """Shot-cut times in ``path`` (seconds from ``start_s``) by ffmpeg's own ``scdet``, in a
    decode-only pass at ``ffmpeg.SCENE_ROWS`` rows: the reference for tests and the benchmark."""
    args = scene_cut_args(path, threshold=threshold, fps=fps, start_s=start_s, duration_s=duration_s,
                          threads=threads)
    try:
        proc = run(args, timeout=timeout)
    except FFmpegError as e:
        raise SceneError(f"shot-cut detection failed: {str(e).splitlines()[-1]}") from None
    return parse_cut_times(proc.stdout.decode("utf-8", "replace"))
