"""The preprocessing configuration: every choice `vidshard preprocess` makes."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vidshard.shards.cache_limit import parse_size  # noqa: F401 (its one home; the CLI imports it here)
from vidshard.shards.schema import DEFAULT_PREFIX

TUNES = ("fastdecode", "film", "animation", "grain", "stillimage", "psnr", "ssim", "zerolatency")
B_PYRAMIDS = ("none", "strict", "normal")
PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")


@dataclass(frozen=True, kw_only=True)
class PreprocessConfig:
    """Inputs, outputs and every encoding choice of one preprocessing run."""

    input: Path
    """A folder of videos (searched recursively) or a .csv / .jsonl list with a ``path`` column."""
    output: Path
    """Folder of the shard set (created; a re-run with the same options resumes / adds new videos)."""
    chunk_seconds: float = 10.0
    """Length of each clip (sample) in seconds."""
    min_chunk_seconds: float | None = None
    """A last piece shorter than this joins the chunk before it instead of being its own sample
    (``None``: a fifth of ``chunk_seconds``, 2 s for the default 10 s)."""
    short_side: int = 288
    """Short side of the output in pixels (even); aspect ratio kept, square pixels."""
    fps: float | None = None
    """Resample to this frame rate; ``None`` keeps each source's rate."""
    crf: int = 22
    """x264 quality (constant rate factor): lower is better and bigger."""
    gop: int = 16
    """A keyframe every this many frames (a random clip start decodes at most this many extra frames)."""
    preset: str = "veryfast"
    """x264 speed preset."""
    tune: str | None = "fastdecode"
    """x264 tune: ``fastdecode`` (default: no CABAC, no deblocking), another x264 tune, or ``None``.
    The default encoding (fastdecode, crf 22, 5 B-frames, no B-pyramid, fixed B placement) was chosen by
    ``vidshard bench preprocess --encode-sweep`` (docs/performance.md)."""
    bframes: int | None = 5
    """B-frames between reference frames (``None``: the preset's 3). Without a B-pyramid none of them is a
    reference, and the loader never decodes a B-frame its clip does not show."""
    b_pyramid: str | None = "none"
    """x264 ``b-pyramid``: ``none`` (no B-frame is a reference), ``strict``, ``normal``; ``None``: the
    preset's (normal)."""
    b_adapt: int | None = 0
    """x264 ``b-adapt``: 0 always places ``bframes`` B-frames (fixed pattern), 1 fast or 2 optimal
    adaptive placement; ``None``: the preset's (1)."""
    keep_audio: bool = False
    """Keep the first audio track (AAC); dropped by default."""
    labels_from_dirs: bool = False
    """The first folder level under INPUT is the class name (Kinetics / UCF101 layout)."""
    shard_size: int = 10**9
    """Maximum shard size in bytes."""
    prefix: str = DEFAULT_PREFIX
    """Shard name prefix: ``PREFIX-000000.tar``."""
    workers: int = 0
    """Parallel encoding processes; 0 = all cores."""
    part: tuple[int, int] | None = None
    """``(I, N)``: process only part I of N of the inputs (1-based), into shards named ``PREFIX-pIIofNN``."""
    retry_failed: bool = False
    """Try inputs listed in failures.jsonl again (by default a re-run skips them)."""
    dry_run: bool = False
    """Probe and show the plan; encode nothing."""
    quiet: bool = False
    """No live progress bar: plain log lines only (for batch jobs and log files)."""
    strict: bool = False
    """Exit non-zero when any input failed (by default: only when none succeeded)."""
    min_free_space: int = 256 << 20
    """Stop cleanly (blaming no video) when the disk of OUTPUT has less free space than this, before
    and while encoding; 0 turns the margin off (a disk that really fills up is still detected)."""
    watch: bool = False
    """Keep running: encode what is there, then each new file in INPUT as it arrives (SIGTERM stops)."""
    settle_seconds: float = 30.0
    """``watch``: a file counts once unchanged this long (or once ``NAME.done`` exists beside it)."""
    flush_seconds: float = 300.0
    """``watch``: publish a partly filled shard after this long without a new video."""
    poll: bool = False
    """``watch``: find new files by listing INPUT every ``poll_seconds`` (network file systems
    deliver no change events); by default change events (watchdog) trigger a look."""
    poll_seconds: float = 5.0
    """``watch``: seconds between two listings of INPUT with ``poll`` (a safety-net listing every
    minute otherwise)."""
    split_at_scenes: bool = False
    """Snap chunk boundaries to shot cuts (``scdet``'s score on the frames being transcoded, so each
    source is still decoded once), so no sample spans a cut."""
    scene_threshold: float = 10.0
    """``scdet`` score (0-100, luma difference to the frame before) above which a frame starts a new shot."""
    min_shot_seconds: float = 0.4
    """A cut less than this after the previous one is ignored (a flash or strobe is not a new shot)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "input", Path(self.input))
        object.__setattr__(self, "output", Path(self.output))
        if self.chunk_seconds <= 0:
            raise ValueError(f"chunk_seconds must be > 0, got {self.chunk_seconds}")
        if self.min_chunk_seconds is None:
            object.__setattr__(self, "min_chunk_seconds", self.chunk_seconds / 5)
        if not 0 <= self.min_chunk_seconds <= self.chunk_seconds:
            raise ValueError(f"min_chunk_seconds must be in [0, chunk_seconds], got {self.min_chunk_seconds}")
        if self.short_side < 16 or self.short_side % 2:
            raise ValueError(f"short_side must be even and >= 16 (H.264 yuv420p), got {self.short_side}")
        if self.fps is not None and not 0 < self.fps <= 1000:
            raise ValueError(f"fps must be in (0, 1000], got {self.fps}")
        if not 0 <= self.crf <= 51:
            raise ValueError(f"crf must be in [0, 51], got {self.crf}")
        if self.gop < 1:
            raise ValueError(f"gop must be >= 1, got {self.gop}")
        if self.preset not in PRESETS:
            raise ValueError(f"preset {self.preset!r}: one of {', '.join(PRESETS)}")
        if self.tune is not None and self.tune not in TUNES:
            raise ValueError(f"tune {self.tune!r}: one of {', '.join(TUNES)}, or none")
        if self.bframes is not None and not 0 <= self.bframes <= 16:
            raise ValueError(f"bframes must be in [0, 16] (x264's limit), or none, got {self.bframes}")
        if self.b_pyramid is not None and self.b_pyramid not in B_PYRAMIDS:
            raise ValueError(f"b_pyramid {self.b_pyramid!r}: one of {', '.join(B_PYRAMIDS)}, or none")
        if self.b_adapt is not None and self.b_adapt not in (0, 1, 2):
            raise ValueError(f"b_adapt must be 0, 1 or 2, or none, got {self.b_adapt}")
        if self.shard_size < 1 << 16:
            raise ValueError(f"shard_size must be at least 64 KiB, got {self.shard_size}")
        if not re.fullmatch(r"[A-Za-z0-9_\-]+", self.prefix):
            raise ValueError(f"prefix {self.prefix!r} may hold only letters, digits, '_' and '-'")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0 (0 = all cores), got {self.workers}")
        if self.min_free_space < 0:
            raise ValueError(f"min_free_space must be >= 0 bytes, got {self.min_free_space}")
        if not 0 < self.scene_threshold < 100:
            raise ValueError(f"scene_threshold must be in (0, 100), got {self.scene_threshold}")
        if min(self.settle_seconds, self.flush_seconds) < 0 or self.poll_seconds <= 0:
            raise ValueError("settle_seconds and flush_seconds must be >= 0, poll_seconds > 0")
        if self.min_shot_seconds < 0:
            raise ValueError(f"min_shot_seconds must be >= 0, got {self.min_shot_seconds}")
        if self.part is not None and not 1 <= self.part[0] <= self.part[1]:
            raise ValueError(f"part {self.part}: expected (I, N) with 1 <= I <= N")

    @property
    def num_workers(self) -> int:
        return self.workers or os.cpu_count() or 1

    def settings(self) -> dict[str, Any]:
        """What goes into ``manifest.json`` ``settings``; a re-run must match it."""
        return {
            "chunk_seconds": self.chunk_seconds, "min_chunk_seconds": self.min_chunk_seconds,
            "short_side": self.short_side, "fps": self.fps, "codec": "h264", "pix_fmt": "yuv420p",
            "crf": self.crf, "gop": self.gop, "preset": self.preset, "tune": self.tune,
            # A set made before these existed has none of them: read as None, the preset's choice.
            "bframes": self.bframes, "b_pyramid": self.b_pyramid, "b_adapt": self.b_adapt,
            "keep_audio": self.keep_audio,
            "labels_from_dirs": self.labels_from_dirs, "prefix": self.prefix,
            "part": None if self.part is None else f"{self.part[0]}/{self.part[1]}",
            # Only when on, so sets made before the option existed still resume.
            **({"split_at_scenes": True, "scene_threshold": self.scene_threshold,
                "min_shot_seconds": self.min_shot_seconds} if self.split_at_scenes else {}),
        }
