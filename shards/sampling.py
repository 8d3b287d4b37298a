"""Pure clip sampling: which frames a clip takes and which crop box it uses.

Every function here is a function of its arguments (randomness comes in as a ``random.Random``),
so the loader's choices are reproducible and tested by invariants.

Temporal sampling (``ClipSpec.sampling``):

- ``dense``: ``frames`` T at ``stride`` s, spanning ``(T-1)*s+1`` frames, from a random start when
  training, from the centre for evaluation (several evaluation views are spread evenly over the sample).
- ``uniform``: the sample is cut into T equal segments and one frame is taken from each (random within
  the segment when training, its middle for evaluation), for labels that describe the whole segment.

Samples shorter than the clip never fail. Dense clips follow ``ClipSpec.short``: ``"repeat"`` (default)
clamps indices to the last frame, so the clip holds every frame at the stride and then repeats the last
one; ``"loop"`` wraps around to the start (so time order restarts). Uniform clips repeat frames, in order.

Spatial sampling: training draws one random resized crop (area fraction in ``scale``, aspect ratio in
``ratio``, as torchvision's ``RandomResizedCrop``) and one horizontal flip per clip, shared by all its
frames; evaluation takes the largest centred square, or ``spatial_views`` squares spread along the long
side (left, centre, right for 3).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

SAMPLINGS = ("dense", "uniform")
SHORT_MODES = ("repeat", "loop")


@dataclass(frozen=True)
class Box:
    """A crop box in source pixels: left ``x``, top ``y``, width ``w``, height ``h``."""

    x: int
    y: int
    w: int
    h: int

    def inside(self, width: int, height: int) -> bool:
        return self.x >= 0 and self.y >= 0 and self.w > 0 and self.h > 0 and \
            self.x + self.w <= width and self.y + self.h <= height


@dataclass(frozen=True)
class ClipPlan:
    """One view of one clip: frame indices in output order, crop box and flip."""

    indices: tuple[int, ...]
    box: Box
    flip: bool


@dataclass(frozen=True, kw_only=True)
class ClipSpec:
    """The clip settings sampling needs (built from ``LoaderConfig``; see its field docs)."""

    frames: int = 16
    stride: int = 4
    sampling: str = "dense"
    train: bool = True
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    temporal_views: int = 1
    spatial_views: int = 1
    clips_per_sample: int = 1
    short: str = "repeat"

    def __post_init__(self) -> None:
        if self.frames < 1 or self.stride < 1:
            raise ValueError(f"frames ({self.frames}) and stride ({self.stride}) must be >= 1")
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, not {self.sampling!r}")
        if self.short not in SHORT_MODES:
            raise ValueError(f"short must be one of {SHORT_MODES}, not {self.short!r}")
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"scale {self.scale} must satisfy 0 < min <= max <= 1")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio {self.ratio} must satisfy 0 < min <= max")
        if min(self.temporal_views, self.spatial_views, self.clips_per_sample) < 1:
            raise ValueError("temporal_views, spatial_views and clips_per_sample must be >= 1")

    @property
    def views(self) -> int:
        """Views per output clip: 1 when training, temporal x spatial for evaluation."""
        return 1 if self.train else self.temporal_views * self.spatial_views


def dense_indices(num_frames: int, frames: int, stride: int, start: int, short: str = "repeat") -> list[int]:
    """``frames`` indices from ``start`` at ``stride``, handling samples shorter than the clip."""
    if num_frames < 1:
        raise ValueError("a sample needs at least one frame")
    raw = [start + i * stride for i in range(frames)]
    if short == "loop":
        return [i % num_frames for i in raw]
    return [min(i, num_frames - 1) for i in raw]


def dense_starts(num_frames: int, frames: int, stride: int, count: int,
                 rng: random.Random | None) -> list[int]:
    """``count`` clip starts: random (``rng`` given) or evenly spread, centred for ``count`` 1."""
    room = max(0, num_frames - ((frames - 1) * stride + 1))
    if rng is not None:
        return [rng.randint(0, room) for _ in range(count)]
    if count == 1:
        return [room // 2]
    return [round(v * room / (count - 1)) for v in range(count)]


def uniform_indices(num_frames: int, frames: int, rng: random.Random | None, view: int = 0,
                    views: int = 1) -> list[int]:
    """One frame from each of ``frames`` equal segments (random in it, or at offset ``(view+.5)/views``)."""
    if num_frames < 1:
        raise ValueError("a sample needs at least one frame")
    seg = num_frames / frames
    out = []
    for i in range(frames):
        off = rng.random() if rng is not None else (view + 0.5) / views
        out.append(min(num_frames - 1, int(seg * (i + off))))
    return out


def random_resized_crop(width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float],
                        rng: random.Random) -> Box:
    """torchvision's RandomResizedCrop box: area fraction in ``scale``, aspect ``w/h`` in ``ratio``."""
    area = width * height
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_r))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return Box(rng.randint(0, width - w), rng.randint(0, height - h), w, h)
    # Fallback: the largest centred box whose aspect is within ``ratio``.
    aspect = min(max(width / height, ratio[0]), ratio[1])
    w, h = (width, min(height, round(width / aspect))) if width / height < aspect else \
        (min(width, round(height * aspect)), height)
    return Box((width - w) // 2, (height - h) // 2, w, h)


def square_crops(width: int, height: int, views: int) -> list[Box]:
    """``views`` squares of the short side, spread evenly along the long side (centred for 1)."""
    side = min(width, height)
    room = max(width, height) - side
    offsets = [room // 2] if views == 1 else [round(v * room / (views - 1)) for v in range(views)]
    if width >= height:
        return [Box(o, 0, side, side) for o in offsets]
    return [Box(0, o, side, side) for o in offsets]


def _temporal(num_frames: int, spec: ClipSpec, rng: random.Random | None, count: int) -> list[list[int]]:
    if spec.sampling == "uniform":
        return [uniform_indices(num_frames, spec.frames, rng, v, count) for v in range(count)]
    starts = dense_starts(num_frames, spec.frames, spec.stride, count, rng)
    return [dense_indices(num_frames, spec.frames, spec.stride, s, spec.short) for s in starts]


def plan_sample(num_frames: int, width: int, height: int, spec: ClipSpec,
                rng: random.Random) -> list[list[ClipPlan]]:
    """The clips to cut from one sample: ``clips_per_sample`` lists of one view each when training,
    one list of ``temporal_views x spatial_views`` views (temporal major) for evaluation."""
    if spec.train:
        plans = []
        for idx in _temporal(num_frames, spec, rng, spec.clips_per_sample):
            box = random_resized_crop(width, height, spec.scale, spec.ratio, rng)
            flip = spec.flip and rng.random() < 0.5
            plans.append([ClipPlan(tuple(idx), box, flip)])
        return plans
    boxes = square_crops(width, height, spec.spatial_views)
    times = _temporal(num_frames, spec, None, spec.temporal_views)
    return [[ClipPlan(tuple(idx), box, False) for idx in times for box in boxes]]
