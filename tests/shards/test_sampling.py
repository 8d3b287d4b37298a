"""Invariants of the pure clip sampling: indices in range and order, crop boxes inside the frame."""

from __future__ import annotations

import random

import pytest
from vidshard.shards.sampling import (
    ClipSpec,
    dense_indices,
    dense_starts,
    plan_sample,
    random_resized_crop,
    square_crops,
    uniform_indices,
)


def test_dense_clip_at_stride_in_order() -> None:
    rng = random.Random(0)
    for _ in range(200):
        n, t, s = rng.randint(1, 300), rng.randint(1, 32), rng.randint(1, 8)
        (start,) = dense_starts(n, t, s, 1, rng)
        idx = dense_indices(n, t, s, start)
        assert len(idx) == t and all(0 <= i < n for i in idx)
        assert all(b >= a for a, b in zip(idx, idx[1:], strict=False))  # time order
        if n >= (t - 1) * s + 1:
            assert all(b - a == s for a, b in zip(idx, idx[1:], strict=False))


def test_short_sample_repeats_last_frame_or_loops() -> None:
    assert dense_indices(5, 4, 2, 0, "repeat") == [0, 2, 4, 4]
    assert dense_indices(5, 4, 2, 0, "loop") == [0, 2, 4, 1]
    assert dense_indices(1, 3, 4, 0) == [0, 0, 0]


def test_eval_starts_centre_and_spread() -> None:
    assert dense_starts(100, 4, 2, 1, None) == [(100 - 7) // 2]
    assert dense_starts(100, 4, 2, 3, None) == [0, 46, 93]
    assert dense_starts(3, 4, 2, 2, None) == [0, 0]


def test_uniform_covers_the_sample_in_order() -> None:
    rng = random.Random(1)
    for n in (1, 3, 8, 100, 1000):
        for r in (rng, None):
            idx = uniform_indices(n, 8, r)
            assert len(idx) == 8 and all(0 <= i < n for i in idx) and idx == sorted(idx)
    idx = uniform_indices(800, 8, None)
    assert idx[0] < 100 and idx[-1] >= 700


def test_random_resized_crop_inside_frame() -> None:
    rng = random.Random(2)
    for _ in range(2000):
        w, h = rng.randint(1, 1920), rng.randint(1, 1080)
        scale = sorted((rng.uniform(0.01, 1), rng.uniform(0.01, 1)))
        box = random_resized_crop(w, h, tuple(scale), (3 / 4, 4 / 3), rng)
        assert box.inside(w, h), (w, h, box)


def test_random_resized_crop_respects_scale_and_ratio() -> None:
    rng = random.Random(3)
    for _ in range(500):
        box = random_resized_crop(640, 480, (0.3, 0.6), (0.8, 1.25), rng)
        assert 0.28 <= box.w * box.h / (640 * 480) <= 0.62
        assert 0.78 <= box.w / box.h <= 1.27


@pytest.mark.parametrize("w,h", [(320, 240), (240, 320), (100, 100), (2, 640)])
def test_square_crops_inside_frame(w: int, h: int) -> None:
    for views in (1, 2, 3, 5):
        boxes = square_crops(w, h, views)
        assert len(boxes) == views and all(b.inside(w, h) and b.w == b.h == min(w, h) for b in boxes)


def test_plan_sample_train_and_eval() -> None:
    spec = ClipSpec(frames=8, stride=2, clips_per_sample=3)
    plans = plan_sample(100, 320, 240, spec, random.Random(4))
    assert len(plans) == 3 and all(len(v) == 1 for v in plans)
    assert plans == plan_sample(100, 320, 240, spec, random.Random(4))  # same seed, same clips
    ev = ClipSpec(frames=8, stride=2, train=False, temporal_views=2, spatial_views=3, clips_per_sample=3)
    (views,) = plan_sample(100, 320, 240, ev, random.Random(4))
    assert len(views) == 6 and not any(v.flip for v in views)
    assert views[0].indices == views[2].indices != views[3].indices  # temporal major


def test_clip_spec_validates() -> None:
    with pytest.raises(ValueError, match="sampling"):
        ClipSpec(sampling="sparse")
    with pytest.raises(ValueError, match="scale"):
        ClipSpec(scale=(0.5, 0.2))
