"""Shot cuts for ``--split-at-scenes``: ffmpeg's ``scdet`` filter over the input, cut times out.

``scdet`` was picked over PySceneDetect's content detector by ``vidshard bench scenes``
(generated videos with known cuts): on clean cuts both find every cut within a frame, scdet for
about a third of the CPU and no extra dependency (PySceneDetect does better on strobing footage;
``--min-shot-seconds`` limits scdet's false cuts there). The segment muxer needs the cut times
before it encodes, so this is a decode-only pass at a small size (``ffmpeg.SCENE_ROWS``) before
the transcode; the chunk plan (``plan.scene_bounds``) is then cut at the cuts.
"""

from __future__ import annotations

import re
from pathlib import Path

from .ffmpeg import FFmpegError, run, scene_cut_args

DEFAULT_THRESHOLD = 10.0
_TIME_RE = re.compile(r"^lavfi\.scd\.time=(-?[0-9.]+(?:e-?\d+)?)\s*$", re.MULTILINE)


class SceneError(RuntimeError):
    """The cut-detection pass failed; the message says why."""


def parse_cut_times(text: str) -> list[float]:
    """Times (seconds) from ``metadata=print`` output, sorted, without repeats or negatives."""
    times = {round(float(m), 6) for m in _TIME_RE.findall(text)}
    return sorted(t for t in times if t > 0)


def detect_cuts(path: Path, *, threshold: float = DEFAULT_THRESHOLD, fps: float | None = None,
                start_s: float | None = None, duration_s: float | None = None, threads: int = 0,
                timeout: float | None = None) -> list[float]:
    """Shot-cut times in ``path`` (seconds from ``start_s``), on the frame grid of ``fps``."""
    args = scene_cut_args(path, threshold=threshold, fps=fps, start_s=start_s, duration_s=duration_s,
                          threads=threads)
    try:
        proc = run(args, timeout=timeout)
    except FFmpegError as e:
        raise SceneError(f"shot-cut detection failed: {str(e).splitlines()[-1]}") from None
    return parse_cut_times(proc.stdout.decode("utf-8", "replace"))
